"""Per-unit properties read from first-layer weights (METHODS §6: colour vs black-and-white,
spatial frequency), and carried to deeper units along the linearised path.

A first-layer kernel W[c, y, x] reads the image's R, G, B. Its *colour* is the share of its
energy off the grey axis (what is left after subtracting the mean over R, G, B at each
position): 0 for a black-and-white detector, near 1 for a colour-opponent one. Its
*frequency* is the power-weighted mean radial frequency of its 2-D spectrum (numpy's FFT, on
a zero-padded grid), in cycles per pixel: low for blobs, high for fine edges and gratings.
A deeper unit gets the mean of the first layer's values weighted by the absolute expanded
weights through which it reads each first-layer unit (:mod:`workers.ml.circuits`).
"""

from __future__ import annotations

import numpy as np

FFT_SIDE = 32  # the spectrum's grid: kernels are zero-padded to this side


def colour_share(weight: np.ndarray) -> np.ndarray:
    """(N, 3, kh, kw) first-layer kernels -> (N,) share of energy off the grey axis."""
    w = weight.astype(np.float64)
    grey = w.mean(axis=1, keepdims=True)  # (N, 1, kh, kw)
    total = (w**2).sum(axis=(1, 2, 3))
    return np.where(total > 0, ((w - grey) ** 2).sum(axis=(1, 2, 3)) / np.maximum(total, 1e-30), 0)


def spatial_frequency(weight: np.ndarray) -> np.ndarray:
    """(N, C, kh, kw) kernels -> (N,) power-weighted mean radial frequency (cycles/pixel)."""
    side = max(FFT_SIDE, *weight.shape[2:])
    power = np.abs(np.fft.fft2(weight.astype(np.float64), s=(side, side))) ** 2  # (N, C, s, s)
    power = power.sum(axis=1)  # (N, s, s)
    f = np.fft.fftfreq(side)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)  # (s, s)
    total = power.sum(axis=(1, 2))
    return np.where(total > 0, (power * radius).sum(axis=(1, 2)) / np.maximum(total, 1e-30), 0)


def carried(values: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """First-layer ``values`` (C_first,) carried to the units of a deeper layer through
    ``matrix`` (C_deep, C_first) of expanded weights: a mean weighted by their magnitudes."""
    a = np.abs(matrix.astype(np.float64))
    total = a.sum(axis=1)
    return np.where(total > 0, a @ values / np.maximum(total, 1e-30), np.nan)
