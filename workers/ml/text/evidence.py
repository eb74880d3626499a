"""What labels are scored against: every unit's response to every image, what each unit's
receptive field shows there, and what the model's text head says about each image.

One forward pass over the images gives, per layer, each unit's max over positions (the score
dataset examples are ranked by) and where it is; the low-level descriptors are measured on the
receptive-field box of that position in the image the model saw.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from contracts.layout import Layout
from workers.ml.hooks import capture, run_to, to_unit_maps
from workers.ml.models import LoadedModel
from workers.ml.native import imagenet_class_names
from workers.ml.receptive_field import receptive_field
from workers.ml.text import descriptors
from workers.ml.text.heads import TextHead


@dataclass
class Evidence:
    """Per image (rows in ``ids`` order): unit responses, descriptors, the head's output."""

    ids: np.ndarray  # (N,) image ids
    acts: dict[str, np.ndarray]  # layer path -> (N, U) each unit's max over positions
    # layer path -> (N, U, D) descriptors (``descriptors.WORDS``) on each unit's receptive
    # field at its argmax; None when not measured.
    desc: dict[str, np.ndarray] | None
    outputs: np.ndarray | None  # (N, S) ``head.describe`` of the model's output


def _unnormalise(x: torch.Tensor, loaded: LoadedModel) -> np.ndarray:
    """(B, 3, S, S) model input -> (B, S, S, 3) RGB in [0, 1], the image the model saw."""
    cfg = loaded.preprocess
    mean = torch.tensor(cfg.mean)[None, :, None, None]  # (1, 3, 1, 1)
    std = torch.tensor(cfg.std)[None, :, None, None]
    rgb = (x.float().cpu() * std + mean).clamp(0, 1)  # (B, 3, S, S)
    return rgb.permute(0, 2, 3, 1).numpy()


def collect_evidence(
    loaded: LoadedModel,
    layouts: Mapping[str, Layout],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    head: TextHead | None = None,
    *,
    measure: bool = True,
) -> Evidence:
    """One pass over ``batches`` of (images (B, 3, S, S), ids (B,)): unit maxima for every
    layer in ``layouts``, descriptors at their receptive fields (``measure``) and, with a
    ``head``, what it says about each image (the whole model runs; else it stops early)."""
    model = loaded.image_model
    param = next(model.parameters())
    size = loaded.preprocess.input_size
    paths = list(layouts)
    rfs = {p: receptive_field(model, p, layouts[p], size) for p in paths} if measure else {}
    ids: list[torch.Tensor] = []
    acts: dict[str, list[np.ndarray]] = {p: [] for p in paths}
    desc: dict[str, list[np.ndarray]] = {p: [] for p in paths}
    outs: list[torch.Tensor] = []
    for images, batch_ids in batches:
        x = images.to(param.device, param.dtype)  # (B, 3, S, S)
        with torch.inference_mode():
            if head is not None:
                with capture(model, paths) as store:
                    out = model(x)  # (B, S_out)
                raw = dict(store)
                outs.append(head.describe(out).float().cpu())
            else:
                raw = run_to(model, x, paths)
        ids.append(batch_ids.to(torch.int64))
        boxes: dict[str, np.ndarray] = {}
        for p in paths:
            maps = to_unit_maps(raw[p], layouts[p]).float()  # (B, U, H, W)
            b, u, h, w = maps.shape
            mx, arg = maps.reshape(b, u, h * w).max(dim=2)  # (B, U)
            acts[p].append(mx.cpu().numpy())
            if measure:
                rf = rfs[p]
                ys, xs = (arg // w).cpu().numpy(), (arg % w).cpu().numpy()  # (B, U)
                top, left = rf.offset_y + ys * rf.stride_y, rf.offset_x + xs * rf.stride_x
                boxes[p] = np.stack([top, left, top + rf.size_y, left + rf.size_x], axis=-1)
        if not measure:
            continue
        per_image: dict[str, list[np.ndarray]] = {p: [] for p in paths}
        # One image's summed-area tables at a time: a batch of them would take hundreds of MB.
        for i, im in enumerate(_unnormalise(images, loaded)):
            table = descriptors.integral(descriptors.base_maps(im))  # (M, S + 1, S + 1)
            for p in paths:
                values = descriptors.describe(descriptors.box_means(table, boxes[p][i]))
                per_image[p].append(values.astype(np.float32))  # (U, D)
        for p in paths:
            desc[p].append(np.stack(per_image[p]))  # (B, U, D)
    return Evidence(
        ids=torch.cat(ids).numpy() if ids else np.zeros(0, dtype=np.int64),
        acts={p: np.concatenate(a) for p, a in acts.items()},
        desc={p: np.concatenate(d) for p, d in desc.items()} if measure else None,
        outputs=torch.cat(outs).numpy() if outs else None,
    )


def concept_vocabulary(loaded: LoadedModel, general: Sequence[str]) -> list[str]:
    """Concept words a label may use: ``general`` categories, then the model's class names
    (ImageNet's for a model without any, such as CLIP: its zero-shot classes)."""
    names = loaded.class_names or imagenet_class_names()
    return list(dict.fromkeys([*general, *names]))


def concept_match(head: TextHead, outputs: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """(N, S) ``head.describe`` outputs -> (N, T): how well each text matches each image.

    CLIP: cosine of image and text embeddings. Classifier: the image's class probabilities
    along the text's direction in logit space (a class name's own class, mostly)."""
    if not texts:
        return np.zeros((outputs.shape[0], 0), dtype=np.float32)
    direction = head.logit_direction(list(texts)).float().cpu().numpy()  # (T, S)
    return (outputs.astype(np.float32) @ direction.T).astype(np.float32)  # (N, T)
