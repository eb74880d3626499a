"""Weight structure in the pages and the API, from planted payloads: a unit's circuit (links,
thumbnails, the linearised-path sentence), a layer's banding score and groups, why a view
does not apply, and branch specialization of labelled, chosen and property sets."""

from __future__ import annotations

import pytest
from bs4 import BeautifulSoup

from backend.storage import make_store
from tests.weight_structure_data import plant_structure

HTML = {"Accept": "text/html"}


def soup(r) -> BeautifulSoup:  # type: ignore[no-untyped-def]
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    return BeautifulSoup(r.text, "html.parser")


@pytest.fixture
def planted(session, settings):  # type: ignore[no-untyped-def]
    return plant_structure(session, make_store(settings))


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
    # A horizontal band through the middle: black above and below, white along it.
    assert [c["fill-opacity"] for c in cells] == ["0.0"] * 3 + ["1.0"] * 3 + ["0.0"] * 3
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


def test_first_layer_page_places_its_units_by_the_next_layers_weights(client, planted) -> None:
    page = soup(client.get("/models/gnet/conv1?view=weights", headers=HTML))
    pair = page.select_one(".svd-pair")
    images = pair.select("svg a image")
    assert len(images) == 8 and all(i["href"].startswith("/objects/") for i in images)
    # Unit 7: the largest first coordinate (right edge), second 0.2 of 0.4 (mid-height).
    seven = pair.select_one("a[href='/models/gnet/conv1/7?view=weights'] image")
    assert (seven["x"], seven["y"]) == ("333.0", "171.0")
    assert "60%" in pair.figcaption.text and "15%" in pair.figcaption.text
