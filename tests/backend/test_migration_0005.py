"""Revision 0005: renders made as "channel" before it (the top-16 objective) are renamed."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from backend.db.migrate import downgrade, upgrade
from backend.db.session import get_engine
from backend.jobs.service import dedupe_key


@pytest.mark.once
def test_old_channel_renders_become_channel_top16(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'm.sqlite'}"
    upgrade(url, "0002")
    params = {"model_id": 1, "layer_id": 1, "units": [0, 4], "objective": "channel", "steps": 8}
    with get_engine(url).begin() as conn:
        conn.execute(
            text(
                "INSERT INTO models (id, slug, spec, source, name, pretrained, state, created_at,"
                " updated_at) VALUES (1, 'm', 'timm:x', 'timm', 'x', 0, 'ready', '2026-01-01',"
                " '2026-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO jobs (id, kind, dedupe_key, params, queue, priority, state,"
                " progress_done, progress_total, attempts, created_at, updated_at) VALUES"
                " (1, 'featvis', :k, :p, 'gpu', 3, 'succeeded', 0, 0, 1, '2026-01-01',"
                " '2026-01-01')"
            ),
            {"k": dedupe_key("featvis", params), "p": json.dumps(params)},
        )
        conn.execute(
            text(
                "INSERT INTO artifacts (id, kind, model_id, variant, params_hash, storage_key,"
                " content_type, provenance, created_at) VALUES (1, 'featvis', 1, 'channel',"
                " 'h', 'k', 'image/webp', '{}', '2026-01-01')"
            )
        )
    upgrade(url)
    with get_engine(url).connect() as conn:
        assert conn.scalar(text("SELECT variant FROM artifacts")) == "channel_top16"
        key, stored = conn.execute(text("SELECT dedupe_key, params FROM jobs")).one()
        renamed = {**params, "objective": "channel_top16"}
        assert json.loads(stored) == renamed and key == dedupe_key("featvis", renamed)
        assert conn.scalar(text("SELECT label_scores FROM units")) is None  # the column exists
    downgrade(url, "0002")
    with get_engine(url).connect() as conn:
        assert conn.scalar(text("SELECT variant FROM artifacts")) == "channel"
        assert conn.scalar(text("SELECT dedupe_key FROM jobs")) == dedupe_key("featvis", params)
