"""Proof 7, hostile input: each gets a clear error or is escaped; nothing runs, nothing is lost.

Malicious and mismatched checkpoints, decompression bombs, huge, empty and non-image files,
path traversal in object keys and URLs, very long and non-ASCII names, and HTML/script in
labels and family names (RELIABILITY.md counts them)."""

from __future__ import annotations

import io
import os
import pickle
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from backend.db.models import Dataset, Job
from backend.db.session import session_scope
from tests.factories import make_layer, make_model
from workers.ml.images import BadImage, load_rgb
from workers.ml.models import BadCheckpoint, load_model, read_checkpoint
from workers.tasks.datasets import import_folder
from workers.tasks.jobrun import run_job


class _Evil:
    """Unpickling this runs a shell command (if the loader were to unpickle objects)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_checkpoint_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name in ("evil.pt", "evil.pth", "evil.ckpt", "evil.bin"):
        path = tmp_path / name
        with path.open("wb") as f:
            pickle.dump({"state_dict": _Evil(marker)}, f)
        with pytest.raises(BadCheckpoint, match="refused for safety|could not be read"):
            read_checkpoint(path)
        torch.save({"conv.weight": torch.zeros(1), "x": _Evil(marker)}, path)
        with pytest.raises(BadCheckpoint):
            read_checkpoint(path)
    assert not marker.exists()


def test_mismatched_and_garbage_checkpoints_are_refused_clearly(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.safetensors"
    save_file({"not.a.resnet.key": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(Exception, match="key|match|missing|unexpected") as e:
        load_model(f"timm:resnet18@{wrong}")
    assert "Traceback" not in str(e.value)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(BadCheckpoint):
        read_checkpoint(garbage)
    with pytest.raises(BadCheckpoint, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def _png_bomb(side: int) -> bytes:
    """A valid PNG header claiming side x side pixels, with a tiny compressed body."""
    img = Image.new("1", (side, side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _hostile_dataset(root: Path) -> dict[str, str | None]:
    """Files named for what each should become: None = imported, else the skip reason."""
    root.mkdir()
    expected: dict[str, str | None] = {}

    def put(name: str, data: bytes, reason: str | None) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        expected[name] = reason

    ok = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(ok, format="JPEG")
    put("ok.jpg", ok.getvalue(), None)
    put("ünïcødé-名前.jpg", ok.getvalue(), None)
    put(("x" * 200) + ".jpg", ok.getvalue(), None)
    put("empty.png", b"", "empty")
    put("text.jpg", b"just some words, not a picture", "not an image")
    put("html.png", b"<script>alert(1)</script>", "not an image")
    put("bomb.png", _png_bomb(20_000), "decompression bomb")
    put("truncated.jpg", ok.getvalue()[: len(ok.getvalue()) // 2], "truncated")
    put("zlib-bomb.gif", b"GIF89a" + zlib.compress(b"\x00" * 10_000_000), "not an image")
    put("huge.jpg", ok.getvalue() + b"\x00" * (2 * 2**20), "too large")
    return expected


def test_hostile_files_are_skipped_and_counted_by_reason(settings, tmp_path, monkeypatch) -> None:
    from backend.config import get_settings
    from backend.datasets.service import add_dataset

    monkeypatch.setenv("MICROSCOPE_MAX_IMAGE_MB", "1")
    get_settings.cache_clear()
    expected = _hostile_dataset(tmp_path / "hostile")
    for name, reason in expected.items():
        if reason not in (None, "too large"):
            with pytest.raises(BadImage) as e:
                load_rgb((tmp_path / "hostile" / name).read_bytes())
            assert e.value.reason == reason, name
    with session_scope(settings.database_url) as s:
        ds, job = add_dataset(s, str(tmp_path / "hostile"), "hostile")
        s.info.clear()
        ds_id, job_id = ds.id, job.id
    assert run_job(job_id, import_folder) == "succeeded"
    with session_scope(settings.database_url) as s:
        ds = s.get(Dataset, ds_id)
        assert ds.image_count == 3  # the three good ones, odd names and all
        assert ds.skipped_count == len(expected) - 3
        assert ds.skipped["too large"] == 1 and ds.skipped["empty"] == 1
        assert s.get(Job, job_id).state == "succeeded"


@pytest.mark.parametrize(
    "url",
    [
        "/objects/../../etc/passwd",
        "/objects/%2e%2e/%2e%2e/etc/passwd",
        "/objects/..%2f..%2fetc%2fpasswd",
        "/objects//etc/passwd",
        "/objects/models/%00/x",
        "/static/../backend/config.py",
        "/static/%2e%2e/backend/config.py",
    ],
)
def test_path_traversal_in_urls_finds_nothing(client, url: str) -> None:
    r = client.get(url)
    assert r.status_code in (400, 404), (url, r.status_code)
    assert "root:" not in r.text and "MICROSCOPE_" not in r.text


def test_long_and_non_ascii_names_get_clear_answers(client, admin, session) -> None:
    m = make_model(session, "tiny")
    make_layer(session, m, "blocks.1", units=2)
    session.commit()
    cases = [
        ("POST", "/api/v1/families", {"name": "x" * 5000}, 422),
        # A slug needs letters or digits: a name without any is told so; others keep theirs.
        ("POST", "/api/v1/families", {"name": "🧠🧠🧠"}, 422),
        ("POST", "/api/v1/families", {"name": "Ünïcødé 名前 V4 🧠"}, 201),
        ("POST", "/api/v1/models", {"spec": "timm:" + "x" * 5000}, 422),
        ("POST", "/api/v1/models", {"spec": "timm:résnet"}, 422),
        # Slugs are cut to the column's 128 characters instead of failing in the database.
        ("POST", "/api/v1/families", {"name": "long " * 40}, 201),
        ("POST", "/api/v1/models", {"spec": "timm:resnet18@" + "tag" * 300}, 202),
        ("POST", "/api/v1/datasets", {"path": "/" + "a" * 5000}, 422),
        ("PUT", "/api/v1/models/tiny/layers/blocks.1/units/0/label", {"label": "y" * 5000}, 422),
        ("PUT", "/api/v1/models/tiny/layers/blocks.1/units/0/label", {"label": "Ωmega ✓"}, 200),
    ]
    for method, url, body, status in cases:
        r = client.request(method, url, json=body, headers=admin)
        assert r.status_code == status, (url, body if len(str(body)) < 80 else "long", r.text)
    long_urls = ["/models/" + "é" * 3000, "/api/v1/models/" + "x" * 9000, "/search?q=" + "字" * 900]
    for url in long_urls:
        assert client.get(url).status_code in (404, 200, 414, 422), url


def test_html_in_labels_and_family_names_is_escaped(client, admin, session) -> None:
    m = make_model(session, "tiny")
    make_layer(session, m, "blocks.1", units=2)
    session.commit()
    script = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    r = client.put(
        "/api/v1/models/tiny/layers/blocks.1/units/0/label", json={"label": script}, headers=admin
    )
    assert r.status_code == 200
    r = client.post("/api/v1/families", json={"name": script, "description": script}, headers=admin)
    assert r.status_code == 201
    slug = r.json()["slug"]
    html = {"Accept": "text/html"}
    pages = ("/models/tiny/blocks.1/0", "/families", f"/families/{slug}", "/models/tiny/blocks.1")
    for url in pages:
        page = client.get(url, headers=html).text
        assert "<script>alert" not in page and "<img src=x" not in page, url
    assert "&lt;script&gt;" in client.get("/models/tiny/blocks.1/0", headers=html).text
