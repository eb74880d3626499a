"""The catalog's queries that several pages share."""

from __future__ import annotations

from backend.catalog.repository import CatalogRepository
from backend.storage import make_store
from tests.factories import make_artifact, make_layer, make_model


def test_a_unit_is_pictured_by_its_render_else_its_top_example(session, settings) -> None:
    store = make_store(settings)
    m = make_model(session)
    layer = make_layer(session, m, "blocks.1", units=4)
    crop0 = make_artifact(
        session, store, m, layer, 0, kind="example_crop", ext="jpg", variant="thumb"
    )
    render0 = make_artifact(session, store, m, layer, 0)  # unit 0 has both: its render wins
    crop2 = make_artifact(
        session, store, m, layer, 2, kind="example_crop", ext="jpg", variant="thumb"
    )
    make_artifact(session, store, m, layer, 3, kind="featvis", variant="negative")  # not one
    repo = CatalogRepository(session)

    keys = repo.unit_thumbnail_keys({(layer.id, 0), (layer.id, 2), (layer.id, 3)})

    assert keys == {(layer.id, 0): render0.storage_key, (layer.id, 2): crop2.storage_key}
    assert crop0.storage_key not in keys.values()
    # The model's preview: the same pictures of the first units, in unit order.
    assert repo.preview_keys(m.id, n=3) == [render0.storage_key, crop2.storage_key]


def test_the_unit_page_lookups_equal_the_step_by_step_ones(session, settings) -> None:
    store = make_store(settings)
    m = make_model(session)
    layer = make_layer(session, m, "blocks.1", units=4)
    other = make_layer(session, m, "blocks.2", units=4)
    for kind, variant in (("featvis", "negative"), ("featvis", "channel"), ("example_crop", "top")):
        make_artifact(session, store, m, layer, 2, kind=kind, variant=variant)
    make_artifact(session, store, m, layer, 1)  # another unit's
    make_artifact(session, store, m, other, 2)  # another layer's
    make_artifact(session, store, m, layer, None, kind="weights_svd", variant="")
    make_artifact(session, store, m, layer, None, kind="weights_nmf", variant="basis")
    make_artifact(session, store, m, layer, None, kind="search_index", variant="")  # not shown
    repo = CatalogRepository(session)
    kinds = ("weights_nmf", "weights_svd")

    found = repo.find_unit("tiny", "blocks.1", 2)
    assert found is not None and [x.id for x in found[:2]] == [m.id, layer.id]
    assert (found[2].layer_id, found[2].index) == (layer.id, 2)
    for missing in (("nope", "blocks.1", 2), ("tiny", "nope", 2), ("tiny", "blocks.1", 4)):
        assert repo.find_unit(*missing) is None
    assert repo.find_unit("tiny", "blocks.1", 2**40) is None  # past an integer column

    both = repo.unit_and_layer_artifacts(layer.id, 2, kinds)
    expected = [*repo.unit_artifacts(layer.id, 2), *repo.layer_artifacts(layer.id, kinds)]
    assert [a.id for a in both] == [a.id for a in expected] and len(both) == 5
