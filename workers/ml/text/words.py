"""Rendered-word stimuli: dictionary words drawn as images, and each unit's top words."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from contracts.layout import Layout
from workers.ml.hooks import run_to, to_unit_maps
from workers.ml.models import LoadedModel
from workers.ml.preprocess import from_pil, normalize

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")  # Debian fonts-dejavu-core


@lru_cache(maxsize=32)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if FONT.is_file():
        return ImageFont.truetype(str(FONT), px)
    return ImageFont.load_default(px)


def render_word(word: str, size: int = 224) -> Image.Image:
    """Black word on white, centred, as large as fits 90% of the width (at most size/4 tall)."""
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    px = max(8, size // 4)
    while px > 8:
        box = draw.textbbox((0, 0), word, font=_font(px))
        if box[2] - box[0] <= 0.9 * size:
            break
        px -= 2
    font = _font(px)
    box = draw.textbbox((0, 0), word, font=font)
    x = (size - (box[2] - box[0])) / 2 - box[0]
    y = (size - (box[3] - box[1])) / 2 - box[1]
    draw.text((x, y), word, fill="black", font=font)
    return img


def word_activations(
    loaded: LoadedModel, layers: Mapping[str, Layout], words: Sequence[str], batch: int = 64
) -> dict[str, torch.Tensor]:
    """Per layer (W, U): each unit's max over positions on each rendered word."""
    cfg = loaded.preprocess
    model = loaded.image_model
    param = next(model.parameters())
    chunks: dict[str, list[torch.Tensor]] = {p: [] for p in layers}
    with torch.inference_mode():
        for start in range(0, len(words), batch):
            # Rendered at the input size: no resize or crop that could cut the word.
            imgs = [render_word(w, cfg.input_size) for w in words[start : start + batch]]
            x = normalize(from_pil(imgs), cfg).to(param.device, param.dtype)  # (B, 3, S, S)
            raw = run_to(model, x, list(layers))
            for p, lay in layers.items():
                chunks[p].append(to_unit_maps(raw[p], lay).amax(dim=(2, 3)).float().cpu())
    return {p: torch.cat(c) if c else torch.empty(0) for p, c in chunks.items()}


def top_words(
    acts: torch.Tensor, words: Sequence[str], k: int = 16
) -> list[list[tuple[str, float]]]:
    """Per unit its k top words by activation minus the unit's mean over all words (W, U)."""
    centred = acts - acts.mean(0, keepdim=True)  # (W, U): the image-based word embedding
    vals, idx = centred.topk(min(k, len(words)), dim=0)  # (k, U)
    return [
        [(words[i], float(s)) for i, s in zip(idx[:, u].tolist(), vals[:, u].tolist(), strict=True)]
        for u in range(acts.shape[1])
    ]
