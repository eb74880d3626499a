"""Text-aligned views: search, heads, unit vectors, text feature vis, words, labels, families."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backend.textsearch import TextIndex
from contracts.layout import Layout
from workers.ml.hooks import get_module
from workers.ml.models import LoadedModel, PreprocessConfig
from workers.ml.text.families import compose, distinct_strings, propose_families
from workers.ml.text.heads import classifier_head
from workers.ml.text.index import search_index_arrays, unit_text_vectors
from workers.ml.text.labels import auto_labels
from workers.ml.text.textfv import build_vocabulary, dictionary_words, top_strings
from workers.ml.text.unit_vectors import (
    attribution,
    compute_unit_vectors,
    example_vectors,
    output_basis,
)
from workers.ml.text.words import render_word, top_words, word_activations

CLASSES = ["cat", "dog", "car", "tree", "boat"]
NCHW = Layout("nchw")


def fixed_encoder(dim: int = 16):
    """A deterministic text encoder: one random unit vector per distinct string."""
    table: dict[str, torch.Tensor] = {}

    def encode(texts):
        rows = []
        for t in texts:
            if t not in table:
                g = torch.Generator().manual_seed(zlib.crc32(t.encode()))
                table[t] = F.normalize(torch.randn(dim, generator=g), dim=0)
            rows.append(table[t])
        return torch.stack(rows)

    return encode


def tiny_model() -> LoadedModel:
    """A tiny GAP + linear 'classifier'."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, len(CLASSES)),
    )
    model.eval()
    cfg = PreprocessConfig(12, (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
    return LoadedModel("tiny", "convnet", model, model, cfg, "x", True, CLASSES)


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return tiny_model()


@pytest.fixture(scope="module")
def tiny_images() -> torch.Tensor:
    return torch.randn(
        4, 3, 12, 12, generator=torch.Generator().manual_seed(3)
    ).double()  # (N, 3, 12, 12)


def test_search_returns_planted_unit_first() -> None:
    gen = torch.Generator().manual_seed(0)
    vectors = {
        "a": torch.randn(30, 24, generator=gen),
        "b": torch.randn(50, 24, generator=gen),
        "c": torch.randn(20, 24, generator=gen),
    }
    query = torch.randn(24, generator=gen)
    vectors["b"][17] = 5.0 * query  # scale must not matter: the index is cosine
    # The index a worker publishes, queried as the web process does; the query is its one
    # vocabulary entry.
    arrays = search_index_arrays(list(vectors.items()), ["the query"], query[None])
    index = TextIndex(arrays)
    found, used = index.search("the query", top=5)
    assert used == ["the query"]
    assert (found[0].layer, found[0].unit) == ("b", 17)
    # The vocabulary is stored as float16: a cosine of 1 comes back within its precision.
    assert found[0].score == pytest.approx(1.0, abs=1e-3)
    assert [h.score for h in found] == sorted((h.score for h in found), reverse=True)
    only_c, _ = index.search("the query", top=100, layer="c")
    assert len(only_c) == 20 and {h.layer for h in only_c} == {"c"}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    assert TextIndex.from_bytes(buf.getvalue()).search("the query", top=10) == index.search(
        "the query", top=10
    )


def test_classifier_head_reads_the_last_layer(tiny) -> None:
    enc = fixed_encoder()
    head = classifier_head(tiny, enc, top_classes=1)
    assert head.last_layer_path == "2"
    w = get_module(tiny.image_model, "6").weight.float()  # (C, U)
    # With one kept class the query is that class's (centred) logit direction.
    weights = head.penultimate_weights(["dog"])[0]  # (U,)
    centred = w - w.mean(0, keepdim=True)
    assert torch.corrcoef(torch.stack([weights, centred[1]]))[0, 1] > 0.999


def test_unit_vectors_match_finite_differences(tiny_images) -> None:
    tiny = tiny_model()
    head = classifier_head(tiny, fixed_encoder())
    tiny.image_model.double()  # after the head is built: float64 makes finite differences exact
    layers = {"0": NCHW, "2": NCHW}
    ids = torch.arange(4)
    vectors = compute_unit_vectors(tiny, head, layers, [(tiny_images, ids)], rank=8)
    assert vectors["2"].shape == (6, len(CLASSES))
    assert torch.allclose(vectors["2"], head.readout.T)
    model, eps = tiny.image_model, 1e-6
    for unit in (0, 5):

        def scaled(factor: float, unit: int = unit) -> torch.Tensor:
            def hook(_m, _i, out):
                out = out.clone()
                out[:, unit] *= factor
                return out

            handle = model[0].register_forward_hook(hook)
            try:
                with torch.no_grad():
                    return head.output(model(tiny_images)).mean(0)  # (C,)
            finally:
                handle.remove()

        fd = (scaled(1 + eps) - scaled(1 - eps)) / (2 * eps)  # d output / d log-scale of unit
        assert torch.allclose(vectors["0"][unit].double(), fd, atol=1e-5)
    # With top examples, a unit averages only over its own.
    top_ids = {"0": torch.tensor([[1, 3]] * 8)}
    own = compute_unit_vectors(tiny, head, {"0": NCHW}, [(tiny_images, ids)], top_ids, rank=8)
    basis = output_basis(head, 8)
    per = attribution(tiny, head, {"0": NCHW}, tiny_images, basis)["0"]  # (N, U, r)
    expected = per[[1, 3]].mean(0) @ basis.T  # (U, S)
    assert torch.allclose(own["0"], expected.float(), atol=1e-5)


def test_example_vectors_average_outputs_of_top_examples() -> None:
    outputs = torch.arange(12, dtype=torch.float32).reshape(4, 3)  # (N, S)
    ids = torch.tensor([10, 11, 12, 13])
    tops = {"l": torch.tensor([[13, 10], [11, -1]])}
    v = example_vectors(ids, outputs, tops)["l"]
    assert torch.equal(v, torch.stack([(outputs[3] + outputs[0]) / 2, outputs[1]]))


def test_units_read_as_the_class_their_examples_are_predicted(tiny) -> None:
    """A classifier describes an image by its class probabilities, so a unit whose top
    examples are confidently 'dog' reads as 'dog' through the web's search path, however
    negative the other logits are (averaged centred logits let those dominate)."""
    enc = fixed_encoder()
    head = classifier_head(tiny, enc)
    logits = torch.tensor(
        [
            [6.0, 0.0, 0.0, 0.0, 0.0],  # cat
            [7.0, 1.0, 0.0, 0.0, -1.0],  # cat
            [0.0, 12.0, -30.0, 4.0, 0.0],  # dog, far from car
            [0.0, 11.0, -25.0, 0.0, 3.0],  # dog
        ]
    )
    described = head.describe(logits)  # (N, C)
    assert torch.allclose(described.sum(-1), torch.ones(4))
    ids, tops = torch.arange(4), {"l": torch.tensor([[0, 1], [2, 3]])}
    vocab = build_vocabulary(CLASSES, ["spoon", "river"])
    index = TextIndex(
        search_index_arrays(
            list(unit_text_vectors(head, ids, described, tops).items()), vocab, enc(vocab)
        )
    )
    for query, unit in (("cat", 0), ("dog", 1)):
        hits, used = index.search(query, top=2)
        assert used == [query] and hits[0].unit == unit
    dog = index.search("dog", top=1)[0][0]
    centred_dog = F.normalize(enc(["dog"])[0] - enc(CLASSES).mean(0), dim=0)
    assert dog.score == pytest.approx(float(centred_dog @ enc(["dog"])[0]), abs=0.01)
    centred = unit_text_vectors(head, ids, head.output(logits), tops)["l"][1]
    assert dog.score > float(F.normalize(centred, dim=0) @ enc(["dog"])[0])


def test_rendered_words_render_and_are_mined(tiny) -> None:
    img = render_word("espresso", 64)
    a = np.asarray(img.convert("L"))
    assert img.size == (64, 64)
    ys, xs = np.nonzero(a < 128)
    assert len(ys) > 20 and abs(xs.mean() - 32) < 6 and abs(ys.mean() - 32) < 6
    assert render_word("ab", 64).tobytes() != render_word("ba", 64).tobytes()
    words = ["cat", "dog", "a", "xylophone", "tree"]
    acts = word_activations(tiny, {"2": NCHW}, words, batch=2)["2"]  # (W, U)
    assert acts.shape == (5, 6)
    tops = top_words(acts, words, k=3)
    assert len(tops) == 6
    for u, row in enumerate(tops):
        best = int(acts[:, u].argmax())
        assert row[0][0] == words[best]
        assert row[0][1] == pytest.approx(float(acts[best, u] - acts[:, u].mean()), abs=1e-5)


def test_textfv_top_16_sorted_and_planted_first() -> None:
    words = dictionary_words(limit=300)
    assert words and all(w.isalpha() and w.islower() for w in words)
    vocab = build_vocabulary(CLASSES, words)
    assert vocab[: len(CLASSES)] == CLASSES and "a photo of a dog" in vocab
    enc = fixed_encoder(32)
    emb = enc(vocab)
    unit = emb[vocab.index("a photo of a dog")] + 0.01 * torch.ones(32)
    tops = top_strings(torch.stack([unit, -unit]), emb, vocab, k=16)
    assert len(tops) == 2 and all(len(t) == 16 for t in tops)
    assert tops[0][0][0] == "a photo of a dog"
    for row in tops:
        scores = [s for _, s in row]
        assert scores == sorted(scores, reverse=True)


def test_auto_labels_agreement_and_confidence() -> None:
    enc = fixed_encoder(64)
    text = [
        [("dog", 0.9), ("cat", 0.5)],
        [("boat", 0.8), ("car", 0.7)],
    ]
    examples = [["dog", "dog", "dog"], ["tree", "cat", "dog"]]
    labels = auto_labels(text, examples, enc)
    assert labels[0] == ("dog", pytest.approx(1.0))
    assert 0.0 <= labels[1][1] < 0.5
    assert auto_labels(text, examples, enc) == labels


def test_family_names_do_not_repeat_a_string_in_a_prompt() -> None:
    vocab = ["ladybug", "a photo of a ladybug", "leaf beetle", "bug", "a drawing of a bee", "bee"]
    ranked = [1, 0, 2, 3, 4, 5]  # the prompt is nearest, then its class name
    assert [vocab[i] for i in distinct_strings(vocab, ranked, 3)] == [
        "a photo of a ladybug",
        "leaf beetle",
        "bug",
    ]
    assert [vocab[i] for i in distinct_strings(vocab, [0, 1, 5, 4], 3)] == ["ladybug", "bee"]


def test_families_recover_planted_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, 32, generator=gen), dim=1) * 5
    vectors = torch.cat([c + 0.3 * torch.randn(10, 32, generator=gen) for c in centres])
    keys = [("l", i) for i in range(30)]
    vocab = ["alpha", "beta", "gamma", "delta"]
    vocab_emb = torch.cat([centres, torch.randn(1, 32, generator=gen)])
    fams = propose_families(vectors, keys, vocab_emb, vocab, k_range=(2, 6))
    assert len(fams) == 3
    groups = sorted(sorted(u for _, u in f.members) for f in fams)
    assert groups == [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]
    names = {f.words[0] for f in fams}
    assert names == {"alpha", "beta", "gamma"}
    again = propose_families(vectors, keys, vocab_emb, vocab, k_range=(2, 6))
    assert [f.members for f in again] == [f.members for f in fams]


