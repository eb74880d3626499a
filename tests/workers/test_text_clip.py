"""CLIP mechanics of the text head on random-init open_clip models (no weights offline)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backend.textsearch import TextIndex
from contracts.layout import Layout
from workers.ml.models import load_model
from workers.ml.text.heads import encode_tokens, make_text_head
from workers.ml.text.index import search_index_arrays
from workers.ml.text.textfv import (
    LM_PENALTY,
    climb_candidates,
    hill_climb,
    one_token_words,
    top_strings,
)
from workers.ml.text.unit_vectors import compute_unit_vectors

VOCAB = ["dog", "cat", "a photo of a dog", "car", "tree", "spider", "house", "boat"]


@pytest.fixture(scope="module")
def rn50():
    return load_model("open_clip:RN50")


def test_rn50_readout_linearises_the_attention_pool(rn50) -> None:
    head = make_text_head(rn50)
    assert head.kind == "clip" and head.last_layer_path == "layer4"
    pool = rn50.image_model.attnpool
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2, 2048, 7, 7, generator=gen)  # (N, C, 7, 7)
    delta = 0.05 * torch.randn(2, 2048, 1, 1, generator=gen)  # a spatially uniform change
    with torch.no_grad():
        actual = pool(a + delta) - pool(a)  # (N, D)
    predicted = delta.flatten(1) @ head.readout.T  # (N, C) @ (C, D) -> (N, D)
    assert F.cosine_similarity(actual, predicted).min() > 0.9
    text = head.encode(VOCAB)
    assert text.shape == (len(VOCAB), head.space_dim)
    assert torch.allclose(text.norm(dim=-1), torch.ones(len(VOCAB)), atol=1e-5)
    assert head.penultimate_weights(["dog"]).shape == (1, 2048)


def test_short_context_text_encoding_equals_the_full_context(rn50) -> None:
    # The tower is causal and pools at the end token: the padding after it changes nothing.
    tokens = rn50.tokenizer(VOCAB)  # (8, 77)
    with torch.inference_mode():
        full = rn50.full_model.encode_text(tokens)  # (8, D)
        short = encode_tokens(rn50.full_model, tokens)  # (8, D)
    assert torch.allclose(short, full, atol=1e-4)


def test_hill_climb_only_moves_up_and_is_deterministic(rn50) -> None:
    head = make_text_head(rn50)
    direction = head.encode(["dog"])[0]  # (D,)
    words = ["dog", "cat", "tree", "house", "car", "boat", "photo", "red"]
    _, ids = one_token_words(words)
    cands = climb_candidates(direction, head.encode(words), ids, k=6)
    assert len(cands) == 6 and cands[0] == ids[0]  # "dog" itself is closest
    climb = hill_climb(rn50, direction, cands, n_tokens=2, sweeps=1, keep=5)
    assert climb.start == cands[:2] and climb.score >= climb.start_score
    assert climb.top[0] == (climb.text, climb.score) and len(climb.top) == 5
    assert [s for _, s in climb.top] == sorted((s for _, s in climb.top), reverse=True)
    # The score is the objective: the string's cosine with the direction, less the penalty.
    penalty = LM_PENALTY * sum(float(torch.log1p(torch.tensor(float(t)))) for t in climb.tokens)
    cos = float(head.encode([climb.text])[0] @ F.normalize(direction, dim=0))
    assert climb.score == pytest.approx(cos - penalty, abs=1e-4)
    assert hill_climb(rn50, direction, cands, n_tokens=2, sweeps=1, keep=5) == climb


@pytest.mark.slow
def test_rn50_end_to_end_search_and_textfv(rn50) -> None:
    head = make_text_head(rn50)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    layers = {"layer4.0": Layout("nchw"), "layer4": Layout("nchw")}
    vectors = compute_unit_vectors(rn50, head, layers, [(x, torch.arange(2))], rank=4)
    assert vectors["layer4"].shape == (2048, 1024) and vectors["layer4.0"].shape == (2048, 1024)
    prompt = "a photo of a dog"
    # The published index as the web process queries it: the prompt is its vocabulary.
    q = head.logit_direction([prompt])  # (1, D)
    index = TextIndex(search_index_arrays(list(vectors.items()), [prompt], q))
    found, _ = index.search(prompt, top=5)
    best = int(torch.argmax(head.penultimate_weights([prompt])[0] / (head.readout.norm(dim=0))))
    in_layer4, _ = index.search(prompt, top=5, layer="layer4")
    assert ("layer4", best) in [(h.layer, h.unit) for h in in_layer4]
    assert len(found) == 5
    emb = head.encode(VOCAB)
    tops = top_strings(vectors["layer4"][:3], emb, VOCAB, k=4)
    assert all(len(t) == 4 for t in tops)


@pytest.mark.slow
def test_vit_readout_matches_a_last_block_perturbation(tmp_path) -> None:
    from safetensors.torch import save_file

    loaded = load_model("open_clip:ViT-B-32")
    with torch.no_grad():
        for p in loaded.full_model.parameters():
            p.add_(0.001)  # different from the seeded init, so the checkpoint is really read
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in loaded.full_model.state_dict().items()}, str(path))
    loaded = load_model(f"open_clip:ViT-B-32@{path}")
    head = make_text_head(loaded)
    assert head.last_layer_path == "transformer.resblocks.11.mlp.gelu"
    tokens = loaded.tokenizer(VOCAB[:3])  # (3, 77)
    with torch.inference_mode():
        full = loaded.full_model.encode_text(tokens)  # (3, D)
        assert torch.allclose(encode_tokens(loaded.full_model, tokens), full, atol=1e-4)
    visual = loaded.image_model
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    unit, eps = 7, 1e-2

    def embed(bump: float) -> torch.Tensor:
        def hook(_m, _i, out):
            out = out.clone()
            out[:, 0, unit] += bump  # the class token: the only one the pooled output reads
            return out

        handle = visual.transformer.resblocks[11].mlp.gelu.register_forward_hook(hook)
        try:
            with torch.no_grad():
                return visual(x)[0]
        finally:
            handle.remove()

    change = embed(eps) - embed(0.0)  # (D,)
    assert F.cosine_similarity(change, head.readout[:, unit], dim=0) > 0.99
    _, ids = one_token_words(["dog", "cat", "tree", "house", "car", "boat"])
    climb = hill_climb(loaded, head.readout[:, unit], ids, n_tokens=2, sweeps=1)
    assert len(climb.tokens) == 2 and climb.text
    # The climb's score is the cosine of its own text minus the penalty.
    emb = head.encode([climb.text])[0]
    cos = float(emb @ F.normalize(head.readout[:, unit], dim=0))
    assert climb.score <= cos + 1e-4
