from __future__ import annotations

import os
from email.utils import format_datetime
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from backend.config import Settings
from backend.storage import InvalidKey, NotFound, artifact_key, make_store, params_hash
from backend.storage.local import LocalStore
from tests.seaweedfs import S3Server


@pytest.mark.parametrize(
    "key", ["../etc/passwd", "/abs/key", "a/../../b", "a//b", "a/./b", "a\\b", "", "a/b/", "a\x00b"]
)
def test_keys_never_escape_the_root(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "root")
    with pytest.raises(InvalidKey):
        store.put(key, b"x")
    assert not (tmp_path / "etc").exists()


def test_symlink_out_of_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = LocalStore(root)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "link")
    with pytest.raises(InvalidKey):
        store.put("link/file.txt", b"x")
    assert list((tmp_path / "outside").iterdir()) == []


def test_local_put_is_whole_and_listed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    key = artifact_key("m", "blocks.1", 3, "featvis", params_hash({"a": 1}), "webp")
    store.put(key, b"hello")
    store.put(key, b"hello again")  # overwrite publishes whole too
    assert store.get(key) == b"hello again"
    assert store.stat(key).size == 11
    assert store.list("m/") == [key]
    # no temporary files are left behind
    assert [p.name for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")] == []
    store.delete(key)
    with pytest.raises(NotFound):
        store.get(key)


def test_artifact_keys_are_derived_and_safe() -> None:
    ph = params_hash({"steps": 512, "objective": "channel"})
    assert ph == params_hash({"objective": "channel", "steps": 512})  # order-free
    key = artifact_key("clip-rn50", "visual/layer4.2", 7, "featvis", ph, "webp")
    assert key == f"clip-rn50/visual_layer4.2/7/featvis-{ph}.webp"
    assert artifact_key("m", "..", 1, "x", ph, "json").split("/")[1] == "__"


def test_s3_backend_against_a_real_s3_server(s3_server: S3Server, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        storage_url="s3://microscope-test/prefix",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
    )
    store = make_store(settings)
    key = artifact_key("m", "layer", 0, "featvis", "abc", "webp")
    assert not store.exists(key)
    store.put(key, b"\x00\x01payload", "image/webp")
    assert store.get(key) == b"\x00\x01payload"
    info = store.stat(key)
    assert info.size == 9 and info.etag
    # An HTTP date (Last-Modified on /objects/...) needs datetime.UTC, not botocore's tzutc.
    assert format_datetime(info.last_modified, usegmt=True).endswith(" GMT")
    assert store.list("m/") == [key]
    store.delete(key)
    with pytest.raises(NotFound):
        store.get(key)
    with pytest.raises(InvalidKey):
        store.put("../escape", b"x")


def test_s3_prefixes_share_a_bucket_and_credentials_are_checked(
    s3_server: S3Server, tmp_path: Path
) -> None:
    def store(prefix: str, secret: str):  # type: ignore[no-untyped-def]
        return make_store(
            Settings(
                data_dir=tmp_path,
                storage_url=f"s3://microscope-shared/{prefix}",
                s3_endpoint_url=s3_server.endpoint_url,
                s3_access_key=s3_server.access_key,
                s3_secret_key=secret,
            )
        )

    a, b = store("a", s3_server.secret_key), store("b", s3_server.secret_key)
    a.put("m/x.json", b"a")
    b.put("m/x.json", b"b")
    assert (a.get("m/x.json"), b.get("m/x.json")) == (b"a", b"b")
    assert a.list() == ["m/x.json"] and b.list("m/") == ["m/x.json"]
    with pytest.raises(ClientError, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        store("a", "not-the-secret").get("m/x.json")
