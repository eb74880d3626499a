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
