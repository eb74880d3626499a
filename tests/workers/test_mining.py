"""Dataset-example mining: the streaming reducers against brute force on a tiny conv net."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from torch import nn

from contracts.layout import Layout
from workers.ml.hooks import run_to, to_unit_maps
from workers.ml.keys import decode_keys, make_keys, splitmix64
from workers.ml.mining import (
    LayerReducer,
    Miner,
    merge_layer_states,
    merge_reducers,
)
from workers.ml.sources import make_loader, split_shards

N_IMAGES = 40
BATCH = 7
K = 5
R = 16
NCHW = Layout("nchw")
LAYERS = {"0": NCHW, "1": NCHW, "3": NCHW}  # conv (signed), its ReLU, a stride-2 conv


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.Conv2d(6, 5, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
    ).eval()


@pytest.fixture(scope="module")
def data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(N_IMAGES, 3, 12, 12, generator=gen)  # (N, 3, 12, 12)
    # Duplicated images under different ids give exactly tied scores: ids must break them.
    images[20:30] = images[0:10]
    ids = torch.randperm(1000, generator=gen)[:N_IMAGES] * 3 + 11  # (N,) unordered, sparse
    return tiny_net(), images, ids


def batches(images: torch.Tensor, ids: torch.Tensor, size: int = BATCH):
    return [(images[i : i + size], ids[i : i + size]) for i in range(0, len(ids), size)]


@pytest.fixture(scope="module")
def maps(data) -> dict[str, list[torch.Tensor]]:
    """Unit maps per layer, computed in the mining batches so scores are bit-identical."""
    model, images, ids = data
    out: dict[str, list[torch.Tensor]] = {p: [] for p in LAYERS}
    with torch.inference_mode():
        for x, _ in batches(images, ids):
            raw = run_to(model, x, list(LAYERS))
            for p, layout in LAYERS.items():
                out[p].append(to_unit_maps(raw[p], layout).clone())
    return out


def feed(
    layer_maps: list[torch.Tensor], ids: torch.Tensor, k: int = K, fold: int | None = None
) -> LayerReducer:
    red = LayerReducer(k=k, sketch_size=R)
    if fold is not None:  # folded at every batch: later batches skip positions that cannot enter
        red.fold_images = fold
    for m, (_, b_ids) in zip(layer_maps, batches(torch.empty(len(ids)), ids), strict=True):
        red.update(m, b_ids)
    return red


def brute_force(full: torch.Tensor, ids: torch.Tensor, k: int, negative: bool = False):
    """Per unit: [(id, score, y, x)] sorted by (-score, id) (or (min, id)), via numpy."""
    a = full.numpy()  # (N, U, H, W)
    n, u, _, w = a.shape
    flat = a.reshape(n, u, -1)
    scores = flat.min(axis=2) if negative else flat.max(axis=2)  # (N, U)
    pos = flat.argmin(axis=2) if negative else flat.argmax(axis=2)  # first occurrence
    out = []
    for unit in range(u):
        rows = [(int(ids[i]), float(scores[i, unit]), int(pos[i, unit])) for i in range(n)]
        rows.sort(key=lambda r: (r[1] if negative else -r[1], r[0]))
        out.append([(i, s, p // w, p % w) for i, s, p in rows[:k]])
    return out


def as_rows(ids, scores, ys, xs):
    return [
        list(zip(i, s, y, x, strict=True))
        for i, s, y, x in zip(ids.tolist(), scores.tolist(), ys.tolist(), xs.tolist(), strict=True)
    ]


def splitmix64_ref(x: int) -> int:
    """splitmix64 in Python's unbounded ints, as a signed int64."""
    m = 2**64 - 1
    z = (x + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    z ^= z >> 31
    return z - 2**64 if z >= 2**63 else z


def test_splitmix64_matches_reference():
    ids = torch.tensor([0, 1, 2, 7, 12345, 2**31, 2**32 - 1, 2**40 + 3])
    assert splitmix64(ids).tolist() == [splitmix64_ref(int(i)) for i in ids]


def test_keys_order_by_score_then_smaller_id():
    scores = torch.tensor([-3.0, -0.0, 0.0, 1e-30, -1e-30, 2.5, float("inf"), 2.5])
    ids = torch.tensor([9, 4, 3, 8, 2, 6, 0, 5])
    keys = make_keys(scores, ids)
    order = torch.argsort(keys, descending=True).tolist()
    expected = sorted(range(8), key=lambda i: (-float(scores[i]), int(ids[i])))
    assert order == expected
    dec_scores, dec_ids = decode_keys(keys)
    assert torch.equal(dec_ids, ids)
    assert torch.equal(dec_scores, scores + 0.0)


@pytest.mark.parametrize("fold", [None, 1])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_top_k_equals_brute_force(data, maps, layer, fold):
    _, _, ids = data
    res = feed(maps[layer], ids, fold=fold).finalize()
    expected = brute_force(torch.cat(maps[layer]), ids, K)
    got = as_rows(res.top_ids, res.top_scores, res.top_y, res.top_x)
    assert got == expected
    assert res.count == N_IMAGES


def test_ties_are_broken_by_smaller_id(data, maps):
    _, _, ids = data
    res = feed(maps["0"], ids, k=N_IMAGES).finalize()
    scores, top_ids = res.top_scores, res.top_ids  # (U, N)
    tied = scores[:, 1:] == scores[:, :-1]  # (U, N - 1)
    assert bool(tied.any()), "the duplicated images should produce tied scores"
    assert bool((top_ids[:, 1:][tied] > top_ids[:, :-1][tied]).all())


@pytest.mark.parametrize("fold", [None, 1])
def test_negatives_equal_brute_force_and_only_for_signed_layers(data, maps, fold):
    _, _, ids = data
    res = feed(maps["0"], ids, fold=fold).finalize()
    assert res.neg_ids is not None
    expected = brute_force(torch.cat(maps["0"]), ids, K, negative=True)
    assert as_rows(res.neg_ids, res.neg_scores, res.neg_y, res.neg_x) == expected
    assert float(res.neg_scores[0, 0]) < 0
    assert feed(maps["1"], ids).finalize().neg_ids is None  # after ReLU: never negative


@pytest.mark.parametrize("fold", [None, 1])
def test_channels_last_and_token_layouts_match_nchw(data, maps, fold):
    _, _, ids = data
    ref = feed(maps["0"], ids).finalize()
    nhwc = [to_unit_maps(m.permute(0, 2, 3, 1).contiguous(), Layout("nhwc")) for m in maps["0"]]
    assert nhwc[0].stride(1) == 1  # exercises the copy-free channels-last reduction
    tokens = [  # (N, 1 + H * W, C) with a class token first
        torch.cat([torch.zeros(m.shape[0], 1, m.shape[1]), m.flatten(2).transpose(1, 2)], dim=1)
        for m in maps["0"]
    ]
    nlc = [to_unit_maps(t, Layout("nlc", prefix_tokens=1)) for t in tokens]
    for layer_maps in (nhwc, nlc):
        res = feed(layer_maps, ids, fold=fold).finalize()
        assert torch.equal(res.top_ids, ref.top_ids)
        assert torch.equal(res.top_y, ref.top_y)
        assert torch.equal(res.top_x, ref.top_x)
        assert torch.equal(res.top_scores, ref.top_scores)


def test_sketch_is_bottom_r_by_hash(data, maps):
    _, _, ids = data
    red = feed(maps["3"], ids)
    by_hash = sorted(ids.tolist(), key=splitmix64_ref)[:R]
    assert red.state is not None
    assert red.state.sketch_ids.tolist() == by_hash
    full = torch.cat(maps["3"]).flatten(2).amax(dim=2)  # (N, U) per-image max
    pos = {int(i): n for n, i in enumerate(ids)}
    expected = full[[pos[i] for i in by_hash]].t()  # (U, R)
    assert torch.equal(red.state.sketch_scores, expected)


def test_stats_match_numpy(data, maps):
    _, _, ids = data
    for layer in LAYERS:
        res = feed(maps[layer], ids).finalize()
        full = torch.cat(maps[layer]).numpy().astype(np.float64)  # (N, U, H, W)
        per_image = full.max(axis=(2, 3))  # (N, U)
        np.testing.assert_allclose(res.mean.numpy(), per_image.mean(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(res.std.numpy(), per_image.std(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(res.active_share.numpy(), (per_image > 0).mean(0))
        np.testing.assert_array_equal(res.max.numpy(), full.max(axis=(0, 2, 3)))
        np.testing.assert_array_equal(res.min.numpy(), full.min(axis=(0, 2, 3)))


def test_strata_and_histogram_cover_the_sketch(data, maps):
    _, _, ids = data
    red = feed(maps["0"], ids)
    res = red.finalize(n_strata=4, per_stratum=3, bins=8)
    assert red.state is not None
    sketch = set(red.state.sketch_ids.tolist())
    assert res.strata_ids.shape == (6, 4, 3)
    assert res.hist_counts.shape == (6, 8)
    assert res.hist_counts.sum(dim=1).tolist() == [R] * 6
    for unit in range(6):
        prev_hi = -float("inf")
        for s in range(4):
            got = res.strata_scores[unit, s]
            assert set(res.strata_ids[unit, s].tolist()) <= sketch
            assert float(got.min()) >= prev_hi  # strata climb the quantiles
            prev_hi = float(got.max())
        assert float(res.strata_scores[unit, 0, 0]) == float(red.state.sketch_scores[unit].min())
    view = res.unit(2)
    assert len(view.strata) == 4
    assert sum(view.histogram.counts) == R
    assert [e.image_id for e in view.top] == res.top_ids[2].tolist()


def test_small_sketch_pads_strata(data, maps):
    _, _, ids = data
    red = LayerReducer(k=K, sketch_size=R)
    red.update(maps["0"][0][:3], ids[:3])
    res = red.finalize(n_strata=8, per_stratum=8)
    assert int((res.strata_ids >= 0).sum(dim=(1, 2))[0]) == 3
    assert res.top_ids.shape == (6, 3)


def test_sharded_merge_equals_single_pass(data, maps, tmp_path):
    _, _, ids = data
    for layer in LAYERS:
        single = feed(maps[layer], ids)
        full = torch.cat(maps[layer])  # (N, U, H, W)
        shard_states = []
        for n, shard in enumerate(split_shards(N_IMAGES, 13)):
            red = LayerReducer(k=K, sketch_size=R)
            for i in range(shard.start, shard.stop, 4):  # other batch sizes than the single pass
                j = min(i + 4, shard.stop)
                red.update(full[i:j], ids[i:j])
            path = tmp_path / f"{layer}-{n}.pt"
            torch.save(red.state_dict(), path)
            shard_states.append(torch.load(path, weights_only=True))
        shards = [LayerReducer.from_state_dict(s) for s in shard_states]
        merged = merge_reducers(shards[::-1])  # the order of shards must not matter
        assert single.state is not None
        assert merged.state is not None
        a, b = single.state.tensors(), merged.state.tensors()
        for name in a:
            if name in ("sum", "sumsq"):
                torch.testing.assert_close(a[name], b[name], rtol=1e-12, atol=1e-12)
            else:
                assert torch.equal(a[name], b[name]), name
        assert merged.count == N_IMAGES
        assert len(shards) == 4
        pairwise = shards[0].merge(shards[1]).merge(shards[2].merge(shards[3]))
        assert torch.equal(pairwise.finalize().top_ids, single.finalize().top_ids)


def test_merge_folds_one_shard_at_a_time(data, maps):
    _, _, ids = data
    full = torch.cat(maps["0"])  # (N, U, H, W)
    spans = split_shards(N_IMAGES, 6)
    alive: list[weakref.ref[LayerReducer]] = []

    def load(s: range) -> dict[str, LayerReducer]:
        red = LayerReducer(k=K, sketch_size=R)
        red.update(full[s.start : s.stop], ids[s.start : s.stop])
        return {"0": red}

    def loaded_one_by_one():  # type: ignore[no-untyped-def]
        for s in spans:
            # Every earlier shard is freed but the last one (still being folded in).
            assert sum(r() is not None for r in alive) <= 1
            shard = load(s)
            alive.append(weakref.ref(shard["0"]))
            yield shard

    streamed = merge_layer_states(loaded_one_by_one())["0"]
    at_once = merge_layer_states([load(s) for s in spans])["0"]
    assert len(alive) == len(spans) == 7
    assert streamed.state is not None and at_once.state is not None
    for name, t in at_once.state.tensors().items():
        assert torch.equal(streamed.state.tensors()[name], t), name
    assert torch.equal(streamed.finalize().top_ids, feed(maps["0"], ids).finalize().top_ids)


def test_state_size_does_not_grow_with_images(maps, data):
    _, _, ids = data
    red = LayerReducer(k=K, sketch_size=R)
    sizes = []
    for rep in range(3):
        for m, (_, b_ids) in zip(maps["0"], batches(torch.empty(N_IMAGES), ids), strict=True):
            red.update(m, b_ids + rep * 10_000)
        assert red.state is not None
        sizes.append(sum(t.numel() for t in red.state.tensors().values()))
    assert sizes[0] == sizes[1] == sizes[2]
    assert red.count == 3 * N_IMAGES


def test_split_shards_covers_items_once():
    shards = split_shards(10, 4)
    assert [list(s) for s in shards] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert split_shards(0, 4) == []
    with pytest.raises(ValueError, match="positive"):
        split_shards(5, 0)


def test_update_rejects_bad_input(maps, data):
    _, _, ids = data
    red = LayerReducer(k=K, sketch_size=R)
    with pytest.raises(ValueError, match="image ids"):
        red.update(maps["0"][0], ids[:3])
    with pytest.raises(ValueError, match="image ids must lie"):
        red.update(maps["0"][0], torch.full((BATCH,), -1))
    red.update(maps["0"][0], ids[:BATCH])
    with pytest.raises(ValueError, match="layer shape changed"):
        red.update(maps["3"][0], ids[:BATCH])


def test_miner_runs_all_layers_and_removes_hooks(data, maps):
    model, images, ids = data
    seen: list[int] = []
    reducers = Miner(LAYERS, k=K, sketch_size=R).run(
        model, batches(images, ids), progress=seen.append
    )
    assert seen == [7, 14, 21, 28, 35, 40]
    for layer in LAYERS:
        ref = feed(maps[layer], ids)
        assert ref.state is not None
        got = reducers[layer].state
        assert got is not None
        assert torch.equal(got.top_keys, ref.state.top_keys)
        assert torch.equal(got.top_pos, ref.state.top_pos)
    assert all(not m._forward_hooks for m in model.modules())


def test_miner_with_data_loader_and_layer_state_merge(data):
    model, images, ids = data
    id_list = ids.tolist()
    row = {int(i): n for n, i in enumerate(id_list)}
    loader = make_loader(id_list, lambda i: images[row[i]], batch_size=BATCH)
    whole = Miner(LAYERS, k=K, sketch_size=R).run(model, loader)
    halves = [
        Miner(LAYERS, k=K, sketch_size=R).run(
            model, make_loader(id_list[s.start : s.stop], lambda i: images[row[i]], BATCH)
        )
        for s in split_shards(N_IMAGES, 21)  # 21 = 3 batches, so batch boundaries agree
    ]
    merged = merge_layer_states(halves)
    for layer in LAYERS:
        assert torch.equal(merged[layer].finalize().top_ids, whole[layer].finalize().top_ids)


def test_miner_refuses_training_mode(data):
    model, images, ids = data
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            Miner(LAYERS).update(model, images[:2], ids[:2])
    finally:
        model.eval()


def test_miner_on_timm_model_matches_full_forward():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    layers = {"blocks.1": NCHW, "blocks.3": NCHW, "conv_head": NCHW}
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(12, 3, 64, 64, generator=gen)
    ids = torch.arange(100, 112)
    reducers = Miner(layers, k=3, sketch_size=8).run(model, batches(images, ids, 6))
    for path, layout in layers.items():
        full = []
        for x, _ in batches(images, ids, 6):
            with torch.inference_mode():
                full.append(to_unit_maps(run_to(model, x, [path])[path], layout))
        expected = brute_force(torch.cat(full), ids, 3)
        res = reducers[path].finalize()
        assert as_rows(res.top_ids, res.top_scores, res.top_y, res.top_x) == expected


def test_a_later_tie_with_a_smaller_id_enters_with_its_own_position():
    # k = 1, folded at every batch: after the first image the floor is its max (5.0); the
    # second ties it, wins on its smaller id, and must carry the position of its own max.
    red = LayerReducer(k=1, sketch_size=4)
    red.fold_images = 1
    first, second = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    first[0, 0, 0, 0] = 5.0
    second[0, 0, 1, 1] = 5.0
    second[0, 0, 0, 1] = -2.0  # and the most negative
    red.update(first, torch.tensor([9]))
    red.update(second, torch.tensor([3]))
    res = red.finalize()
    assert (int(res.top_ids[0, 0]), int(res.top_y[0, 0]), int(res.top_x[0, 0])) == (3, 1, 1)
    assert res.neg_ids is not None and res.neg_y is not None and res.neg_x is not None
    assert (int(res.neg_ids[0, 0]), int(res.neg_y[0, 0]), int(res.neg_x[0, 0])) == (3, 0, 1)
