"""Exact, deterministic ranking keys for streaming top-k (``workers/ml/mining.py``).

Each (score, image id) pair is packed into one int64 key (order-preserving float bits in the
high word, inverted id in the low word), so ``torch.topk`` over keys sorts by score and breaks
ties by the smaller image id, with no float ambiguity; ``splitmix64`` hashes ids for the
shard-independent sample sketch.
"""

from __future__ import annotations

import torch

MAX_IMAGE_ID = 2**32 - 1  # ids share an int64 key with the score's 32 bits
_LOW32 = 0xFFFFFFFF

# splitmix64 constants as signed int64 (torch has no uint64 arithmetic).
_GOLDEN = 0x9E3779B97F4A7C15 - 2**64
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def splitmix64(ids: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser of int64 ids, in int64 torch ops (same on every device/shard)."""

    def shr(z: torch.Tensor, s: int) -> torch.Tensor:
        # Logical shift right: arithmetic shift, then clear the sign-extended bits.
        return (z >> s) & ((1 << (64 - s)) - 1)

    z = ids.to(torch.int64) + _GOLDEN  # wraps mod 2**64 like uint64
    z = (z ^ shr(z, 30)) * _MIX1
    z = (z ^ shr(z, 27)) * _MIX2
    return z ^ shr(z, 31)


def _ordered_bits(scores: torch.Tensor) -> torch.Tensor:
    """Map float32 scores to int64 values in [-2**31, 2**31) with the same total order."""
    s = (scores.to(torch.float32) + 0.0).contiguous()  # + 0.0 folds -0.0 into 0.0
    bits = s.view(torch.int32).to(torch.int64)
    # Negative floats order backwards in their bit pattern: flip all but the sign bit.
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _scores_from_bits(ordered: torch.Tensor) -> torch.Tensor:
    bits = torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered).to(torch.int32)
    return bits.view(torch.float32)


def make_keys(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Int64 keys ordering by score (descending under topk), then by smaller image id."""
    # scores (..., N) float, ids broadcastable to it; ids in [0, 2**32).
    return (_ordered_bits(scores) << 32) | (_LOW32 - ids.to(torch.int64))


def decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`make_keys`: (float32 scores, int64 ids)."""
    return _scores_from_bits(keys >> 32), _LOW32 - (keys & _LOW32)
