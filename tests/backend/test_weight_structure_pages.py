"""Weight structure in the pages and the API, from planted payloads: a unit's circuit (links,
thumbnails, the linearised-path sentence), a layer's banding score and groups, why a view
does not apply, and branch specialization of labelled, chosen and property sets."""

from __future__ import annotations

import json

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import select

from backend.db.models import Family, FamilyMember, Unit
from backend.storage import make_store
from contracts import weight_views as wv
from tests.factories import make_artifact, make_layer, make_model

HTML = {"Accept": "text/html"}


def soup(r) -> BeautifulSoup:  # type: ignore[no-untyped-def]
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    return BeautifulSoup(r.text, "html.parser")


def put(session, store, m, layer, kind: str, payload: wv.BaseModel) -> None:  # type: ignore[no-untyped-def]
    blob = json.dumps(payload.model_dump(mode="json")).encode()
    make_artifact(session, store, m, layer, None, kind, blob, "json", "application/json", "")


@pytest.fixture
def planted(session, settings):  # type: ignore[no-untyped-def]
    """A model with a stem (8 units), a branched layer (480 units, as inception3b) and a
    linear head; circuits, banding, groups, properties and branches stored for them."""
    store = make_store(settings)
    m = make_model(session, "gnet")
    stem = make_layer(session, m, "conv1", units=8, order=0)
    mixed = make_layer(session, m, "inception3b", units=480, order=1)
    head = make_layer(session, m, "fc", units=10, order=2)
    head.kind = "linear"
    # Unit 3 of the stem has a thumbnail; its circuit runs into inception3b.
    make_artifact(session, store, m, mixed, 340, "weights_nmf", b"png", "png", "image/png", "rgb")
    mixed_links = [wv.UnitLinks() for _ in range(480)]
    mixed_links[340] = wv.UnitLinks(
        inputs=wv.Links(positive=[(3, 0.5), (1, 0.25)], negative=[(6, -0.4)])
    )
    put(session, store, m, mixed, wv.CIRCUITS, wv.CircuitsPayload(
        inputs=wv.CircuitPath(layer="conv1", method="expanded", convs=["a", "b", "c"]),
        units=mixed_links,
    ))
    stem_links = [wv.UnitLinks() for _ in range(8)]
    stem_links[3] = wv.UnitLinks(outputs=wv.Links(positive=[(340, 0.5)]))
    put(session, store, m, stem, wv.CIRCUITS, wv.CircuitsPayload(
        outputs=wv.CircuitPath(layer="inception3b", method="weights", convs=["mixed.conv"]),
        units=stem_links,
    ))
    put(session, store, m, mixed, wv.BANDING, wv.BandingPayload(
        maps="NMF-RGB maps, 3x3", score=0.42, horizontal=0.6, vertical=0.18, baseline=0.25,
        units=[(0.6, 0.18)] * 480,
    ))
    put(session, store, m, stem, wv.BANDING, wv.BandingPayload(
        reason="its units come from 1x1 convolutions with no spatial convolution before them"
    ))
    put(session, store, m, mixed, wv.CLUSTERS, wv.ClustersPayload(
        kernel=(3, 3), k=2, silhouettes=[(2, 0.5)],
        groups=[wv.Group(units=list(range(300)), centroid=[0, 0, 0, 1, 1, 1, 0, 0, 0]),
                wv.Group(units=list(range(300, 480)), centroid=[0, 1, 0] * 3)],
    ))
    colour = [0.0] * 480
    for u in range(320, 440):
        colour[u] = 1.0  # the top quarter (120 units) of colour: 96 in "5x5", 24 in "pool"
    put(session, store, m, mixed, wv.PROPERTIES, wv.PropertiesPayload(
        first_layer="conv1.conv", carried=True, colour=colour, frequency=[0.1] * 480
    ))
    put(session, store, m, mixed, wv.BRANCHES, wv.BranchesPayload(
        source="concatenation",
        branches=[wv.BranchOut(name=n, start=a, stop=b) for n, a, b in (
            ("branch1", 0, 128), ("branch2", 128, 320), ("branch3", 320, 416),
            ("branch4", 416, 480))],
    ))
    # 30 "curve" units, all in branch3 (the article's 5x5 branch); one unrelated label.
    units = {u.index: u for u in session.scalars(select(Unit).where(Unit.layer_id == mixed.id))}
    for i in range(330, 360):
        units[i].label = "curve" if i % 2 else "Curve detector"
    units[5].label = "curvey"
    fam = Family(slug="curves", name="Curves")
    session.add(fam)
    session.flush()
    session.add_all([FamilyMember(family_id=fam.id, unit_id=units[i].id) for i in (330, 331)])
    session.commit()
    return m