def test_lasso_composition_recovers_planted_units() -> None:
    gen = torch.Generator().manual_seed(1)
    vectors = F.normalize(torch.randn(60, 64, generator=gen), dim=1)
    concept = 0.8 * vectors[7] + 0.5 * vectors[42]
    keys = [("blocks.6" if i < 30 else "conv_head", i % 30) for i in range(60)]
    comp = compose(concept, vectors, keys, alpha=0.002)
    assert {(lay, u) for _, lay, u in comp[:2]} == {keys[7], keys[42]}
    assert comp[0][0] > comp[1][0] > 0
    assert all(abs(w) < 0.1 for w, _, _ in comp[2:])


def test_espresso_query_ranks_the_units_that_drive_class_967(default_model) -> None:
    from workers.ml.text.heads import make_text_head

    head = make_text_head(default_model)  # the real MiniLM sentence encoder, offline
    assert head.kind == "classifier" and head.last_layer_path == "conv_head"
    direction = head.logit_direction(["espresso"])[0]  # (C,)
    assert int(direction.argmax()) == 967
    weights = head.penultimate_weights(["espresso"])[0]  # (U,)
    model = default_model.image_model
    w = model.classifier.weight.detach()  # (C, U)
    bn = model.bn2
    gain = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()  # (U,)
    drive = (w[967] - w.mean(0)) * gain  # how much each unit raises espresso over the rest
    top = set(weights.topk(10).indices.tolist())
    assert len(top & set(drive.topk(20).indices.tolist())) >= 8
    assert torch.corrcoef(torch.stack([weights, drive]))[0, 1] > 0.8
    # In sentence space the espresso units point at coffee words.
    text = head.to_text(head.readout.T[list(top)])  # (10, 384)
    emb = head.encode(["espresso", "coffee", "volcano", "zebra"])  # (4, 384)
    sims = F.normalize(text, dim=-1) @ emb.T  # (10, 4)
    assert sims[:, 0].mean() > sims[:, 2].mean() and sims[:, 0].mean() > sims[:, 3].mean()
