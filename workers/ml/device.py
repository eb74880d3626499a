"""Pick the compute device from the DEVICE setting."""

from __future__ import annotations

import torch


def resolve_device(setting: str = "auto") -> torch.device:
    """'auto' means CUDA when present, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)