def test_unit_page_walks_a_circuit_down_and_back_up(client, planted) -> None:
    page = soup(client.get("/models/gnet/inception3b/340?view=weights", headers=HTML))
    side = page.select_one(".circuit-side[data-side=inputs]")
    assert side.h4.a["href"] == "/models/gnet/conv1"
    how = side.select_one(".circuit-how")
    assert how["data-method"] == "expanded"
    assert how.text.startswith("conv1 and inception3b are not joined by one weight")
    assert "linearised path" in how.text and "3 convolutions" in how.text
    pos = [a["href"] for a in side.select(".circuit-links.pos a")]
    assert pos == ["/models/gnet/conv1/3?view=weights", "/models/gnet/conv1/1?view=weights"]
    assert [a["href"] for a in side.select(".circuit-links.neg a")] == [
        "/models/gnet/conv1/6?view=weights"
    ]
    bars = [s["style"] for s in side.select(".cl-bar span")]
    assert bars == ["width: 100%", "width: 50%", "width: 80%"]
    outputs = page.select_one(".circuit-side[data-side=outputs]")
    assert "No later feature-map layer" in outputs.text
    # Back up: the input unit's page lists this unit among its outputs, with its thumbnail.
    up = soup(client.get("/models/gnet/conv1/3?view=weights", headers=HTML))
    out = up.select_one(".circuit-side[data-side=outputs]")
    assert out.select_one(".circuit-how").text.startswith("One convolution (mixed.conv) joins")
    link = out.select_one(".circuit-links.pos a")
    assert link["href"] == "/models/gnet/inception3b/340?view=weights"
    assert client.get(link.img["src"]).status_code == 200


def test_layer_page_shows_banding_groups_and_why_a_grid_is_empty(client, planted) -> None:
    page = soup(client.get("/models/gnet/inception3b?view=weights", headers=HTML))
    assert page.select_one(".band-score strong").text == "+0.42"
    assert page.select_one(".band-mark")["style"] == "left: 71.0%"
    assert "60% lies in horizontal bands" in page.select_one(".band-about").text
    groups = page.select(".wgroup")
    assert [g.select_one(".wgroup-n").text for g in groups] == ["300 units", "180 units"]
    cells = groups[0].select(".centroid rect")
    assert [c["fill-opacity"] for c in cells][3:6] == ["1.0", "1.0", "1.0"]
    assert len(groups[0].select(".wgroup-units a")) == 12  # the first dozen, then a count
    assert "+288" in groups[0].select_one(".wgroup-units").text
    # A 1x1 layer: the grid's empty boxes come with the reason.
    stem = soup(client.get("/models/gnet/conv1?view=weights", headers=HTML))
    assert "no spatial convolution before them" in stem.select_one(".banding .nmf-none").text
    head = soup(client.get("/models/gnet/fc?view=weights", headers=HTML))
    assert "fully connected" in head.select_one(".structure-none").text
    # Other views of the layer page leave the structure out.
    plain = soup(client.get("/models/gnet/inception3b", headers=HTML))
    assert plain.select_one(".banding") is None and plain.select_one(".branches") is not None


def test_branch_form_counts_a_label_word_and_gives_its_chance(client, planted) -> None:
    url = "/models/gnet/inception3b?set=label&q=curve"
    page = soup(client.get(url, headers=HTML))
    result = page.select_one(".branch-result")
    rows = {tr.th.text: [td.text.strip() for td in tr.select("td")] for tr in
            result.select("tbody tr")}
    assert [r[1] for r in rows.values()] == ["0", "0", "30", "0"]
    assert result.select_one("tr.best th").text == "branch3"
    p = float(result.select_one(".p-value").text)
    assert p < 1e-20
    form = page.select_one("form.branch-form")
    assert form.select_one("option[selected]")["value"] == "label"
    assert form.select_one("input[name=q]")["value"] == "curve"
    # A family, and a weight property: the top colour quarter crowds branch3 too.
    fam = soup(client.get("/models/gnet/inception3b?set=family&q=curves", headers=HTML))
    assert "2 members of family curves" in fam.select_one(".branch-result").text
    prop = soup(client.get("/models/gnet/inception3b?set=property&q=colour", headers=HTML))
    assert prop.select_one("tr.best th").text == "branch3"
    bad = soup(client.get("/models/gnet/inception3b?set=units&q=999", headers=HTML))
    assert "outside the layer" in bad.select_one(".branches .error").text


def test_api_serves_each_view_and_says_why_or_not_yet(client, planted) -> None:
    base = "/api/v1/models/gnet/layers/inception3b"
    unit = client.get(f"{base}/circuits?unit=340").json()
    assert unit["inputs"]["method"] == "expanded" and "units" not in unit
    assert unit["unit"]["inputs"]["positive"] == [[3, 0.5], [1, 0.25]]
    assert client.get(f"{base}/banding").json()["score"] == 0.42
    assert client.get(f"{base}/clusters").json()["k"] == 2
    assert len(client.get(f"{base}/properties").json()["colour"]) == 480
    r = client.get(f"{base}/branches", params={"set": "label", "q": "curve"}).json()
    assert [b["name"] for b in r["branches"]] == ["branch1", "branch2", "branch3", "branch4"]
    spec = r["specialization"]
    assert spec["best"] == "branch3" and spec["best_p"] < 1e-20 and spec["chosen"] == 30
    assert spec["set"]["units"] == list(range(330, 360))
    # A layer without kernels says why; a conv layer not yet computed is 409.
    fc = client.get("/api/v1/models/gnet/layers/fc/banding")
    assert fc.status_code == 200 and "fully connected" in fc.json()["reason"]
    assert client.get("/api/v1/models/gnet/layers/conv1/clusters").status_code == 409
    nob = client.get("/api/v1/models/gnet/layers/conv1/branches").json()
    assert nob["branches"] == [] and nob["reason"] == "no branches"
    assert client.get("/api/v1/models/gnet/layers/conv1/branches?set=label&q=x").status_code == 422
    # The catalog's own layer routes are untouched.
    assert client.get(base).json()["name"] == "inception3b"
