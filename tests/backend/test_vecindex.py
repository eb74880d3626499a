"""Large search indexes: faiss candidates re-ranked from 16-bit rows find what exact search
finds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import backend.vecindex as vecindex
from backend.textsearch import TextIndex
from backend.vecindex import ExactVectors, FaissVectors, vector_store


def planted(units: int, dim: int, concepts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors shaped like real ones: each unit mostly one concept, some of two others,
    all sharing a common direction; and the concepts' own vectors (the vocabulary)."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim)
    words = rng.normal(size=(concepts, dim)) + 0.8 * common
    words /= np.linalg.norm(words, axis=1, keepdims=True)
    mix = rng.integers(0, concepts, size=(units, 3))  # (U, 3)
    weight = rng.gamma(1.0, 1.0, size=(units, 3)) * np.array([1.0, 0.4, 0.4])
    vecs = np.einsum("uk,ukd->ud", weight, words[mix]) + 0.05 * rng.normal(size=(units, dim))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs.astype(np.float32), words.astype(np.float32)


def test_faiss_top10_equals_exact_search() -> None:
    vecs, words = planted(20_000, 64, 200, seed=0)
    exact, ours = ExactVectors(vecs), FaissVectors(vecs)
    assert ours.nbytes < 0.6 * exact.nbytes  # two bytes a dimension, not four
    same = 0
    for q in words[:100]:
        want, want_scores = exact.top(q, 10)
        got, got_scores = ours.top(q, 10)
        same += set(got) == set(want)
        if set(got) == set(want):  # 16-bit rows: scores within ~1e-5 of float32's
            assert np.allclose(got_scores, want_scores, atol=1e-4)
    assert same >= 98  # 100 when measured; near-ties may differ by faiss version
    # faiss's 4-bit codes alone reorder near neighbours: the re-rank is what makes it exact.
    coarse = sum(
        set(ours.top(q, 10, refine=False)[0]) == set(exact.top(q, 10)[0]) for q in words[:100]
    )
    assert coarse < same


def test_faiss_search_within_some_rows_scans_all_of_them() -> None:
    vecs, words = planted(5_000, 32, 50, seed=1)
    exact, ours = ExactVectors(vecs), FaissVectors(vecs, lists=32, probes=1)
    among = np.arange(1, 5_000, 7)  # scattered over every list
    for q in words[:20]:
        got, got_scores = ours.top(q, 10, among)
        want, want_scores = exact.top(q, 10, among)
        assert set(got) == set(want)
        assert np.allclose(got_scores, want_scores, atol=1e-4)
    assert np.allclose(ours.rows(among[:5]), vecs[among[:5]], atol=1e-4)


def test_the_web_process_imports_faiss_only_for_a_large_index() -> None:
    code = "import sys, backend.textsearch; assert 'faiss' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_a_large_text_index_answers_as_the_exact_one(monkeypatch: pytest.MonkeyPatch) -> None:
    vecs, words = planted(12_000, 48, 120, seed=2)
    data = {
        "layer_names": np.array(["a", "b"]),
        "unit_layer": (np.arange(12_000) >= 9_000).astype(np.int32),
        "unit_index": np.concatenate([np.arange(9_000), np.arange(3_000)]),
        "unit_vecs": vecs,
        "vocab": np.array([f"concept{i}" for i in range(120)]),
        "vocab_vecs": words.astype(np.float16),
    }
    small = TextIndex(data)
    monkeypatch.setattr(vecindex, "LARGE", 10_000)
    large = TextIndex(data)
    assert isinstance(small.vectors, ExactVectors)
    assert isinstance(large.vectors, FaissVectors)
    assert isinstance(vector_store(vecs[:9_999]), ExactVectors)
    for i in range(0, 120, 3):
        word = f"concept{i}"
        for layer in (None, "b"):
            want = {(h.layer, h.unit) for h in small.search(word, top=10, layer=layer)[0]}
            got = {(h.layer, h.unit) for h in large.search(word, top=10, layer=layer)[0]}
            assert got == want, (word, layer)
    mixed = large.compose("concept3 concept4")
    assert mixed is not None and mixed.terms and mixed.cosine > 0.5
