"""Seed a microscope database with many units and artifacts, fast, for the server benchmark.

One model ("bench") with layers of ``units_per_layer`` units each. Every unit gets the first
``artifacts_per_unit`` kinds of a realistic artifact set (filler); a sample of "hot" units, the
ones the benchmark requests, gets the whole set (12 artifacts). Rows are generated inside the
database (SQLite: a recursive CTE; PostgreSQL: generate_series), never row by row in Python.

    .venv/bin/python benchmarks/seed.py --units 1000000 --url sqlite:////tmp/bench.sqlite
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from dataclasses import dataclass, field

from sqlalchemy import Connection, create_engine, text

from backend.db.migrate import upgrade

SLUG = "bench"
TS = "2026-01-01 00:00:00.000000"
# (kind, variant, ext, content type): one unit's artifacts, in the order filler takes them.
ARTIFACT_SET = [
    ("featvis", "channel", "webp", "image/webp"),
    ("example_crop", "thumb", "webp", "image/webp"),
    ("dataset_examples", "index", "json", "application/json"),
    ("histogram", "max", "json", "application/json"),
    ("featvis", "neuron", "webp", "image/webp"),
    ("featvis", "negative", "webp", "image/webp"),
    ("featvis", "diversity", "webp", "image/webp"),
    ("example_crop", "top", "webp", "image/webp"),
    ("example_crop", "negative", "webp", "image/webp"),
    ("example_heatmap", "top", "webp", "image/webp"),
    ("example_heatmap", "negative", "webp", "image/webp"),
    ("weights_nmf", "rgb", "png", "image/png"),
]


def _phash(kind: str, variant: str) -> str:
    # Params hashes depend on the parameters only, so every unit shares them per variant.
    return hashlib.sha256(f"{kind}/{variant}/bench".encode()).hexdigest()[:16]


def _provenance(kind: str, variant: str) -> str:
    return json.dumps(
        {
            "model_checksum": "9f" * 16,
            "params": {"objective": variant, "steps": 512, "size": 128, "kind": kind},
            "code_version": "bench-0.1",
        }
    )


@dataclass
class SeedInfo:
    """What was seeded: enough for the benchmark to build its URL lists."""

    url: str
    slug: str
    units: int
    layers: list[str]
    units_per_layer: int
    artifacts: int
    hot: list[tuple[str, int]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _layer_name(i: int) -> str:
    return f"blocks.{i // 4}.{i % 4}.conv_pwl"


def _insert_model_layers(conn: Connection, n_layers: int, upl: int, pg: bool) -> int:
    true = "true" if pg else "1"
    mid = conn.execute(
        text(
            "INSERT INTO models (slug, spec, source, name, weights, pretrained, family, "
            "input_size, state, created_at, updated_at) VALUES (:s, 'timm:bench', 'timm', "
            f"'bench', NULL, {true}, 'convnet', 224, 'ready', :ts, :ts) RETURNING id"
        ),
        {"s": SLUG, "ts": TS},
    ).scalar_one()
    conn.execute(
        text(
            "INSERT INTO layers (model_id, name, module_path, kind, unit_count, output_shape, "
            "layout, \"order\", is_default) VALUES (:m, :n, :n, 'stage', :u, :shape, :layout, "
            f":o, {true})"
        ),
        [
            {
                "m": mid,
                "n": _layer_name(i),
                "u": upl,
                "shape": json.dumps([upl, 14, 14]),
                "layout": json.dumps({"kind": "nchw", "prefix_tokens": 0}),
                "o": i,
            }
            for i in range(n_layers)
        ],
    )
    return int(mid)


def _kinds_rows(first: int, last: int) -> list[dict[str, object]]:
    return [
        {
            "o": o,
            "kind": k,
            "variant": v,
            "ext": e,
            "ctype": c,
            "ph": _phash(k, v),
            "prov": _provenance(k, v),
        }
        for o, (k, v, e, c) in enumerate(ARTIFACT_SET)
        if first <= o < last
    ]


def seed(
    url: str,
    units: int,
    *,
    units_per_layer: int = 1000,
    artifacts_per_unit: int = 4,
    hot_units: int = 2000,
    seed_value: int = 0,
) -> SeedInfo:
    """Create the schema at ``url`` (empty database) and fill it; returns what it made."""
    pg = url.startswith("postgresql")
    upl = min(units_per_layer, units)
    n_layers = max(1, units // upl)
    total = n_layers * upl
    k = max(0, min(artifacts_per_unit, len(ARTIFACT_SET)))
    secs: dict[str, float] = {}

    t = time.perf_counter()
    upgrade(url)
    secs["migrate"] = time.perf_counter() - t

    engine = create_engine(url)
    t = time.perf_counter()
    with engine.begin() as conn:
        if not pg:
            # Seeding only: durability does not matter, a big page cache does.
            conn.exec_driver_sql("PRAGMA synchronous=OFF")
            conn.exec_driver_sql("PRAGMA cache_size=-524288")
            conn.exec_driver_sql("PRAGMA temp_store=MEMORY")
        mid = _insert_model_layers(conn, n_layers, upl, pg)
        label = "CASE WHEN {i} % 5 = 0 THEN 'label ' || {i} END"
        if pg:
            conn.execute(
                text(
                    'INSERT INTO units (layer_id, "index", label, label_source) '
                    f"SELECT l.id, i, {label.format(i='i')}, "
                    "CASE WHEN i % 5 = 0 THEN 'auto' END "
                    "FROM layers l CROSS JOIN generate_series(0, :n - 1) AS i "
                    "WHERE l.model_id = :m ORDER BY l.id, i"
                ),
                {"n": upl, "m": mid},
            )
        else:
            # CROSS JOIN fixes the loop order in SQLite: rows arrive in index order.
            conn.execute(
                text(
                    "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c "
                    "WHERE i + 1 < :n) "
                    'INSERT INTO units (layer_id, "index", label, label_source) '
                    f"SELECT l.id, c.i, {label.format(i='c.i')}, "
                    "CASE WHEN c.i % 5 = 0 THEN 'auto' END "
                    "FROM layers l CROSS JOIN c WHERE l.model_id = :m"
                ),
                {"n": upl, "m": mid},
            )
    secs["units"] = time.perf_counter() - t

    layer_ids = _layer_ids(engine, mid)
    t = time.perf_counter()
    with engine.begin() as conn:
        if not pg:
            conn.exec_driver_sql("PRAGMA synchronous=OFF")
            conn.exec_driver_sql("PRAGMA cache_size=-524288")
        _make_kinds(conn, pg, _kinds_rows(0, k))
        if k:
            _filler(conn, pg, mid, layer_ids)
    secs["filler_artifacts"] = time.perf_counter() - t

    rng = random.Random(seed_value)
    picks = sorted(rng.sample(range(total), min(hot_units, total)))
    hot = [(_layer_name(g // upl), g % upl) for g in picks]
    t = time.perf_counter()
    rows = []
    for g in picks:
        lname, idx = _layer_name(g // upl), g % upl
        for kind, variant, ext, ctype in ARTIFACT_SET[k:]:
            ph = _phash(kind, variant)
            rows.append(
                {
                    "kind": kind,
                    "m": mid,
                    "l": layer_ids[lname],
                    "u": idx,
                    "v": variant,
                    "ph": ph,
                    "key": f"{SLUG}/{lname}/{idx}/{kind}-{ph}.{ext}",
                    "ct": ctype,
                    "prov": _provenance(kind, variant),
                    "ts": TS,
                }
            )
    if rows:
        cast = "CAST(:prov AS JSONB)" if pg else ":prov"
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO artifacts (kind, model_id, layer_id, unit_index, variant, "
                    "params_hash, storage_key, content_type, meta, provenance, created_at) "
                    f"VALUES (:kind, :m, :l, :u, :v, :ph, :key, :ct, NULL, {cast}, :ts)"
                ),
                rows,
            )
    secs["hot_artifacts"] = time.perf_counter() - t

    t = time.perf_counter()
    if pg:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE units")
            conn.exec_driver_sql("VACUUM ANALYZE artifacts")
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    secs["finish"] = time.perf_counter() - t
    with engine.connect() as conn:
        n_art = conn.execute(text("SELECT count(*) FROM artifacts")).scalar_one()
    engine.dispose()
    return SeedInfo(
        url=url,
        slug=SLUG,
        units=total,
        layers=[_layer_name(i) for i in range(n_layers)],
        units_per_layer=upl,
        artifacts=int(n_art),
        hot=hot,
        seconds=secs,
    )


def _layer_ids(engine, model_id: int) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT name, id FROM layers WHERE model_id = :m"), {"m": model_id}
        ).all()
    return {n: int(i) for n, i in rows}


def _make_kinds(conn: Connection, pg: bool, kinds: list[dict[str, object]]) -> None:
    conn.exec_driver_sql(
        "CREATE TEMP TABLE bench_kinds (o INTEGER, kind TEXT, variant TEXT, ext TEXT, "
        "ctype TEXT, ph TEXT, prov TEXT)"
    )
    if kinds:
        conn.execute(
            text("INSERT INTO bench_kinds VALUES (:o, :kind, :variant, :ext, :ctype, :ph, :prov)"),
            kinds,
        )


def _filler(conn: Connection, pg: bool, model_id: int, layer_ids: dict[str, int]) -> None:
    key = (
        f"'{SLUG}/' || l.name || '/' || u.\"index\" || '/' || k.kind || '-' || k.ph || '.' || k.ext"
    )
    prov = "CAST(k.prov AS JSONB)" if pg else "k.prov"
    if pg:
        conn.execute(
            text(
                "INSERT INTO artifacts (kind, model_id, layer_id, unit_index, variant, "
                "params_hash, storage_key, content_type, meta, provenance, created_at) "
                f'SELECT k.kind, :m, u.layer_id, u."index", k.variant, k.ph, {key}, k.ctype, '
                f"NULL, {prov}, :ts FROM units u JOIN layers l ON l.id = u.layer_id "
                "CROSS JOIN bench_kinds k WHERE l.model_id = :m "
                'ORDER BY u.layer_id, u."index", k.kind, k.ph'
            ),
            {"m": model_id, "ts": TS},
        )
        return
    # Per layer, units outer and kinds inner, so both artifact indexes grow by appending.
    stmt = text(
        "INSERT INTO artifacts (kind, model_id, layer_id, unit_index, variant, "
        "params_hash, storage_key, content_type, meta, provenance, created_at) "
        f'SELECT k.kind, :m, u.layer_id, u."index", k.variant, k.ph, {key}, k.ctype, '
        f"NULL, {prov}, :ts FROM (SELECT id AS lid, name FROM layers WHERE id = :l) AS l "
        "CROSS JOIN units u CROSS JOIN (SELECT * FROM bench_kinds ORDER BY kind, ph) AS k "
        "WHERE u.layer_id = l.lid"
    )
    for lid in sorted(layer_ids.values()):
        conn.execute(stmt, {"m": model_id, "ts": TS, "l": lid})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="empty database URL (sqlite:///... or postgres)")
    p.add_argument("--units", type=int, default=1000)
    p.add_argument("--units-per-layer", type=int, default=1000)
    p.add_argument("--artifacts-per-unit", type=int, default=4)
    p.add_argument("--hot-units", type=int, default=2000)
    a = p.parse_args()
    t = time.perf_counter()
    info = seed(
        a.url,
        a.units,
        units_per_layer=a.units_per_layer,
        artifacts_per_unit=a.artifacts_per_unit,
        hot_units=a.hot_units,
    )
    wall = time.perf_counter() - t
    print(
        json.dumps(
            {
                "bench": "seed",
                "units": info.units,
                "layers": len(info.layers),
                "artifacts": info.artifacts,
                "seconds": round(wall, 2),
                "steps": {k: round(v, 2) for k, v in info.seconds.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
