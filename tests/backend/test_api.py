from __future__ import annotations

from backend.storage import make_store
from tests.factories import make_artifact, make_layer, make_model


def test_empty_catalog(client) -> None:
    r = client.get("/api/v1/models")
    assert r.status_code == 200
    assert r.json() == []


def test_unknown_model_layer_unit_give_json_404(client, session) -> None:
    m = make_model(session, "tiny")
    make_layer(session, m, "blocks.1", units=4)
    session.commit()
    for url, what in [
        ("/api/v1/models/nope", "model"),
        ("/api/v1/models/tiny/layers/nope", "layer"),
        ("/api/v1/models/tiny/layers/blocks.1/units/4", "unit"),
        ("/api/v1/models/nope/layers/blocks.1/units/0", "model"),
    ]:
        r = client.get(url)
        assert r.status_code == 404, url
        body = r.json()
        assert body["error"] == "not_found" and what in body["detail"] and body["status"] == 404


def test_writes_need_the_admin_token(client, admin) -> None:
    r = client.post("/api/v1/models", json={"spec": "timm:resnet18"})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = client.post(
        "/api/v1/models", json={"spec": "timm:resnet18"}, headers={"Authorization": "Bearer no"}
    )
    assert r.status_code == 401
    r = client.post("/api/v1/models", json={"spec": "timm:resnet18"}, headers=admin)
    assert r.status_code == 202
    body = r.json()
    assert body["model"]["slug"] == "resnet18-random"
    assert body["model"]["pretrained"] is False
    assert body["job"]["kind"] == "register_model" and body["job"]["state"] == "queued"
    # the same request is idempotent: same job
    again = client.post("/api/v1/models", json={"spec": "timm:resnet18"}, headers=admin).json()
    assert again["job"]["id"] == body["job"]["id"]
    # Weight views need no images: they are queued with the registration, once.
    jobs = client.get("/api/v1/jobs").json()["items"]
    assert sorted(j["kind"] for j in jobs) == ["register_model", "weight_views"]


def test_malformed_requests_are_422(client, admin) -> None:
    r = client.post("/api/v1/models", json={"spec": "nonsense"}, headers=admin)
    assert r.status_code == 422 and "SOURCE:NAME" in r.json()["detail"]
    r = client.post("/api/v1/models", json={"wrong": 1}, headers=admin)
    assert r.status_code == 422 and r.json()["error"] == "invalid_input"
    r = client.get("/api/v1/models/x/layers/y/units?limit=0")
    assert r.status_code == 422


def test_unit_json_lists_artifacts_with_kind_and_url(client, session, settings) -> None:
    m = make_model(session, "tiny")
    layer = make_layer(session, m, "blocks.1", units=4)
    a = make_artifact(session, make_store(settings), m, layer, 2, data=b"imagebytes")
    session.commit()
    r = client.get("/api/v1/models/tiny/layers/blocks.1/units/2")
    assert r.status_code == 200
    u = r.json()
    assert (u["model"], u["layer"], u["index"]) == ("tiny", "blocks.1", 2)
    assert u["url"] == "/models/tiny/blocks.1/2"
    assert u["prev_url"] == "/models/tiny/blocks.1/1" and u["next_url"] == "/models/tiny/blocks.1/3"
    assert [(x["kind"], x["url"]) for x in u["artifacts"]] == [
        ("featvis", f"/objects/{a.storage_key}")
    ]
    obj = client.get(u["artifacts"][0]["url"])
    assert obj.status_code == 200 and obj.content == b"imagebytes"
    assert "immutable" in obj.headers["cache-control"]
    again = client.get(u["artifacts"][0]["url"], headers={"If-None-Match": obj.headers["etag"]})
    assert again.status_code == 304


def test_layers_and_unit_pages_paginate(client, session) -> None:
    m = make_model(session, "tiny")
    make_layer(session, m, "stem", units=3, order=0)
    make_layer(session, m, "blocks.1", units=250, order=1)
    session.commit()
    layers = client.get("/api/v1/models/tiny/layers").json()
    assert [x["name"] for x in layers] == ["stem", "blocks.1"]
    model = client.get("/api/v1/models/tiny").json()
    assert model["layer_count"] == 2 and model["unit_count"] == 253
    page = client.get("/api/v1/models/tiny/layers/blocks.1/units?offset=200&limit=30").json()
    assert page["total"] == 250
    assert [u["index"] for u in page["items"]] == list(range(200, 230))
    assert page["next"].endswith("offset=230&limit=30")
    last = client.get("/api/v1/models/tiny/layers/blocks.1/units?offset=240&limit=30").json()
    assert len(last["items"]) == 10 and last["next"] is None


