"""Typographic attacks (the CLIP article's "iPod" label on an apple).

A class name is written on a white label pasted onto each photo; the attack succeeds on a photo
when the model's top class (its text head's zero-shot class over the class list) becomes the
written word. Every unit's response is measured on the photos, on the photos with each word,
and on the word rendered alone: which units read text, and how much of a prediction is reading.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw

from contracts.layout import Layout
from workers.ml.hooks import capture, to_unit_maps
from workers.ml.models import LoadedModel
from workers.ml.text.heads import TextHead
from workers.ml.text.words import _font, render_word

# Words tried first when they are among the classes (the article's "iPod" first); the rest are
# short one-word class names in a fixed pseudo-random order.
PREFERRED = ("iPod", "pizza", "banana", "library", "goldfish", "umbrella", "castle", "tank")
LABEL_BOX = (0.2, 0.6, 0.8, 0.84)  # the pasted label: (left, top, right, bottom) of the side


def choose_words(classes: Sequence[str], n: int) -> list[str]:
    """``n`` class names to write: the preferred ones present, then short one-word names."""
    present = set(classes)
    first = [w for w in PREFERRED if w in present]
    rest = sorted(
        (c for c in classes if c.isalpha() and 3 <= len(c) <= 9 and c not in first),
        key=lambda c: zlib.crc32(c.encode()),
    )
    return (first + rest)[:n]


def paste_word(img: Image.Image, word: str) -> Image.Image:
    """The image with a white label on its lower middle, the word on it in black."""
    out = img.convert("RGB").copy()
    w, h = out.size
    box = (
        int(LABEL_BOX[0] * w),
        int(LABEL_BOX[1] * h),
        int(LABEL_BOX[2] * w),
        int(LABEL_BOX[3] * h),
    )
    draw = ImageDraw.Draw(out)
    draw.rectangle(box, fill="white")
    bw, bh = box[2] - box[0], box[3] - box[1]
    px = max(6, int(0.75 * bh))
    while px > 6:  # the largest font whose text fits the label
        tb = draw.textbbox((0, 0), word, font=_font(px))
        if tb[2] - tb[0] <= 0.9 * bw and tb[3] - tb[1] <= 0.8 * bh:
            break
        px -= 1
    font = _font(px)
    tb = draw.textbbox((0, 0), word, font=font)
    x = box[0] + (bw - (tb[2] - tb[0])) / 2 - tb[0]
    y = box[1] + (bh - (tb[3] - tb[1])) / 2 - tb[1]
    draw.text((x, y), word, fill="black", font=font)
    return out


@dataclass
class AttackResult:
    """Predictions and unit responses on the photos, with each word, and the words alone."""

    words: list[str]
    classes: list[str]
    clean_pred: np.ndarray  # (P,) class index per photo
    attacked_pred: np.ndarray  # (W, P)
    clean: dict[str, np.ndarray]  # layer path -> (P, U) each unit's max over positions
    attacked: dict[str, np.ndarray]  # layer path -> (W, P, U)
    alone: dict[str, np.ndarray]  # layer path -> (W, U) on the word rendered alone

    def success(self) -> tuple[np.ndarray, np.ndarray]:
        """Per word: (photos whose top class became the word, photos that were not it)."""
        target = np.array([self.classes.index(w) for w in self.words])  # (W,)
        eligible = self.clean_pred[None, :] != target[:, None]  # (W, P)
        flipped = (self.attacked_pred == target[:, None]) & eligible
        return flipped.sum(1), eligible.sum(1)

    def rises(self, path: str) -> np.ndarray:
        """(W, U): each unit's mean rise when the word is written, in standard deviations of
        its responses to the photos."""
        clean = self.clean[path]  # (P, U)
        std = clean.std(0)
        scale = np.where(std > 0, std, 1.0)  # (U,)
        return (self.attacked[path] - clean[None]).mean(1) / scale[None]


def _responses(
    loaded: LoadedModel,
    head: TextHead,
    layouts: Mapping[str, Layout],
    directions: np.ndarray,
    images: Sequence[Image.Image],
    batch: int,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(predicted class (B,), per layer (B, U) unit maxima) of model-sized images."""
    cfg = loaded.preprocess
    mean = torch.tensor(cfg.mean)[:, None, None]  # (3, 1, 1)
    std = torch.tensor(cfg.std)[:, None, None]
    model = loaded.image_model
    param = next(model.parameters())
    preds: list[np.ndarray] = []
    acts: dict[str, list[np.ndarray]] = {p: [] for p in layouts}
    for start in range(0, len(images), batch):
        x = torch.stack(
            [
                (TF.pil_to_tensor(im.convert("RGB")).float() / 255.0 - mean) / std
                for im in images[start : start + batch]
            ]
        ).to(param.device, param.dtype)  # (B, 3, S, S)
        with torch.inference_mode(), capture(model, list(layouts)) as store:
            out = model(x)
        described = head.describe(out).float().cpu().numpy()  # (B, S_out)
        preds.append((described @ directions.T).argmax(1))
        for p, lay in layouts.items():
            maps = to_unit_maps(store[p], lay).float()  # (B, U, H, W)
            acts[p].append(maps.flatten(2).amax(2).cpu().numpy())
    return np.concatenate(preds), {p: np.concatenate(a) for p, a in acts.items()}


def attack(
    loaded: LoadedModel,
    head: TextHead,
    layouts: Mapping[str, Layout],
    photos: Sequence[Image.Image],
    words: Sequence[str],
    classes: Sequence[str],
    *,
    batch: int = 32,
    progress: Any = None,
) -> AttackResult:
    """Write each word on each photo (model-sized views) and measure; every word must be one
    of ``classes``, the zero-shot class list the prediction is taken over."""
    missing = [w for w in words if w not in classes]
    if missing:
        raise ValueError(f"attack words must be classes; not among them: {missing}")
    directions = head.logit_direction(list(classes)).float().cpu().numpy()  # (C, S_out)
    size = loaded.preprocess.input_size

    def run(images: Sequence[Image.Image]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return _responses(loaded, head, layouts, directions, images, batch)

    views = [p.convert("RGB").resize((size, size)) if p.size != (size, size) else p for p in photos]
    clean_pred, clean = run(views)
    attacked_pred: list[np.ndarray] = []
    attacked: dict[str, list[np.ndarray]] = {p: [] for p in layouts}
    for i, w in enumerate(words):
        pred, acts = run([paste_word(v, w) for v in views])
        attacked_pred.append(pred)
        for p in layouts:
            attacked[p].append(acts[p])
        if progress is not None:
            progress(i + 1, len(words))
    _, alone = run([render_word(w, size) for w in words])
    return AttackResult(
        words=list(words),
        classes=list(classes),
        clean_pred=clean_pred,
        attacked_pred=np.stack(attacked_pred),
        clean=clean,
        attacked={p: np.stack(a) for p, a in attacked.items()},
        alone=alone,
    )

