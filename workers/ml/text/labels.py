"""Automatic unit labels that abstain: a label is shown only where its fidelity clears a bar.

``choose_labels`` (the product's): candidates are the low-level descriptor words and the concept
words of the model's text head; each unit's are ranked by their fidelity on the selection half
of the images (``fidelity.unit_fidelity``) and a label is kept only where its fidelity on the
held-out half clears the measured threshold (``fidelity.null_threshold``). A concept (a class
name) is a candidate only where it predicts the unit beyond its best low-level descriptor: the
evidence must support an object, not a colour the object happens to have. Up to three labels
for a polysemantic unit, each clearing the bar on what the earlier ones leave unexplained.

``auto_labels`` is the earlier method, kept as the label-fidelity benchmark's baseline: the
unit's top text strings scored by agreement with its top examples' classes; it always answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from workers.ml.text import descriptors
from workers.ml.text.evidence import Evidence
from workers.ml.text.fidelity import (
    Ranked,
    heldout_mask,
    null_scores,
    null_threshold,
    partial_ranks,
    spearman,
)

Encoder = Callable[[Sequence[str]], torch.Tensor]  # texts -> (T, D) normalised


def auto_labels(
    text_tops: Sequence[Sequence[tuple[str, float]]],
    example_labels: Sequence[Sequence[str]],
    encode: Encoder,
) -> list[tuple[str, float]]:
    """Per unit (label, confidence in [0, 1]).

    agreement(c) = mean over the unit's top examples of max(0, cos(c, the example's class));
    text(c) = c's text score relative to the unit's best string (clipped at 0);
    label = argmax agreement x text over the top strings and the examples' most common class.
    """
    vocab: list[str] = []
    for tops, ex in zip(text_tops, example_labels, strict=True):
        vocab += [s for s, _ in tops] + list(ex)
    vocab = list(dict.fromkeys(vocab))
    if not vocab:
        return [("", 0.0) for _ in text_tops]
    emb = F.normalize(encode(vocab).float(), dim=-1)  # (V, D)
    at = {s: i for i, s in enumerate(vocab)}
    out: list[tuple[str, float]] = []
    for tops, ex in zip(text_tops, example_labels, strict=True):
        if not tops or not ex:
            out.append((tops[0][0] if tops else "", 0.0))
            continue
        text_score = {s: v for s, v in tops}
        best = max(text_score.values())
        modal = max(dict.fromkeys(ex), key=list(ex).count)  # first most common, deterministic
        cands = list(dict.fromkeys([s for s, _ in tops] + [modal]))
        c_emb = emb[[at[c] for c in cands]]  # (K, D)
        e_emb = emb[[at[e] for e in ex]]  # (E, D)
        agreement = (c_emb @ e_emb.T).clamp(min=0).mean(1)  # (K,)
        # A class that is not among the top strings gets the text score of its nearest one.
        t_emb = emb[[at[s] for s, _ in tops]]  # (T, D)
        nearest = (c_emb @ t_emb.T).argmax(1).tolist()  # (K,)
        t_vals = torch.tensor(
            [text_score.get(c, tops[j][1]) for c, j in zip(cands, nearest, strict=True)]
        )  # (K,)
        text = (t_vals / best).clamp(0, 1) if best > 0 else torch.zeros(len(cands))  # (K,)
        score = agreement * text  # (K,)
        j = int(score.argmax())  # first best: ties go to the better text rank
        out.append((cands[j], float(score[j].clamp(0, 1))))
    return out


MAX_LABELS = 3  # a polysemantic unit's labels, at most
GUESSES = 5  # best candidates kept for the unit page, labelled or not
TOP_CANDIDATES = 12  # candidates examined per unit, by selection-half fidelity
DISTINCT = 0.5  # two labels whose matches correlate this much over the images say one thing


@dataclass(frozen=True)
class Scored:
    """A candidate label with its fidelity: Spearman on the held-out half (``score``) and on
    the selection half it was ranked by (``selection``)."""

    text: str
    kind: str  # a descriptor's kind (colour, tone, orientation, frequency, texture) or concept
    score: float
    selection: float


@dataclass
class UnitLabels:
    """What a unit is labelled (empty: it abstains) and its best guesses, all scored."""

    labels: list[Scored]
    guesses: list[Scored]


MIN_HELDOUT = 5  # images in each half, at least, for any unit to be labelled
MIN_BAR = 0.1  # the least held-out Spearman correlation a shown label may have


@dataclass
class LabelRun:
    """Labels of every layer of one pass, the bar they cleared and how it was measured."""

    threshold: float
    null_units: int  # shuffled units the bar was measured on
    heldout: np.ndarray  # (N,) bool
    units: dict[str, list[UnitLabels]]  # layer path -> per unit


def label_layers(
    ev: Evidence, match: np.ndarray | None, concepts: Sequence[str], seed: int = 0
) -> LabelRun:
    """Labels for every layer of ``ev`` with one bar: the null quantile over all its layers'
    shuffled units (``fidelity.null_scores``)."""
    held = heldout_mask(ev.ids)
    desc = ev.desc or {}
    null = np.concatenate(
        [null_scores(a, desc.get(p), match, held, seed) for p, a in ev.acts.items()]
    )
    # A correlation over a handful of images is no evidence (over one it is 0, and a bar of 0
    # would pass every label): too few held-out images and every unit abstains; the bar is
    # never below MIN_BAR however the null falls.
    thr = max(null_threshold(null), MIN_BAR)
    enough = int(held.sum()) >= MIN_HELDOUT and int((~held).sum()) >= MIN_HELDOUT
    units = {
        p: choose_labels(a, desc.get(p), match, concepts, held, thr) for p, a in ev.acts.items()
    }
    if not enough:  # best guesses kept, nothing shown as a label
        units = {p: [UnitLabels([], u.guesses) for u in us] for p, us in units.items()}
    return LabelRun(thr, len(null), held, units)


def choose_labels(
    acts: np.ndarray,
    desc: np.ndarray | None,
    match: np.ndarray | None,
    concepts: Sequence[str],
    heldout: np.ndarray,
    threshold: float,
) -> list[UnitLabels]:
    """Labels for the U units of one layer.

    acts (N, U) each unit's max per image; desc (N, U, D) descriptors on its receptive field
    (``descriptors.WORDS``), or None; match (N, T) the head's match of each of ``concepts``,
    or None; heldout (N,) bool, the half labels are scored on.
    """
    words = list(descriptors.WORDS) if desc is not None else []
    texts = words + (list(concepts) if match is not None else [])
    n_desc = len(words)
    sel = Ranked.of(acts[~heldout], _at(desc, ~heldout), _at(match, ~heldout))
    out = Ranked.of(acts[heldout], _at(desc, heldout), _at(match, heldout))
    f_sel, f_out = sel.fidelity(), out.fidelity()  # (U, K) each

    def scored(u: int, c: int) -> Scored:
        kind = descriptors.KINDS[texts[c]] if c < n_desc else "concept"
        return Scored(texts[c], kind, round(float(f_out[u, c]), 4), round(float(f_sel[u, c]), 4))

    pixel_words = list(range(n_desc))
    result = []
    for u in range(acts.shape[1]):
        order = [int(c) for c in np.argsort(-f_sel[u], kind="stable")[:TOP_CANDIDATES]]
        best_desc = int(np.argmax(f_sel[u, :n_desc])) if n_desc else None
        if best_desc is not None and best_desc not in order:
            order.append(best_desc)  # the yardstick concepts are held to is always a guess
        kept = []
        for c in order:
            if c >= n_desc and n_desc:
                # A class name must predict the unit beyond every descriptor of its pixels
                # together (not only the best one): a stripes unit is not a "grand piano"
                # because pianos have stripes its stripe measure misses.
                if _partial(sel, u, c, pixel_words) < threshold:
                    continue  # no evidence of an object beyond what its pixels show
            kept.append(c)
        chosen: list[int] = []
        if kept and f_out[u, kept[0]] >= threshold:  # else the unit abstains
            chosen.append(kept[0])
        while chosen and len(chosen) < MAX_LABELS:
            nxt = _next_label(sel, u, kept, chosen, threshold)
            if (
                nxt is None
                or f_out[u, nxt] < threshold
                or _partial(out, u, nxt, chosen) < threshold
            ):
                break  # a failure on held-out images ends the search: it picks nothing there
            chosen.append(nxt)
        result.append(
            UnitLabels([scored(u, c) for c in chosen], [scored(u, c) for c in kept[:GUESSES]])
        )
    return result


def _partial(half: Ranked, u: int, c: int, given: list[int]) -> float:
    """On one half: what candidate c says about unit u beyond the ``given`` candidates."""
    g = np.column_stack([half.candidate(u, e) for e in given])  # (n, k)
    return partial_ranks(half.acts[:, u], half.candidate(u, c), g)


def _next_label(
    sel: Ranked, u: int, kept: list[int], chosen: list[int], threshold: float
) -> int | None:
    """Forward selection on the selection half: the candidate, distinct from the labels so
    far (their matches correlate less than ``DISTINCT``), that best predicts what they leave
    unexplained (partial Spearman given their matches), if that clears the bar."""
    best, best_p = None, threshold
    for c in kept:
        if c in chosen:
            continue
        v = sel.candidate(u, c)
        if any(abs(float(v @ sel.candidate(u, e))) >= DISTINCT for e in chosen):
            continue  # says what an earlier label says
        p = _partial(sel, u, c, chosen)
        if p >= best_p:
            best, best_p = c, p
    return best


def heldout_fidelity(acts: np.ndarray, values: np.ndarray, heldout: np.ndarray) -> float:
    """One label's fidelity for one unit: Spearman of (N,) matches with (N,) activations on
    the held-out half (an admin's label, scored the same way)."""
    return round(float(spearman(acts[heldout, None], values[heldout, None])[0, 0]), 4)


def _at(x: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if x is None else x[rows]
