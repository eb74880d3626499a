"""Labels that abstain: fidelity on held-out images, a measured bar, polysemantic units."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from torch import nn

from contracts.layout import Layout
from workers.ml.models import LoadedModel, PreprocessConfig
from workers.ml.text import descriptors
from workers.ml.text.evidence import Evidence, collect_evidence
from workers.ml.text.fidelity import (
    heldout_mask,
    null_scores,
    null_threshold,
    partial_spearman,
    spearman,
)
from workers.ml.text.labels import MIN_BAR, choose_labels, heldout_fidelity, label_layers

N = 200
SIDE = 16
CLASSES = ["apple", "bus", "cloud", "daisy"]


def colour_images(n: int = N, seed: int = 0) -> np.ndarray:
    """(n, SIDE, SIDE, 3): flat colours of random hue, saturation and value, plus noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.2, 1), rng.uniform(0.3, 1))
        img = np.array(rgb)[None, None, :] + rng.normal(0, 0.03, (SIDE, SIDE, 3))
        out.append(np.clip(img, 0, 1))
    return np.stack(out)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return colour_images()


@pytest.fixture(scope="module")
def desc(images) -> np.ndarray:
    """(N, 1, D) descriptors of each whole image (one unit whose field is the image)."""
    whole = [(0, 0, SIDE, SIDE)]
    return np.stack([descriptors.measure_boxes(im, whole) for im in images])


def column(desc: np.ndarray, word: str) -> np.ndarray:
    return desc[:, 0, descriptors.WORDS.index(word)]


def test_heldout_half_is_stable_and_about_half() -> None:
    ids = np.arange(1000)
    mask = heldout_mask(ids)
    assert 0.45 < mask.mean() < 0.55
    assert np.array_equal(heldout_mask(ids[::-1]), mask[::-1])  # by id, not by position


def test_spearman_and_partial() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.normal(size=300)
    assert spearman(a[:, None], (a**3)[:, None])[0, 0] == pytest.approx(1.0)
    assert abs(spearman(a[:, None], b[:, None])[0, 0]) < 0.15
    y = a + b
    assert partial_spearman(y, b, a[:, None]) > partial_spearman(y, b, b[:, None]) + 0.5


def test_a_planted_red_unit_is_labelled_red_with_a_high_score(desc) -> None:
    rng = np.random.default_rng(1)
    acts = column(desc, "red")[:, None] + rng.normal(0, 0.01, (N, 1))  # (N, 1)
    held = heldout_mask(np.arange(N))
    thr = null_threshold(null_scores(acts, desc, None, held))
    assert 0.1 < thr < 0.6  # about 2.3 / sqrt(N / 2) for N = 200
    (unit,) = choose_labels(acts, desc, None, [], held, thr)
    assert unit.labels[0].text == "red" and unit.labels[0].kind == "colour"
    assert unit.labels[0].score > 0.8
    assert unit.guesses[0].text == "red"


def test_a_random_unit_abstains_but_keeps_its_guesses(desc) -> None:
    rng = np.random.default_rng(2)
    acts = rng.normal(size=(N, 3))
    held = heldout_mask(np.arange(N))
    desc3 = np.repeat(desc, 3, axis=1)  # (N, 3, D)
    thr = null_threshold(null_scores(acts, desc3, None, held))
    for unit in choose_labels(acts, desc3, None, [], held, thr):
        assert unit.labels == []
        assert len(unit.guesses) == 5 and all(abs(g.score) < thr for g in unit.guesses[:1])


def test_a_classifier_logit_unit_gets_its_own_class(desc) -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(N, len(CLASSES))) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # the head's match
    acts = logits[:, [2]]  # the unit is the logit of "cloud"
    held = heldout_mask(np.arange(N))
    thr = null_threshold(null_scores(acts, desc, probs, held))
    (unit,) = choose_labels(acts, desc, probs, CLASSES, held, thr)
    assert [(x.text, x.kind) for x in unit.labels] == [("cloud", "concept")]
    assert unit.labels[0].score > 0.8
    assert heldout_fidelity(acts[:, 0], probs[:, 2], held) == unit.labels[0].score


