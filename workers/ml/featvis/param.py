"""Image parameterization: a decorrelated Fourier spectrum per batch element (Lucid's default)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Lucid's fixed colour decorrelation (square root of the ImageNet colour covariance).
COLOR_CORRELATION_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float32
)
# Lucid divides by the largest column norm so no colour direction is amplified.
COLOR_CORRELATION_NORMALIZED = (
    COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()
)
# Lucid's inverse-FFT "magic" divisor: a smaller image scale keeps the sigmoid unsaturated.
FFT_MAGIC = 4.0


def rfft2d_freqs(h: int, w: int) -> torch.Tensor:
    """Frequency magnitude of each rFFT bin of an h x w image, shape (h, w // 2 + 1)."""
    fy = torch.fft.fftfreq(h)[:, None]  # (h, 1)
    fx = torch.fft.rfftfreq(w)[None, :]  # (1, w//2+1)
    return torch.sqrt(fx * fx + fy * fy)  # (h, w//2+1)


class FourierImage(nn.Module):
    """A batch of RGB images in [0, 1], each parameterized by its own scaled Fourier spectrum.

    Element i is initialised from its own generator seeded with ``seeds[i]``, so the same seed
    gives the same starting image whatever batch the element sits in.
    """

    scale: torch.Tensor  # (1, 1, S, S//2+1, 1) buffer
    color: torch.Tensor  # (3, 3) buffer

    def __init__(
        self,
        seeds: Sequence[int],
        size: int,
        *,
        sd: float = 0.01,
        decay: float = 1.0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.size = size
        freqs = rfft2d_freqs(size, size)  # (S, S//2+1)
        # Scale high frequencies down (1/f) so the optimiser starts on natural-image statistics.
        scale = 1.0 / torch.clamp(freqs, min=1.0 / size) ** decay  # (S, S//2+1)
        self.register_buffer("scale", scale[None, None, :, :, None].to(device))  # (1,1,S,F,1)
        init = [
            torch.randn(3, *freqs.shape, 2, generator=torch.Generator().manual_seed(s)) * sd
            for s in seeds
        ]  # each (3, S, S//2+1, 2): real and imaginary parts
        self.spectrum = nn.Parameter(torch.stack(init).to(device))  # (N, 3, S, S//2+1, 2)
        self.register_buffer("color", COLOR_CORRELATION_NORMALIZED.T.contiguous().to(device))

    def forward(self) -> torch.Tensor:
        """The current images, (N, 3, S, S) in [0, 1]."""
        spectrum = torch.view_as_complex(self.scale * self.spectrum)  # (N, 3, S, S//2+1)
        image = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho") / FFT_MAGIC
        # Decorrelated colour space -> RGB: a 3x3 matrix on the channel axis.
        image = torch.einsum("nchw,cd->ndhw", image, self.color)  # (N, 3, S, S)
        return torch.sigmoid(image)
