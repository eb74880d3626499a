"""Branch specialization (METHODS §6): how a set of a layer's units falls across its branches,
and the chance of so many landing in one branch.

The set is a label word, a family, units chosen by index, or a weight property; the branches
are the layer's own (``layer.branches``, where the catalog lists them) or those the
weight-views job read from the network. For each branch the chance is the hypergeometric tail
P(X >= count): drawing the set's size from the layer's units without replacement, at least
that many land in a branch of that size (scipy). It is computed here, in the web process,
because a set chosen on the page exists only in the request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from backend.errors import InvalidInput

SET_KINDS = ("label", "family", "units", "property")
# Weight properties as sets: the quarter of the layer's units highest (or lowest) in one.
PROPERTY_SETS = {
    "colour": ("colour", True, "the quarter of units most colour-reading"),
    "black-and-white": ("colour", False, "the quarter of units least colour-reading"),
    "high-frequency": ("frequency", True, "the quarter of units of highest spatial frequency"),
    "low-frequency": ("frequency", False, "the quarter of units of lowest spatial frequency"),
}
MAX_UNITS_TEXT = 4000  # characters of a typed unit list


@dataclass(frozen=True)
class BranchCount:
    name: str
    start: int
    stop: int
    count: int  # units of the set in this branch
    expected: float  # count by chance: set size x branch share
    p_value: float  # P(X >= count) for a random set of the same size

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Specialization:
    total: int  # units in the layer
    chosen: int  # units in the set
    branches: list[BranchCount]
    outside: int  # units of the set in no branch

    @property
    def best(self) -> BranchCount | None:
        """The branch the set crowds most (smallest chance)."""
        return min(self.branches, key=lambda b: b.p_value, default=None)

    @property
    def any_branch(self) -> float | None:
        """A bound on the chance that *some* branch gets so many (Bonferroni over branches)."""
        best = self.best
        return None if best is None else min(1.0, best.p_value * len(self.branches))


def as_branches(raw: Iterable[Any]) -> list[tuple[str, int, int]]:
    """(name, start, stop) from branch dicts (JSON) or objects with those attributes."""
    out = []
    for b in raw:
        d = b if isinstance(b, dict) else {k: getattr(b, k) for k in ("name", "start", "stop")}
        out.append((str(d["name"]), int(d["start"]), int(d["stop"])))
    return out


def specialization(
    branches: Sequence[tuple[str, int, int]], units: Iterable[int], total: int
) -> Specialization:
    """How ``units`` (indices into a layer of ``total`` units) fall across ``branches``."""
    # scipy.stats takes seconds to import: only a branch question should pay for it.
    from scipy.stats import hypergeom

    chosen = sorted({u for u in units if 0 <= u < total})
    n = len(chosen)
    counts = []
    inside = 0
    for name, start, stop in branches:
        k = sum(1 for u in chosen if start <= u < stop)
        inside += k
        size = stop - start
        # sf(k - 1) = P(X >= k); X ~ Hypergeom(population, successes in it, draws).
        p = float(hypergeom.sf(k - 1, total, size, n)) if n else 1.0
        counts.append(BranchCount(name, start, stop, k, n * size / total if total else 0.0, p))
    return Specialization(total, n, counts, n - inside)


def parse_units(text: str, total: int) -> list[int]:
    """Unit indices from text like ``3, 7, 320-349``; InvalidInput on anything else."""
    if len(text) > MAX_UNITS_TEXT:
        raise InvalidInput("the unit list is too long")
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.replace(";", ",").split(","))):
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if m is None:
            raise InvalidInput(f"{part!r} is not a unit index or a range like 10-20")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi >= total:
            raise InvalidInput(f"{part!r} is outside the layer's units 0-{total - 1}")
        out.update(range(lo, hi + 1))
    return sorted(out)


def label_matches(label: str | None, word: str) -> bool:
    """A label containing ``word`` as a whole word, ignoring case."""
    return bool(label) and re.search(rf"\b{re.escape(word)}\b", label or "", re.I) is not None


def property_set(values: Sequence[float | None], name: str) -> list[int]:
    """The units of a property set (a quarter of those with a value), by index."""
    if name not in PROPERTY_SETS:
        raise InvalidInput(f"unknown property {name!r}; one of {', '.join(PROPERTY_SETS)}")
    _, high, _ = PROPERTY_SETS[name]
    known = [(v, i) for i, v in enumerate(values) if v is not None]
    known.sort(key=lambda t: (-t[0] if high else t[0], t[1]))
    return sorted(i for _, i in known[: max(1, len(known) // 4)])