def test_a_polysemantic_unit_gets_both_of_its_labels(desc) -> None:
    def z(v: np.ndarray) -> np.ndarray:
        return (v - v.mean()) / v.std()

    # Fires on red images and on bright ones (hue and value are drawn independently).
    acts = np.maximum(z(column(desc, "red")), z(column(desc, "bright")))[:, None]
    held = heldout_mask(np.arange(N))
    thr = null_threshold(null_scores(acts, desc, None, held))
    (unit,) = choose_labels(acts, desc, None, [], held, thr)
    texts = [x.text for x in unit.labels]
    assert {"red", "bright"} <= set(texts) and len(texts) <= 3
    assert all(x.score >= thr for x in unit.labels)


def test_a_class_name_needs_evidence_beyond_the_pixels(desc) -> None:
    # "apple" images are exactly the red ones: the class adds nothing to the colour.
    red = column(desc, "red")
    match = np.column_stack([red + 1e-3 * np.arange(N) / N, np.random.default_rng(4).random(N)])
    acts = red[:, None]
    held = heldout_mask(np.arange(N))
    thr = null_threshold(null_scores(acts, desc, match, held))
    (unit,) = choose_labels(acts, desc, match, ["apple", "bus"], held, thr)
    assert [x.text for x in unit.labels] == ["red"]
    assert "apple" not in {g.text for g in unit.guesses}


def test_a_class_name_that_only_repeats_the_pixels_is_not_a_guess_either(desc) -> None:
    """The unit fires on red and bright images; "apple" images are the bright ones. Beyond
    the best descriptor alone (a hue) the class seems to add something; beyond every descriptor
    of the pixels (bright among them) it adds nothing, so it is neither label nor guess."""

    def z(v: np.ndarray) -> np.ndarray:
        return (v - v.mean()) / v.std()

    bright = column(desc, "bright")
    acts = (1.2 * z(column(desc, "red")) + z(bright))[:, None]
    noise = np.random.default_rng(6).random(N)
    match = np.column_stack([bright + 1e-3 * np.arange(N) / N, noise])
    held = heldout_mask(np.arange(N))
    thr = null_threshold(null_scores(acts, desc, match, held))
    (unit,) = choose_labels(acts, desc, match, ["apple", "bus"], held, thr)
    assert unit.labels and unit.labels[0].kind != "concept"
    assert "apple" not in {x.text for x in unit.labels + unit.guesses}


def test_evidence_from_a_planted_red_channel_labels_it_red() -> None:
    """Through a model: activations, argmax positions, receptive-field crops, descriptors."""
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        # On inputs normalised to [-1, 1]: R - (G + B) / 2, highest on red.
        conv.weight[0, :, 0, 0] = torch.tensor([1.0, -0.5, -0.5])
    model = nn.Sequential(conv).eval()  # unit 1 is silent
    cfg = PreprocessConfig(SIDE, (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
    loaded = LoadedModel("planted", "convnet", model, model, cfg, "x", True, None)
    imgs = colour_images(160, seed=5)
    x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() - 0.5) / 0.5  # (N, 3, S, S)
    batches = [(x[i : i + 32], torch.arange(i, min(i + 32, len(x)))) for i in range(0, 160, 32)]
    ev = collect_evidence(loaded, {"0": Layout("nchw")}, batches)
    assert ev.desc is not None and ev.acts["0"].shape == (160, 2)
    assert ev.desc["0"].shape == (160, 2, len(descriptors.WORDS))
    held = heldout_mask(ev.ids)
    thr = null_threshold(null_scores(ev.acts["0"], ev.desc["0"], None, held))
    red, silent = choose_labels(ev.acts["0"], ev.desc["0"], None, [], held, thr)
    assert red.labels[0].text == "red" and red.labels[0].score > 0.8
    assert silent.labels == []  # a constant unit predicts nothing


def test_too_few_held_out_images_label_nothing_but_keep_the_guesses(desc) -> None:
    """A correlation over one or two images is no evidence: the planted red unit, labelled
    red on the whole set, abstains on four images (and a bar is never 0)."""
    red = column(desc, "red")[:, None]  # (N, 1)
    whole = label_layers(Evidence(np.arange(N), {"l": red}, {"l": desc}, None), None, [])
    assert whole.units["l"][0].labels[0].text == "red" and whole.threshold >= MIN_BAR
    few = label_layers(Evidence(np.arange(4), {"l": red[:4]}, {"l": desc[:4]}, None), None, [])
    (unit,) = few.units["l"]
    assert unit.labels == [] and unit.guesses and few.threshold >= MIN_BAR
