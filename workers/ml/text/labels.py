"""Automatic unit labels with a confidence: where the text view and the dataset view agree.

CLIP-Dissect in spirit: a unit's candidate labels are its top text strings; each is scored by how
well it describes the classes of the unit's top dataset examples (the classifier's predictions
or CLIP's zero-shot classes) and by how strongly the unit's text vector points at it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

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
