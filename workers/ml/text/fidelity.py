"""Fidelity of a label: does how well it matches an image predict how much the unit fires?

Explanation scoring (OpenAI's for language-model neurons, Neuronpedia's scores) done for
images: each image of a held-out half of the dataset is scored by how well the label matches
it, and the score is the Spearman correlation of those matches with the unit's activation.
Candidates are chosen on the other half, so a label's score is never the one it was picked by.
The bar a label must clear is measured too: the score that labels chosen the same way reach on
units whose activations were shuffled across images (``null_threshold``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

NULL_QUANTILE = 0.99  # a shown label beats 99% of labels chosen for shuffled units
NULL_SAMPLES = 500  # shuffles at least this many units in all (repeating a small layer's)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def heldout_mask(ids: np.ndarray) -> np.ndarray:
    """(N,) bool: True for images of the held-out half, by a hash of the image id (the same
    split for every unit, every run and any order of the images)."""
    h = np.asarray(ids, dtype=np.uint64) * _GOLDEN  # wraps mod 2**64
    return ((h >> np.uint64(63)) & np.uint64(1)).astype(bool)


def standard_ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks along axis 0, centred, each column of unit norm (a constant one is 0), so
    the Spearman correlation of two columns is their dot product."""
    r = rankdata(np.asarray(x, dtype=np.float64), axis=0)
    r -= r.mean(axis=0, keepdims=True)
    norm = np.sqrt((r * r).sum(axis=0, keepdims=True))
    return np.divide(r, norm, out=np.zeros_like(r), where=norm > 0)


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation of every column of x (N, A) with every column of y (N, B): (A, B)."""
    return standard_ranks(x).T @ standard_ranks(y)


@dataclass
class Ranked:
    """Standard ranks (``standard_ranks``) of one set of rows: each unit's activations, its
    descriptors and the concept matches. A candidate c of unit u is descriptor c (c < D),
    else concept c - D."""

    acts: np.ndarray  # (N, U)
    desc: np.ndarray | None  # (N, U, D)
    match: np.ndarray | None  # (N, T)

    @classmethod
    def of(cls, acts: np.ndarray, desc: np.ndarray | None, match: np.ndarray | None) -> Ranked:
        """Rank the rows given (one half of the images, say)."""
        return cls(
            standard_ranks(acts),
            None if desc is None else standard_ranks(desc),
            None if match is None else standard_ranks(match),
        )

    @property
    def n_desc(self) -> int:
        return 0 if self.desc is None else int(self.desc.shape[2])

    def candidate(self, u: int, c: int) -> np.ndarray:
        """(N,) the ranks of candidate c's match for unit u."""
        if c < self.n_desc:
            assert self.desc is not None
            return self.desc[:, u, c]
        assert self.match is not None
        return self.match[:, c - self.n_desc]

    def fidelity(self) -> np.ndarray:
        """(U, D + T): Spearman of each unit's activations with each candidate's match."""
        parts = []
        if self.desc is not None:
            parts.append(np.einsum("nu,nud->ud", self.acts, self.desc))  # (U, D)
        if self.match is not None and self.match.shape[1]:
            parts.append(self.acts.T @ self.match)  # (U, T)
        return np.concatenate(parts, axis=1) if parts else np.zeros((self.acts.shape[1], 0))


def unit_fidelity(
    acts: np.ndarray, desc: np.ndarray | None, match: np.ndarray | None
) -> np.ndarray:
    """Spearman of each unit's activations with each candidate's match, over the rows given.

    acts (N, U); desc (N, U, D) each unit's own descriptor values (its receptive field);
    match (N, T) concept matches, the same for every unit. -> (U, D + T), descriptors first.
    """
    return Ranked.of(acts, desc, match).fidelity()


def partial_ranks(y: np.ndarray, x: np.ndarray, given: np.ndarray) -> float:
    """Partial correlation of standard-rank columns y and x (N,) given others (N, k): the
    correlation of what is left of y and x once the given columns are regressed out."""
    if given.shape[1] == 1:
        g = given[:, 0]
        ryx, ryg, rxg = float(y @ x), float(y @ g), float(x @ g)
        den = (1.0 - ryg * ryg) * (1.0 - rxg * rxg)
        return (ryx - ryg * rxg) / float(np.sqrt(den)) if den > 1e-12 else 0.0
    coef, *_ = np.linalg.lstsq(given, np.column_stack([y, x]), rcond=None)  # ranks are centred
    res = np.column_stack([y, x]) - given @ coef  # (N, 2)
    norms = np.sqrt((res * res).sum(axis=0))
    if norms.min() <= 1e-12:
        return 0.0
    return float(res[:, 0] @ res[:, 1] / (norms[0] * norms[1]))


def partial_spearman(y: np.ndarray, x: np.ndarray, given: np.ndarray) -> float:
    """Spearman correlation of y and x (N,) once the ranks of ``given`` (N, k) are regressed
    out of both: what x says about y that the given columns do not."""
    ranks = standard_ranks(np.column_stack([y, x, given]))  # (N, 2 + k)
    return partial_ranks(ranks[:, 0], ranks[:, 1], ranks[:, 2:])


def shuffled(acts: np.ndarray, heldout: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, U) activations with each unit's rows permuted within each half: units that keep
    their distribution but respond to nothing in the images."""
    rng = np.random.default_rng(seed)
    out = np.array(acts, copy=True)
    for half in (heldout, ~heldout):
        rows = np.flatnonzero(half)
        for u in range(out.shape[1]):
            out[rows, u] = out[rng.permutation(rows), u]
    return out


def null_scores(
    acts: np.ndarray,
    desc: np.ndarray | None,
    match: np.ndarray | None,
    heldout: np.ndarray,
    seed: int = 0,
    samples: int = NULL_SAMPLES,
) -> np.ndarray:
    """Held-out fidelity of the best candidate chosen on the selection half, for units with
    their activations shuffled: what a label scores when there is nothing to find. Each unit
    is shuffled ceil(samples / U) times (R), giving (R * U,) scores."""
    sel, out = ~heldout, heldout
    repeats = -(-samples // max(acts.shape[1], 1))
    fake = np.concatenate([shuffled(acts, heldout, seed + r) for r in range(repeats)], axis=1)
    tiled = None if desc is None else np.tile(desc, (1, repeats, 1))  # (N, R * U, D)
    f_sel = unit_fidelity(fake[sel], _rows(tiled, sel), _rows(match, sel))  # (R * U, K)
    f_out = unit_fidelity(fake[out], _rows(tiled, out), _rows(match, out))
    best = f_sel.argmax(axis=1)  # (R * U,)
    return f_out[np.arange(len(best)), best]


def null_threshold(scores: np.ndarray, quantile: float = NULL_QUANTILE) -> float:
    """The bar: the ``quantile`` of null scores (``null_scores`` of every layer together)."""
    return float(np.quantile(scores, quantile)) if len(scores) else 1.0


def _rows(x: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if x is None else x[rows]
