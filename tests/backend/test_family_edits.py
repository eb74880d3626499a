"""Editing families and labels from the pages: admins only, plain forms and htmx fragments."""

from __future__ import annotations

import pytest
from bs4 import BeautifulSoup

from backend.storage import make_store
from tests.conftest import ADMIN_TOKEN
from tests.factories import make_artifact, make_layer, make_model

HTML = {"Accept": "text/html"}
HX = {"Accept": "text/html", "HX-Request": "true"}


@pytest.fixture
def client(client):  # type: ignore[no-untyped-def]
    """The app's test client, showing redirects instead of following them."""
    client.follow_redirects = False
    return client


@pytest.fixture
def catalog(session, settings):  # type: ignore[no-untyped-def]
    m = make_model(session, "tiny")
    layer = make_layer(session, m, "blocks.1", units=6)
    make_artifact(session, make_store(settings), m, layer, 4)
    session.commit()
    return m


def sign_in(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/admin/login", data={"token": ADMIN_TOKEN}, follow_redirects=False)
    assert r.status_code == 303 and "microscope_admin" in client.cookies


def soup(response) -> BeautifulSoup:  # type: ignore[no-untyped-def]
    return BeautifulSoup(response.text, "html.parser")


def members(client, slug: str) -> list[int]:  # type: ignore[no-untyped-def]
    return [c["unit"] for c in client.get(f"/api/v1/families/{slug}").json()["members"]]


def test_admin_creates_a_family_and_edits_it_from_its_page(client, catalog) -> None:
    sign_in(client)
    index = soup(client.get("/families", headers=HTML))
    assert index.select_one("form#family-create[action='/families']") is not None

    r = client.post(
        "/families", data={"name": "Dog snouts", "description": "wet noses"}, headers=HTML
    )
    assert r.status_code == 303 and r.headers["location"] == "/families/dog-snouts"
    page = soup(client.get("/families/dog-snouts", headers=HTML))
    assert page.h1.text == "Dog snouts" and "wet noses" in page.text
    assert page.select_one("form.add-member") is not None

    # Plain forms: a redirect back to the family page.
    add = {"model": "tiny", "layer": "blocks.1", "unit": "4", "note": "the wettest"}
    r = client.post("/families/dog-snouts/members", data=add, headers=HTML)
    assert r.status_code == 303 and r.headers["location"] == "/families/dog-snouts"
    # htmx: the family's fragment comes back with the new card and its remove button.
    r = client.post(
        "/families/dog-snouts/members", data={**add, "unit": "2", "note": ""}, headers=HX
    )
    assert r.status_code == 200 and "<html" not in r.text
    frag = soup(r)
    assert frag.select_one("#family") is not None
    assert [a["href"] for a in frag.select(".neuron-card > a")] == [
        "/models/tiny/blocks.1/4",
        "/models/tiny/blocks.1/2",
    ]
    assert len(frag.select(".neuron-card form.remove")) == 2
    assert members(client, "dog-snouts") == [4, 2]

    r = client.post(
        "/families/dog-snouts/members/remove",
        data={"model": "tiny", "layer": "blocks.1", "unit": "4"},
        headers=HTML,
    )
    assert r.status_code == 303
    assert members(client, "dog-snouts") == [2]

    r = client.post(
        "/families/dog-snouts/edit", data={"name": "Noses", "description": ""}, headers=HX
    )
    frag = soup(r)
    assert frag.h1.text == "Noses" and "wet noses" not in frag.text
    assert frag.select_one("#family-crumb[hx-swap-oob]").text == "Noses"  # the breadcrumb
    fam = client.get("/api/v1/families/dog-snouts").json()
    assert (fam["name"], fam["description"], fam["slug"]) == ("Noses", None, "dog-snouts")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"unit": "99"}, "unknown unit 99"),
        ({"model": "nope"}, "unknown model 'nope'"),
        ({"layer": "blocks.9"}, "unknown layer 'blocks.9'"),
        ({"unit": "four"}, "whole number"),
        ({"layer": " "}, "give a model, a layer and a unit index"),
    ],
)
def test_bad_members_are_refused_on_the_page(client, catalog, fields, says) -> None:
    sign_in(client)
    client.post("/families", data={"name": "Dog snouts"}, headers=HTML)
    data = {"model": "tiny", "layer": "blocks.1", "unit": "3", **fields}
    for headers in (HTML, HX):
        r = client.post("/families/dog-snouts/members", data=data, headers=headers)
        assert r.status_code == 422
        form = soup(r).select_one("form.add-member")
        assert says in form.select_one(".err[role=alert]").text
        assert form.select_one("input[name=model]")["value"] == data["model"]  # kept
    assert ("<html" in r.text) is False  # the htmx answer is the fragment
    assert members(client, "dog-snouts") == []


def test_bad_family_names_are_refused_on_the_page(client, catalog) -> None:
    sign_in(client)
    for data, says in [
        ({"name": "  "}, "a family needs a name"),
        ({"name": "!!!"}, "a family needs a name with letters or digits"),
        ({"name": "x" * 201}, "at most 200 characters"),
    ]:
        r = client.post("/families", data=data, headers=HTML)
        assert r.status_code == 422
        assert says in soup(r).select_one("#family-create .err").text
    client.post("/families", data={"name": "Dog snouts"}, headers=HTML)
    r = client.post("/families", data={"name": "Dog  Snouts"}, headers=HX)
    assert r.status_code == 422 and "<html" not in r.text
    assert "already exists" in soup(r).select_one("#family-create .err").text
    r = client.post("/families/dog-snouts/edit", data={"name": ""}, headers=HTML)
    assert r.status_code == 422 and "a family needs a name" in r.text
    assert client.get("/api/v1/families/dog-snouts").json()["name"] == "Dog snouts"
    r = client.post("/families/nope/members", data={"model": "tiny"}, headers=HTML)
    assert r.status_code == 404 and "unknown family 'nope'" in soup(r).text