def test_layer_names_with_slashes_resolve(client, session) -> None:
    m = make_model(session, "tiny")
    make_layer(session, m, "visual/layer4.2", units=2)
    session.commit()
    r = client.get("/api/v1/models/tiny/layers/visual/layer4.2/units/1")
    assert r.status_code == 200 and r.json()["layer"] == "visual/layer4.2"
    assert client.get("/models/tiny/visual/layer4.2/1").status_code == 200


def test_openapi_documents_the_api(client) -> None:
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    for p in [
        "/api/v1/models",
        "/api/v1/models/{model}/layers",
        "/api/v1/models/{model}/layers/{layer}/units/{unit}",
        "/api/v1/jobs",
        "/api/v1/datasets",
    ]:
        assert p in paths, p
    assert client.get("/docs").status_code == 200


def test_cors_allows_reads(client) -> None:
    r = client.get("/api/v1/models", headers={"Origin": "https://example.org"})
    assert r.headers["access-control-allow-origin"] in ("*", "https://example.org")


def test_pages_and_json_carry_etags_and_answer_304(client, session) -> None:
    m = make_model(session, "tiny")
    make_layer(session, m, "blocks.1", units=4)
    session.commit()
    for url, headers in [
        ("/api/v1/models/tiny/layers/blocks.1/units/1", {}),
        ("/models/tiny/blocks.1/1", {"Accept": "text/html"}),
        ("/models/tiny/blocks.1", {"Accept": "text/html"}),
    ]:
        first = client.get(url, headers=headers)
        etag = first.headers["etag"]
        assert first.status_code == 200 and etag.startswith('W/"')
        again = client.get(url, headers={**headers, "If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        other = client.get(url, headers={**headers, "If-None-Match": 'W/"stale"'})
        assert other.status_code == 200
    static = client.get("/static/microscope.css")
    assert static.headers.get("etag") and static.headers.get("last-modified")
    assert (
        client.get(
            "/static/microscope.css", headers={"If-None-Match": static.headers["etag"]}
        ).status_code
        == 304
    )


def test_mining_requests_are_checked_before_any_work(client, session, admin) -> None:
    from backend.db.models import Dataset

    m = make_model(session, "tiny")
    make_layer(session, m, "blocks.1", units=4)
    session.add(Dataset(slug="empty", source="/nowhere", state="ready", image_count=0))
    session.add(Dataset(slug="photos", source="/photos", state="ready", image_count=10))
    session.commit()
    url = "/api/v1/models/tiny/examples"
    assert client.post(url, json={"dataset": "photos"}).status_code == 401
    r = client.post(url, json={"dataset": "photos", "layers": ["blocks.1", "nope"]}, headers=admin)
    assert r.status_code == 422 and "nope" in r.json()["detail"]
    r = client.post(url, json={"dataset": "empty"}, headers=admin)
    assert r.status_code == 422 and "no readable images" in r.json()["detail"]
    assert client.post(url, json={"dataset": "missing"}, headers=admin).status_code == 404
    r = client.post(url, json={"dataset": "photos", "layers": ["blocks.1"]}, headers=admin)
    assert r.status_code == 202
    job = r.json()
    assert job["kind"] == "mine_examples" and job["params"]["layers"] == ["blocks.1"]
    # Text views: the same checks, and the job waits for the examples rather than refusing.
    text = "/api/v1/models/tiny/text"
    assert client.post(text, json={"dataset": "photos"}).status_code == 401
    r = client.post(text, json={"dataset": "empty"}, headers=admin)
    assert r.status_code == 422 and "no readable images" in r.json()["detail"]
    assert client.post(text, json={"dataset": "missing"}, headers=admin).status_code == 404
    assert client.post(text, json={"climb_units": 2}, headers=admin).status_code == 422
    r = client.post(text, json={"dataset": "photos", "climb_units": 0}, headers=admin)
    assert r.status_code == 202
    job = r.json()
    assert job["kind"] == "text_views" and job["params"]["climb_units"] == 0
