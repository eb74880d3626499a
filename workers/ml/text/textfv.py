"""Text feature visualization: the strings whose embedding a unit's text vector points at."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from contracts.artifacts import ClimbedStrings, ClimbStart, RankedString
from workers.ml.models import LoadedModel
from workers.ml.text.heads import encode_tokens

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
    """A token sequence found by hill climbing, its text and score (cosine minus penalty).

    ``start`` is the sequence the climb began from and ``start_score`` its score: the climb only
    ever moves up, so ``score >= start_score``. ``top`` holds the best distinct strings among
    every sequence the climb evaluated, best first (the final one included).
    """

    tokens: list[int]
    text: str
    score: float
    start: list[int]
    start_text: str
    start_score: float
    top: list[tuple[str, float]]

    def artifact(self) -> ClimbedStrings:
        """The climb as its unit's ``text_fv`` artifact (variant ``hill_climb``)."""
        return ClimbedStrings(
            top=[RankedString(text=t, score=s) for t, s in self.top],
            tokens=self.tokens,
            start=ClimbStart(text=self.start_text, tokens=self.start, score=self.start_score),
            lm_penalty=LM_PENALTY,
        )


def hill_climb(
    loaded: LoadedModel,
    direction: torch.Tensor,
    candidates: Sequence[int],
    n_tokens: int = 3,
    sweeps: int = 2,
    lm_penalty: float = LM_PENALTY,
    keep: int = 16,
) -> ClimbResult:
    """Greedy coordinate ascent over token ids maximising cos(encode_text(tokens), direction).

    Starts from the first ``n_tokens`` candidates (pass them best first); each step tries every
    candidate at one position and keeps the best only if it beats the current score, so the
    result is deterministic (ties go to the earlier candidate) and never worse than the start.
    No language model ships offline, so the penalty uses a unigram proxy: BPE ids are
    assigned in merge order, roughly by frequency, so -log p(token) ~ log(1 + rank).
    """
    model = loaded.full_model
    if not hasattr(model, "encode_text"):
        raise ValueError(f"{loaded.spec} has no text tower to climb")
    if not candidates:
        raise ValueError("hill climbing needs at least one candidate token")
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

    def scores(seqs: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(encode_tokens(model, rows(seqs)).float(), dim=-1)  # (B, D)
        penalty = lm_penalty * torch.log1p(seqs.float()).sum(1).to(device)  # (B,)
        return (emb @ d - penalty).cpu()  # (B,)

    start = cands.repeat(n_tokens)[:n_tokens].clone()  # (n,)
    seen: dict[tuple[int, ...], float] = {}
    with torch.inference_mode():
        start_score = float(scores(start[None])[0])
        seq, best = start.clone(), start_score
        seen[tuple(seq.tolist())] = best
        for _ in range(sweeps):
            for pos in range(n_tokens):
                trial = seq.repeat(len(cands), 1)  # (K, n)
                trial[:, pos] = cands
                score = scores(trial)  # (K,)
                for row, s in zip(trial.tolist(), score.tolist(), strict=True):
                    seen[tuple(row)] = s
                j = int(score.argmax())
                if float(score[j]) > best:
                    best = float(score[j])
                    seq = trial[j].clone()
    top: list[tuple[str, float]] = []
    for toks, s in sorted(seen.items(), key=lambda kv: -kv[1]):
        text = tok.decode(list(toks)).strip()
        if text not in {t for t, _ in top}:
            top.append((text, s))
        if len(top) >= keep:
            break
    return ClimbResult(
        tokens=seq.tolist(),
        text=tok.decode(seq.tolist()).strip(),
        score=best,
        start=start.tolist(),
        start_text=tok.decode(start.tolist()).strip(),
        start_score=start_score,
        top=top,
    )


def one_token_words(words: Sequence[str]) -> tuple[list[int], list[int]]:
    """(positions in ``words``, CLIP BPE ids) of the words that are one token each, the first
    word of each id only."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    rows: list[int] = []
    ids: list[int] = []
    seen: set[int] = set()
    for i, w in enumerate(words):
        enc = tok.encode(w)
        if len(enc) == 1 and enc[0] not in seen:
            seen.add(enc[0])
            rows.append(i)
            ids.append(enc[0])
    return rows, ids


def climb_candidates(
    direction: torch.Tensor, word_emb: torch.Tensor, word_ids: Sequence[int], k: int
) -> list[int]:
    """The ``k`` one-token words (ids) whose own embeddings (W, D) are closest to the direction
    (D,), best first: the climb searches among them instead of all 49k tokens."""
    cos = F.normalize(word_emb.float(), dim=-1) @ F.normalize(direction.float(), dim=-1)  # (W,)
    idx = torch.argsort(cos, descending=True, stable=True)[:k].tolist()
    return [word_ids[i] for i in idx]