def test_unit_page_adds_to_families_and_sets_the_label(client, catalog, admin) -> None:
    unit = "/models/tiny/blocks.1/3"
    before = soup(client.get(unit, headers=HTML))  # anonymous: cached by the page cache
    assert before.select_one(".families-of-unit") is None
    client.post("/api/v1/families", json={"name": "Stripes"}, headers=admin)
    sign_in(client)
    page = soup(client.get(unit + "?view=featvis", headers=HTML))
    form = page.select_one("form[action='/families/add-unit']")
    assert [o["value"] for o in form.select("select[name=family] option")] == ["", "stripes"]
    assert page.select_one(f"form[action='{unit}/label'] input[name=label]") is not None

    data = {"model": "tiny", "layer": "blocks.1", "unit": "3", "view": "featvis"}
    r = client.post("/families/add-unit", data={**data, "family": "stripes"}, headers=HTML)
    assert r.status_code == 303 and r.headers["location"] == unit + "?view=featvis"
    r = client.post("/families/add-unit", data={**data, "new_family": "Zebra"}, headers=HX)
    assert r.status_code == 200
    frag = soup(r)
    assert [a["href"] for a in frag.select("#curation .families-of-unit a")] == [
        "/families/stripes",
        "/families/zebra",
    ]
    assert frag.select("select[name=family] option[value]")[-1]["value"] == ""  # all taken
    assert frag.select_one("input[name=new_family]")["value"] == ""  # done: the form is clear
    assert members(client, "zebra") == [3] and members(client, "stripes") == [3]

    for fields, says in [
        ({}, "pick a family or type a name for a new one"),
        ({"family": "nope"}, "unknown family 'nope'"),
        ({"new_family": "stripes"}, "family 'stripes' already exists"),
    ]:
        r = client.post("/families/add-unit", data={**data, **fields}, headers=HTML)
        assert r.status_code == 422
        assert says in soup(r).select_one("#curation .err[role=alert]").text

    r = client.post(f"{unit}/label", data={"label": "zebra <stripes>"}, headers=HTML)
    assert r.status_code == 303 and r.headers["location"] == unit
    got = client.get("/api/v1/models/tiny/layers/blocks.1/units/3").json()
    assert (got["label"], got["label_source"]) == ("zebra <stripes>", "admin")
    r = client.post(f"{unit}/label", data={"label": "y" * 201}, headers=HX)
    assert r.status_code == 422 and "at most 200" in r.text
    assert soup(r).select_one("input[name=label]")["value"] == "y" * 201
    assert "zebra &lt;stripes&gt;" in r.text  # escaped, and unchanged

    # A visitor sees the edits at once (the page cache follows the catalog version).
    client.cookies.clear()
    after = soup(client.get(unit, headers=HTML))
    assert [a.text for a in after.select(".families-of-unit a")] == ["Stripes", "Zebra"]
    assert after.select_one(".label").text == "zebra <stripes>"
    assert after.select_one("details.edit") is None


def test_visitors_get_no_edit_controls_and_cannot_post(client, catalog, admin) -> None:
    client.post("/api/v1/families", json={"name": "Stripes"}, headers=admin)
    pages = {
        "/families": "#family-create",
        "/families/stripes": "form",
        "/models/tiny/blocks.1/3": "form, details.edit",
    }
    for url, controls in pages.items():
        page = soup(client.get(url, headers=HTML))
        assert page.select(f"main {controls}") == [], url

    unit = {"model": "tiny", "layer": "blocks.1", "unit": "3"}
    writes = [
        ("/families", {"name": "Mine"}),
        ("/families/stripes/edit", {"name": "Mine"}),
        ("/families/stripes/members", unit),
        ("/families/stripes/members/remove", unit),
        ("/families/add-unit", {**unit, "family": "stripes"}),
        ("/models/tiny/blocks.1/3/label", {"label": "mine"}),
    ]
    client.cookies.set("microscope_admin", "a-guess")
    for url, data in writes:
        for headers in (HTML, HX):
            assert client.post(url, data=data, headers=headers).status_code == 401, url
    assert [f["name"] for f in client.get("/api/v1/families").json()] == ["Stripes"]
    assert members(client, "stripes") == []
    assert client.get("/api/v1/models/tiny/layers/blocks.1/units/3").json()["label"] is None


def test_the_api_renames_families_too(client, catalog, admin) -> None:
    client.post("/api/v1/families", json={"name": "Stripes"}, headers=admin)
    body = {"name": "Bars", "description": "straight ones"}
    assert client.patch("/api/v1/families/stripes", json=body).status_code == 401
    r = client.patch("/api/v1/families/stripes", json=body, headers=admin)
    assert r.status_code == 200
    assert (r.json()["name"], r.json()["description"], r.json()["url"]) == (
        "Bars",
        "straight ones",
        "/families/stripes",
    )
    r = client.patch("/api/v1/families/stripes", json={"name": "..."}, headers=admin)
    assert r.status_code == 422 and "letters or digits" in r.json()["detail"]
    assert client.patch("/api/v1/families/nope", json=body, headers=admin).status_code == 404
