"""Faceted feature visualization: a linear probe on a lower layer steers a unit's render."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from sklearn.linear_model import LogisticRegression
from torch import nn

from contracts.layout import Layout
from workers.ml.featvis.transforms import frozen
from workers.ml.hooks import run_to, to_unit_maps
from workers.ml.models import PreprocessConfig
from workers.ml.preprocess import to_batch


@dataclass
class FacetProbe:
    """Logistic-regression probe (facet vs generic) on a layer's spatially averaged units."""

    weights: torch.Tensor  # (C,)
    bias: float
    accuracy: float  # on the training images
    layer: str
    layout: Layout

    def save(self, path: str | Path) -> None:
        """Write the probe as a safetensors file (tensors plus string metadata)."""
        meta = {
            "bias": repr(self.bias),
            "accuracy": repr(self.accuracy),
            "layer": self.layer,
            "layout": json.dumps([self.layout.kind, self.layout.prefix_tokens]),
        }
        save_file({"weights": self.weights.detach().cpu().contiguous()}, str(path), meta)

    @classmethod
    def load(cls, path: str | Path) -> FacetProbe:
        """Read a probe written by :meth:`save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        kind, prefix = json.loads(meta["layout"])
        return cls(
            weights=load_file(str(path))["weights"],
            bias=float(meta["bias"]),
            accuracy=float(meta["accuracy"]),
            layer=meta["layer"],
            layout=Layout(kind, int(prefix)),
        )


@torch.no_grad()
def pooled_activations(
    model: nn.Module,
    layer: str,
    layout: Layout,
    images: Sequence[Image.Image],
    preprocess: PreprocessConfig,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Each image's unit maps of ``layer`` averaged over positions, (N, C)."""
    feats = []
    with frozen(model):
        for i in range(0, len(images), batch_size):
            # The model's own resize, crop and normalisation: the probe learns from the pixels
            # the model sees when mining, so its direction means the same there.
            x = to_batch(images[i : i + batch_size], preprocess).to(device)  # (B, 3, S, S)
            maps = to_unit_maps(run_to(model, x, [layer])[layer], layout)  # (B, C, h, w)
            feats.append(maps.mean(dim=(2, 3)).cpu())  # (B, C)
    return torch.cat(feats)  # (N, C)


def train_facet_probe(
    model: nn.Module,
    lower_layer_path: str,
    layout: Layout,
    facet_images: Sequence[Image.Image],
    generic_images: Sequence[Image.Image],
    preprocess: PreprocessConfig,
    *,
    c: float = 1.0,
    device: torch.device | str = "cpu",
) -> FacetProbe:
    """Fit facet (1) vs generic (0) on pooled activations of ``lower_layer_path``."""
    images = [*facet_images, *generic_images]
    x = pooled_activations(
        model, lower_layer_path, layout, images, preprocess, device=device
    ).numpy()  # (N, C)
    y = np.array([1] * len(facet_images) + [0] * len(generic_images))
    clf = LogisticRegression(C=c, max_iter=2000).fit(x, y)
    return FacetProbe(
        weights=torch.from_numpy(clf.coef_[0].astype(np.float32)),  # (C,)
        bias=float(clf.intercept_[0]),
        accuracy=float(clf.score(x, y)),
        layer=lower_layer_path,
        layout=layout,
    )
