"""Conditional probability plots: uniform buckets, capped samples, shares that sum to one."""

from __future__ import annotations

import numpy as np
import pytest

from workers.ml.text.condprob import condprob

CONCEPTS = ["dog", "car", "sky"]


def test_bucket_shares_sum_to_one_and_follow_the_unit() -> None:
    rng = np.random.default_rng(0)
    n = 600
    categories = rng.integers(0, 3, n)
    # The unit fires on dogs: their activations are higher.
    acts = rng.normal(0, 1, n) + 3.0 * (categories == 0)
    ids = np.arange(1000, 1000 + n)
    plot = condprob(acts, categories, CONCEPTS, ids, buckets=8, per_bucket=20)
    shares = np.array(plot["shares"])  # (B, C)
    assert shares.shape == (8, 3)
    for row, k in zip(shares, plot["sampled"], strict=True):
        assert row.sum() == pytest.approx(1.0 if k else 0.0, abs=1e-5)
    assert sum(plot["totals"]) == n and all(k <= 20 for k in plot["sampled"])
    assert all(k == min(t, 20) for k, t in zip(plot["sampled"], plot["totals"], strict=True))
    assert plot["edges"][0] == pytest.approx(acts.min()) and plot["edges"][-1] == pytest.approx(
        acts.max()
    )
    # x in standard deviations of the unit's activation, rising with the buckets.
    centres = (np.array(plot["edges"][:-1]) + np.array(plot["edges"][1:])) / 2
    np.testing.assert_allclose(plot["x_std"], (centres - acts.mean()) / acts.std(), atol=1e-3)
    assert shares[-1, 0] > 0.9 and shares[0, 0] < 0.2  # dogs at the top, few at the bottom
    # Samples are ids of images in their bucket, the same on every run.
    edges = plot["edges"]
    for b, sample in enumerate(plot["samples"]):
        a = acts[np.asarray(sample) - 1000]
        assert np.all((a >= edges[b] - 1e-6) & (a <= edges[b + 1] + 1e-6))
    assert condprob(acts, categories, CONCEPTS, ids, buckets=8, per_bucket=20) == plot


def test_a_constant_unit_has_one_bucket_of_everything() -> None:
    categories = np.array([0, 1, 1, 2])
    plot = condprob(np.ones(4), categories, CONCEPTS, np.arange(4), buckets=3, per_bucket=10)
    assert plot["totals"] == [4, 0, 0]
    assert plot["shares"][0] == pytest.approx([0.25, 0.5, 0.25])
    assert plot["x_std"] == [0.0, 0.0, 0.0]
