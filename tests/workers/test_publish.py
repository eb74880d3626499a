"""Publishing artifacts: rows for many units in one go, and puts behind the drawing."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from backend.db.models import Artifact, Layer, Model
from backend.storage import InvalidKey
from backend.storage.local import LocalStore
from workers.tasks.artifacts import Stored, WriteBehind, record_units, store_artifact


def test_write_behind_puts_and_reports_the_first_failure(tmp_path) -> None:
    store = LocalStore(tmp_path)
    writes = WriteBehind(store, threads=2)
    try:
        for i in range(20):
            writes.put(f"a/{i}.bin", bytes([i]) * 100)
        writes.drain()
        assert [store.get(f"a/{i}.bin")[:1] for i in range(20)] == [bytes([i]) for i in range(20)]
        writes.put("../outside", b"x")
        writes.put("b/fine.bin", b"y")
        with pytest.raises(InvalidKey):
            writes.drain()
        writes.drain()  # a failure is reported once
        assert store.get("b/fine.bin") == b"y"
    finally:
        writes.close()


def _stored(store: LocalStore, unit: int | None, kind: str, params: dict, data: bytes) -> Stored:
    return store_artifact(
        store,
        model_slug="m",
        layer_name="l" if unit is not None else None,
        unit=unit,
        kind=kind,
        variant="",
        params=params,
        data=data,
        ext="bin",
        content_type="application/octet-stream",
    )


def test_record_units_replaces_same_params_and_replaced_kinds_only(session, tmp_path) -> None:
    store = LocalStore(tmp_path)
    model = Model(slug="m", spec="x", source="timm", name="m", weights_checksum="c")
    session.add(model)
    session.flush()
    layer = Layer(
        model_id=model.id, name="l", module_path="l", kind="conv", unit_count=4,
        output_shape=[4], layout={"kind": "nchw"}, order=0,
    )  # fmt: skip
    session.add(layer)
    session.flush()

    def rows() -> set[tuple[int | None, str, str]]:
        q = select(Artifact.unit_index, Artifact.kind, Artifact.storage_key)
        return set(session.execute(q).tuples())

    first = {
        u: [
            _stored(store, u, "dataset_examples", {"v": 1}, b"a"),
            _stored(store, u, "neuron_card", {"shows": u}, b"c"),
        ]
        for u in range(3)
    }
    record_units(session, model=model, layer=layer, stored=first, replace_kinds=["neuron_card"])
    record_units(
        session,
        model=model,
        layer=None,
        stored={None: [_stored(store, None, "search_index", {}, b"w")]},
    )
    assert len(rows()) == 7
    # Units 0 and 1 again: same examples params (replaced), a new card (replaces the old one);
    # unit 0 also gains another version of its examples; unit 2 and the model row stay.
    again = {
        0: [
            _stored(store, 0, "dataset_examples", {"v": 1}, b"a2"),
            _stored(store, 0, "dataset_examples", {"v": 2}, b"b"),
            _stored(store, 0, "neuron_card", {"shows": "new"}, b"n"),
        ],
        1: [_stored(store, 1, "neuron_card", {"shows": "new"}, b"n")],
    }
    record_units(session, model=model, layer=layer, stored=again, replace_kinds=["neuron_card"])
    got = rows()
    cards = {(u, key) for u, kind, key in got if kind == "neuron_card"}
    assert cards == {(u, s[-1].key) for u, s in again.items()} | {(2, first[2][1].key)}
    examples = sorted((u, key) for u, kind, key in got if kind == "dataset_examples")
    expected = [(0, again[0][0].key), (0, again[0][1].key), (1, first[1][0].key)]
    expected.append((2, first[2][0].key))
    assert examples == sorted(expected)
    assert (None, "search_index") in {(u, kind) for u, kind, _ in got}
    assert len(got) == 8
