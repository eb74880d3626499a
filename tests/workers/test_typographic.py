"""Typographic attacks: a planted text-reading model is flipped by the word written on a photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from contracts.layout import Layout
from tests.workers.test_text import fixed_encoder
from workers.ml.models import LoadedModel, PreprocessConfig
from workers.ml.text.heads import classifier_head
from workers.ml.text.typographic import attack, choose_words, paste_word

CLASSES = ["apple", "ipod"]
SIZE = 64


def text_reader() -> LoadedModel:
    """Unit 0 fires on near-black pixels (ink), unit 1 on red; 'ipod' reads ink, 'apple' red."""
    conv = nn.Conv2d(3, 2, 1)
    head = nn.Linear(2, 2)
    with torch.no_grad():
        # Inputs are normalised to [-1, 1]: ink sums to about -3, any photo pixel here > -2.
        conv.weight.copy_(torch.tensor([[-1.0, -1.0, -1.0], [1.0, -0.5, -0.5]])[:, :, None, None])
        conv.bias.copy_(torch.tensor([-2.4, 0.0]))
        head.weight.copy_(torch.tensor([[0.0, 1.0], [1000.0, 0.0]]))  # apple <- red, ipod <- ink
        head.bias.zero_()
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()
    cfg = PreprocessConfig(SIZE, (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
    return LoadedModel("reader", "convnet", model, model, cfg, "x", True, CLASSES)


def apples(n: int = 12) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        rgb = np.array([0.8, 0.2, 0.2]) + rng.normal(0, 0.05, (SIZE, SIZE, 3))
        out.append(Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)))
    return out


def test_the_written_word_flips_a_text_reading_model() -> None:
    loaded = text_reader()
    head = classifier_head(loaded, fixed_encoder(), top_classes=1)
    layouts = {"0": Layout("nchw")}
    result = attack(loaded, head, layouts, apples(), ["ipod"], CLASSES)
    assert (result.clean_pred == 0).all()  # every photo is an apple to begin with
    flipped, eligible = result.success()
    assert eligible.tolist() == [12] and flipped.tolist() == [12]
    rise = result.rises("0")  # (W, U)
    assert int(rise[0].argmax()) == 0 and rise[0, 0] > 3  # the ink unit reads the word
    assert result.alone["0"][0, 0] > result.clean["0"][:, 0].mean()
    # Writing a word that is not a class has no meaning for the prediction.
    with pytest.raises(ValueError, match="pear"):
        attack(loaded, head, layouts, apples(2), ["pear"], CLASSES)


def test_words_are_classes_the_preferred_first() -> None:
    classes = ["tench", "iPod", "great white shark", "pizza", "zebra", "hen"]
    assert choose_words(classes, 3)[:2] == ["iPod", "pizza"]
    assert set(choose_words(classes, 10)) == {"iPod", "pizza", "tench", "zebra", "hen"}
    img = Image.new("RGB", (SIZE, SIZE), (200, 30, 30))
    pasted = np.asarray(paste_word(img, "ipod"))
    assert (pasted.min(axis=2) < 60).sum() > 20  # ink
    assert (pasted == 255).all(axis=2).sum() > 100  # the white label
    assert (np.asarray(img) == pasted)[:10].all()  # the top of the photo is untouched
