"""The unit maps kept while mining: exactly the maps of each unit's best examples, sharded or
not, so the example sheets need no second forward pass."""

from __future__ import annotations

import io

import pytest
import torch

from workers.ml.mining import LayerReducer, merge_reducers
from workers.ml.sheets import SHOWN, kept_unit_maps
from workers.ml.sources import split_shards

N, U, H, W = 40, 5, 4, 3
K, M = 6, 4


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    full = torch.randn(N, U, H, W, generator=g)  # (N, U, H, W) signed unit maps
    full[20:30] = full[0:10]  # tied scores: the id decides, maps included
    ids = torch.randperm(500, generator=g)[:N] * 7 + 3  # sparse, unordered
    return full, ids


def feed(
    full: torch.Tensor,
    ids: torch.Tensor,
    rows: range,
    step: int,
    fold: tuple[int, int] | None = None,
) -> LayerReducer:
    red = LayerReducer(k=K, sketch_size=8, maps=M)
    if fold is not None:
        red.fold_images, red.fold_bytes = fold
    for i in range(rows.start, rows.stop, step):
        j = min(i + step, rows.stop)
        red.update(full[i:j], ids[i:j])
    return red


def brute_force(full: torch.Tensor, ids: torch.Tensor, unit: int, negative: bool) -> list[int]:
    """Row indices of the unit's best M images, ties to the smaller id."""
    flat = full[:, unit].reshape(N, -1)
    score = flat.min(dim=1).values if negative else -flat.max(dim=1).values
    return sorted(range(N), key=lambda r: (float(score[r]), int(ids[r])))[:M]


# Folded once at the end, every 10 images, and at every batch (its maps over the byte bound).
@pytest.mark.parametrize("fold", [None, (10, 2**20), (256, 1)])
def test_kept_maps_are_the_maps_of_the_best_examples(data, fold) -> None:
    full, ids = data
    res = feed(full, ids, range(N), 7, fold).finalize()
    assert res.top_maps is not None and res.neg_maps is not None
    assert res.top_maps.shape == res.neg_maps.shape == (U, M, H, W)
    for u in range(U):
        for negative, got_ids, got_maps in (
            (False, res.top_ids, res.top_maps),
            (True, res.neg_ids, res.neg_maps),
        ):
            assert got_ids is not None
            rows = brute_force(full, ids, u, negative)
            assert got_ids[u, :M].tolist() == [int(ids[r]) for r in rows]
            assert torch.equal(got_maps[u], full[rows, u].half())


def test_sharded_merge_keeps_the_single_pass_maps(data) -> None:
    full, ids = data
    single = feed(full, ids, range(N), 7)
    shards = []
    for span in split_shards(N, 11):
        buf = io.BytesIO()  # through a saved state, as shard jobs hand them over
        torch.save(feed(full, ids, span, 3).state_dict(), buf)
        buf.seek(0)
        shards.append(LayerReducer.from_state_dict(torch.load(buf, weights_only=True)))
    merged = merge_reducers(shards[::-1])
    assert single.kept is not None and merged.kept is not None
    for name, t in single.kept.state_dict().items():
        assert torch.equal(merged.kept.state_dict()[name], t), name
    a, b = single.finalize(), merged.finalize()
    assert a.top_maps is not None and b.top_maps is not None
    assert torch.equal(a.top_maps, b.top_maps)


def test_maps_beyond_float16_are_clamped_not_infinite(data) -> None:
    full, ids = data
    loud = full.clone()
    loud[5, 2, 1, 1] = 1e9
    res = feed(loud, ids, range(N), 8).finalize()
    assert res.top_maps is not None
    assert int(res.top_ids[2, 0]) == int(ids[5])
    assert float(res.top_maps[2, 0, 1, 1]) == float(torch.finfo(torch.float16).max)
    assert bool(torch.isfinite(res.top_maps).all())


def test_never_negative_layers_keep_no_negative_maps(data) -> None:
    full, ids = data
    res = feed(full.relu(), ids, range(N), 8).finalize()
    assert res.neg_ids is None and res.neg_maps is None
    assert res.top_maps is not None


def test_maps_are_opt_in_and_bounded_by_k(data) -> None:
    full, ids = data
    plain = LayerReducer(k=K, sketch_size=8)
    plain.update(full, ids)
    res = plain.finalize()
    assert plain.kept is None and res.top_maps is None
    with pytest.raises(ValueError, match="without the maps"):
        kept_unit_maps({"layer": res}, [("layer", 0)])
    with pytest.raises(ValueError, match="maps"):
        LayerReducer(k=2, maps=3)
    with pytest.raises(ValueError, match="maps"):
        merge_reducers([plain, feed(full, ids, range(N), 8)])


def test_states_saved_before_kept_maps_still_load(data) -> None:
    full, ids = data
    old = LayerReducer(k=K, sketch_size=8)
    old.update(full, ids)
    st = old.state_dict()
    st["version"] = 1
    del st["maps"], st["kept"]
    loaded = LayerReducer.from_state_dict(st)
    assert loaded.maps == 0 and loaded.kept is None
    assert torch.equal(loaded.finalize().top_ids, old.finalize().top_ids)


def test_sheets_take_each_shown_examples_own_map(data) -> None:
    full, ids = data
    red = LayerReducer(k=SHOWN + 2, sketch_size=8, maps=SHOWN)
    for i in range(0, N, 5):
        red.update(full[i : i + 5], ids[i : i + 5])
    res = red.finalize()
    maps = kept_unit_maps({"layer": res}, [("layer", 1), ("layer", 3)])
    assert res.neg_ids is not None
    shown = {(u, int(i)) for u in (1, 3) for t in (res.top_ids, res.neg_ids) for i in t[u, :SHOWN]}
    assert {(u, i) for _, u, i in maps} == shown
    row = {int(i): r for r, i in enumerate(ids)}
    for (_, u, i), m in maps.items():
        assert torch.equal(m, full[row[i], u].half())
