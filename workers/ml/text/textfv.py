"""Text feature visualization: the strings whose embedding a unit's text vector points at."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from workers.ml.models import LoadedModel

DICT_WORDS = Path("/usr/share/dict/words")  # Debian wamerican
TEMPLATES = ("a photo of a {}", "a drawing of a {}", "a close-up photo of the {}")
LM_PENALTY = 0.0025  # the CLIP article's language-model penalty weight
_WORD = re.compile(r"^[a-z]{3,12}$")


def dictionary_words(limit: int = 15000, path: Path = DICT_WORDS) -> list[str]:
    """Lowercase alphabetic dictionary words (no names, no possessives), shortest first."""
    if not path.is_file():
        return []
    words = {w for w in path.read_text(encoding="utf-8", errors="ignore").split() if _WORD.match(w)}
    # Without frequencies, short words are the common-looking ones.
    return sorted(words, key=lambda w: (len(w), w))[:limit]


def build_vocabulary(
    class_names: Sequence[str] = (),
    words: Sequence[str] = (),
    templates: Sequence[str] = TEMPLATES,
) -> list[str]:
    """Class names, the class names in prompt templates, then words; duplicates dropped."""
    out = list(class_names)
    out += [t.format(c) for t in templates for c in class_names]
    out += list(words)
    return list(dict.fromkeys(out))


def top_strings(
    text_vectors: torch.Tensor, vocab_emb: torch.Tensor, vocab: Sequence[str], k: int = 16
) -> list[list[tuple[str, float]]]:
    """Per unit (U, D) its k best vocabulary strings by cosine (V, D), best first."""
    u = F.normalize(text_vectors.float(), dim=-1)  # (U, D)
    v = F.normalize(vocab_emb.float(), dim=-1)  # (V, D)
    scores = u @ v.T  # (U, V)
    vals, idx = scores.topk(min(k, len(vocab)), dim=-1)  # (U, k)
    return [
        [(vocab[j], float(s)) for j, s in zip(row_i.tolist(), row_s.tolist(), strict=True)]
        for row_i, row_s in zip(idx, vals, strict=True)
    ]


@dataclass
class ClimbResult:
    """A token sequence found by hill climbing, its text and score (cosine minus penalty)."""

    tokens: list[int]
    text: str
    score: float


def hill_climb(
    loaded: LoadedModel,
    direction: torch.Tensor,
    candidates: Sequence[int],
    n_tokens: int = 3,
    sweeps: int = 2,
    lm_penalty: float = LM_PENALTY,
) -> ClimbResult:
    """Greedy coordinate ascent over token ids maximising cos(encode_text(tokens), direction).

    No language model ships offline, so the penalty uses a unigram proxy: BPE ids are
    assigned in merge order, roughly by frequency, so -log p(token) ~ log(1 + rank).
    """
    model = loaded.full_model
    if not hasattr(model, "encode_text"):
        raise ValueError(f"{loaded.spec} has no text tower to climb")
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    sot, eot = tok.encoder["<start_of_text>"], tok.encoder["<end_of_text>"]
    context = int(getattr(model, "context_length", 77))
    device = next(model.parameters()).device
    cands = torch.tensor(list(candidates), dtype=torch.int64)  # (K,)
    d = F.normalize(direction.float().to(device), dim=-1)  # (D,)

    def rows(seqs: torch.Tensor) -> torch.Tensor:
        # (B, n) token ids -> (B, context) with start/end markers and zero padding.
        b = seqs.shape[0]
        out = torch.zeros(b, context, dtype=torch.int64)
        out[:, 0] = sot
        out[:, 1 : n_tokens + 1] = seqs
        out[:, n_tokens + 1] = eot
        return out.to(device)

    seq = cands[:n_tokens].clone() if len(cands) >= n_tokens else cands.repeat(n_tokens)
    seq = seq[:n_tokens]
    best = -float("inf")
    with torch.inference_mode():
        for _ in range(sweeps):
            for pos in range(n_tokens):
                trial = seq.repeat(len(cands), 1)  # (K, n)
                trial[:, pos] = cands
                emb = F.normalize(model.encode_text(rows(trial)).float(), dim=-1)  # (K, D)
                penalty = lm_penalty * torch.log1p(trial.float()).sum(1).to(device)  # (K,)
                score = emb @ d - penalty  # (K,)
                j = int(score.argmax())
                if float(score[j]) > best:
                    best = float(score[j])
                    seq = trial[j].cpu().clone()
    text = tok.decode(seq.tolist()).strip()
    return ClimbResult(tokens=seq.tolist(), text=text, score=best)


def word_token_ids(words: Sequence[str], limit: int = 256) -> list[int]:
    """CLIP BPE ids of words that are one token each (candidates for :func:`hill_climb`)."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    ids: list[int] = []
    for w in words:
        enc = tok.encode(w)
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(enc[0])
        if len(ids) >= limit:
            break
    return ids
