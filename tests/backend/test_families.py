from __future__ import annotations

from bs4 import BeautifulSoup

from backend.storage import make_store
from tests.factories import make_artifact, make_layer, make_model


def seed(session, settings):  # type: ignore[no-untyped-def]
    m = make_model(session, "tiny")
    layer = make_layer(session, m, "blocks.1", units=6)
    make_artifact(session, make_store(settings), m, layer, 4)
    session.commit()


def test_families_are_created_and_edited_with_the_token(client, session, settings, admin) -> None:
    seed(session, settings)
    body = {
        "name": "Stripes & grids",
        "description": "periodic patterns",
        "members": [{"model": "tiny", "layer": "blocks.1", "unit": 4, "note": "zebra"}],
    }
    assert client.post("/api/v1/families", json=body).status_code == 401
    r = client.post("/api/v1/families", json=body, headers=admin)
    assert r.status_code == 201
    fam = r.json()
    assert fam["slug"] == "stripes-grids" and fam["size"] == 1
    card = fam["members"][0]
    assert (
        card["url"] == "/models/tiny/blocks.1/4" and card["thumbnail"] and card["note"] == "zebra"
    )

    add = {"model": "tiny", "layer": "blocks.1", "unit": 2}
    r = client.post("/api/v1/families/stripes-grids/members", json=add, headers=admin)
    assert [c["unit"] for c in r.json()["members"]] == [4, 2]
    bad = {"model": "tiny", "layer": "blocks.1", "unit": 99}
    r = client.post("/api/v1/families/stripes-grids/members", json=bad, headers=admin)
    assert r.status_code == 404
    r = client.request("DELETE", "/api/v1/families/stripes-grids/members", json=add, headers=admin)
    assert [c["unit"] for c in r.json()["members"]] == [4]
    assert client.post("/api/v1/families", json=body, headers=admin).status_code == 422

    page = BeautifulSoup(
        client.get("/families/stripes-grids", headers={"Accept": "text/html"}).text, "html.parser"
    )
    assert page.h1.text == "Stripes & grids"
    assert [a["href"] for a in page.select(".neuron-card a")] == ["/models/tiny/blocks.1/4"]
    unit = client.get("/models/tiny/blocks.1/4", headers={"Accept": "text/html"}).text
    assert 'href="/families/stripes-grids"' in unit
    index = client.get("/families", headers={"Accept": "text/html"}).text
    assert "Stripes &amp; grids" in index


def test_labels_are_set_by_admins_and_searchable(client, session, settings, admin) -> None:
    seed(session, settings)
    url = "/api/v1/models/tiny/layers/blocks.1/units/3/label"
    assert client.put(url, json={"label": "Dog faces"}).status_code == 401
    r = client.put(url, json={"label": "Dog faces"}, headers=admin)
    assert r.json() == {"label": "Dog faces", "label_source": "admin"}
    unit = client.get("/api/v1/models/tiny/layers/blocks.1/units/3").json()
    assert unit["label"] == "Dog faces" and unit["label_source"] == "admin"
    hits = client.get("/api/v1/search", params={"q": "dog"}).json()
    assert [(h["layer"], h["unit"]) for h in hits] == [("blocks.1", 3)]
    assert client.get("/api/v1/search", params={"q": "cat"}).json() == []
    page = BeautifulSoup(
        client.get("/search?q=DOG", headers={"Accept": "text/html"}).text, "html.parser"
    )
    assert [a["href"] for a in page.select(".neuron-card a")] == ["/models/tiny/blocks.1/3"]
    assert client.get("/api/v1/search").status_code == 422
