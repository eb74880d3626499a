from __future__ import annotations

import io

from bs4 import BeautifulSoup
from PIL import Image

from backend.storage import make_store
from contracts.artifacts import FactorInput, RankedStrings, WeightsFactors, WeightsSvd
from tests.factories import make_artifact, make_layer, make_model

HTML = {"Accept": "text/html"}


def soup(r) -> BeautifulSoup:  # type: ignore[no-untyped-def]
    assert r.headers["content-type"].startswith("text/html")
    return BeautifulSoup(r.text, "html.parser")


def test_home_lists_models_and_marks_random_init(client, session) -> None:
    make_model(session, "tiny")
    session.commit()
    page = soup(client.get("/", headers=HTML))
    cards = page.select(".cards .card")
    assert len(cards) == 1
    assert cards[0].h2.text == "tiny"
    assert "random init" in cards[0].text


def test_model_layer_unit_navigation(client, session, settings) -> None:
    m = make_model(session, "tiny")
    layer = make_layer(session, m, "blocks.1", units=130)
    make_artifact(session, make_store(settings), m, layer, 5)
    session.commit()
    model_page = soup(client.get("/models/tiny", headers=HTML))
    links = [a["href"] for a in model_page.select(".layer-step > a")]
    assert links == ["/models/tiny/blocks.1"]
    # The architecture diagram: one box per layer, linked to it; a preview of its units.
    boxes = model_page.select("figure.arch svg a")
    assert [a["href"] for a in boxes] == ["/models/tiny/blocks.1"]
    assert "130 units" in boxes[0].title.text
    previews = model_page.select(".layer-preview a")
    assert [a["href"] for a in previews] == ["/models/tiny/blocks.1/5"]
    assert previews[0].img["alt"] == "blocks.1 unit 5"

    grid = soup(client.get("/models/tiny/blocks.1", headers=HTML))
    cells = grid.select(".unit-grid .unit-cell a")
    assert len(cells) == 96 and cells[5]["href"] == "/models/tiny/blocks.1/5"
    thumbs = grid.select(".unit-grid img")
    assert len(thumbs) == 1 and thumbs[0]["alt"]

    # htmx asks for the next page and gets only the fragment
    frag = client.get("/models/tiny/blocks.1?offset=96", headers={"HX-Request": "true"})
    fs = soup(frag)
    assert fs.find("html") is None
    assert [a["href"] for a in fs.select(".unit-cell a")][0] == "/models/tiny/blocks.1/96"
    labels_only = soup(client.get("/models/tiny/blocks.1?view=label", headers=HTML))
    assert labels_only.select(".unit-grid img") == []
    assert client.get("/models/tiny/blocks.1?view=bogus", headers=HTML).status_code == 422

    unit = soup(client.get("/models/tiny/blocks.1/5", headers=HTML))
    assert "Unit 5" in unit.h1.text
    assert unit.select_one("a[rel=prev]")["href"] == "/models/tiny/blocks.1/4?view=featvis"
    assert unit.select_one("a[rel=next]")["href"] == "/models/tiny/blocks.1/6?view=featvis"
    img = unit.select_one(".view img")
    assert img["src"].startswith("/objects/tiny/blocks.1/5/featvis-") and img["alt"]


def test_unknown_pages_render_a_404_page(client, session) -> None:
    make_model(session, "tiny")
    session.commit()
    for url in ["/models/nope", "/models/tiny/nolayer", "/models/tiny/nolayer/3"]:
        r = client.get(url, headers=HTML)
        assert r.status_code == 404
        assert "unknown" in soup(r).select_one(".error").text


def test_templates_autoescape(client, session) -> None:
    m = make_model(session, "tiny")
    m.error = "<script>alert(1)</script>"
    session.commit()
    r = client.get("/", headers=HTML)
    assert "<script>alert(1)</script>" not in r.text
    assert "&lt;script&gt;" in r.text


def test_progress_fragment_polls_while_jobs_run(client, admin) -> None:
    assert client.get("/partials/progress").text.strip() == ""
    client.post("/api/v1/models", json={"spec": "timm:resnet18"}, headers=admin)
    frag = soup(client.get("/partials/progress"))
    section = frag.select_one("section.progress")
    assert section["hx-trigger"] == "every 2s"
    assert "register model" in section.text


def test_home_previews_units_of_the_deepest_layer(client, session, settings) -> None:
    m = make_model(session, "tiny")
    make_layer(session, m, "stem", units=4, order=0)
    deep = make_layer(session, m, "blocks.9", units=4, order=1)
    a = make_artifact(session, make_store(settings), m, deep, 1)
    session.commit()
    page = soup(client.get("/", headers=HTML))
    assert [i["src"] for i in page.select(".card .preview img")] == [f"/objects/{a.storage_key}"]
    assert client.get("/api/v1/models").json()[0]["preview"] == [f"/objects/{a.storage_key}"]


def test_text_tab_shows_vocabulary_and_hill_climbed_strings(client, session, settings) -> None:
    m = make_model(session, "tiny")
    layer = make_layer(session, m, "blocks.1", units=2)
    store = make_store(settings)
    ranked = {
        "": [("dog", 0.4), ("puppy", 0.2)],
        # Climbed strings pay a penalty on rare tokens: their scores may all be negative.
        "hill_climb": [("dog dog puppy", -0.01), ("dog cat puppy", -0.05)],
    }
    for variant, top in ranked.items():
        data = RankedStrings.of(top).model_dump_json().encode()
        make_artifact(
            session, store, m, layer, 1, "text_fv", data, "json", "application/json", variant
        )
    session.commit()
    page = soup(client.get("/models/tiny/blocks.1/1?view=text", headers=HTML))
    sections = page.select(".text-views section")
    assert [s.h3.text for s in sections] == [
        "Strings that drive this unit",
        "Hill-climbed token strings",
    ]
    for section, top in zip(sections, ranked.values(), strict=True):
        assert [x.text for x in section.select("li .s")] == [t for t, _ in top]
    widths = [b["style"] for b in sections[1].select(".bar")]
    assert widths == ["width: 100%", "width: 2%"]  # the best bar is full, none runs over


def test_weights_tab_shows_nmf_image_colours_and_svd_placement(client, session, settings) -> None:
    m = make_model(session, "tiny")
    layer = make_layer(session, m, "blocks.1", units=4)
    store = make_store(settings)
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (255, 0, 0)).save(buf, "PNG")
    png = make_artifact(
        session, store, m, layer, 2, "weights_nmf", buf.getvalue(), "png", "image/png", "rgb"
    )
    png.meta = {"kernel": [3, 3]}
    inputs = "input channels of blocks.1.0.conv_dw"

    def read(channel: int, sign: str, share: float) -> FactorInput:
        return FactorInput(channel=channel, name=str(channel), sign=sign, share=share)

    factors = WeightsFactors(
        inputs=inputs,
        input_count=8,
        kernel=(3, 3),
        error=0.25,
        converged=True,
        colours={
            "red": [read(7, "+", 0.5)],
            "green": [read(3, "-", 0.4)],
            "blue": [read(1, "+", 0.3), read(2, "-", 0.1)],
        },
        components=[[0.0] * 16] * 3,
    )
    svd = WeightsSvd(
        matrix="|W|",
        inputs=inputs,
        units=[(0, 0), (1, 1), (2, 0), (1, 2)],
        input_channels=[(0, 0)] * 8,
        singular_values=[2.0, 1.0],
    )
    for variant, kind, data in [("factors", "weights_nmf", factors), ("", "weights_svd", svd)]:
        blob = data.model_dump_json().encode()
        make_artifact(
            session, store, m, layer, None, kind, blob, "json", "application/json", variant
        )
    session.commit()

    page = soup(client.get("/models/tiny/blocks.1/2?view=weights", headers=HTML))
    assert page.select_one(".tabs a[aria-selected=true]").text.strip() == "Weights"
    img = page.select_one(".weights .nmf img")
    assert img["src"] == f"/objects/{png.storage_key}" and "pixelated" in img["class"]
    assert client.get(img["src"]).headers["content-type"] == "image/png"
    assert "3×3 kernel" in page.select_one(".nmf figcaption").text
    colours = [li.text.strip() for li in page.select(".nmf-colours li")]
    assert colours == ["red reads +7", "green reads −3", "blue reads +1, −2"]
    # Unit 2 sits at the largest first coordinate and the smallest second: right, bottom.
    current = page.select_one(".svd circle.current")
    assert (current["cx"], current["cy"]) == ("230.0", "230.0")
    others = {a["href"]: (a.circle["cx"], a.circle["cy"]) for a in page.select(".svd svg a")}
    assert others == {
        "/models/tiny/blocks.1/0?view=weights": ("10.0", "230.0"),
        "/models/tiny/blocks.1/1?view=weights": ("120.0", "120.0"),
        "/models/tiny/blocks.1/3?view=weights": ("120.0", "10.0"),
    }
    # A unit without its own image still shows its layer's placement.
    other = soup(client.get("/models/tiny/blocks.1/3?view=weights", headers=HTML))
    assert other.select_one(".weights .nmf") is None
    assert other.select_one(".svd circle.current")["cy"] == "10.0"
    api = client.get("/api/v1/models/tiny/layers/blocks.1/units/3").json()
    assert {a["kind"] for a in api["artifacts"]} == {"weights_nmf", "weights_svd"}


def test_missing_weight_views_can_be_computed_from_the_unit_page(client, session) -> None:
    from sqlalchemy import select

    from backend.db.models import Job
    from tests.conftest import ADMIN_TOKEN

    m = make_model(session, "tiny")
    make_layer(session, m, "blocks.1", units=8)
    head = make_layer(session, m, "classifier", units=8, order=1)
    head.kind = "linear"  # no convolution kernels: no weights tab at all
    session.commit()
    page = soup(client.get("/models/tiny/blocks.1/3?view=weights", headers=HTML))
    tab = page.select_one("a[role=tab][href='?view=weights']")
    assert tab is not None and tab["data-missing"] == "1" and tab.get("aria-selected") == "true"
    assert "No weight views for blocks.1 yet" in page.text
    assert page.select_one("form[action$='/weights']") is None  # visitors get no button
    linear = soup(client.get("/models/tiny/classifier/3", headers=HTML))
    assert linear.select_one("a[role=tab][href='?view=weights']") is None

    r = client.post("/models/tiny/blocks.1/3/weights", follow_redirects=False)
    assert r.status_code in (401, 403)
    client.post("/admin/login", data={"token": ADMIN_TOKEN}, follow_redirects=False)
    form = soup(client.get("/models/tiny/blocks.1/3?view=weights", headers=HTML))
    assert form.select_one("form[action='/models/tiny/blocks.1/3/weights'] button")
    r = client.post("/models/tiny/blocks.1/3/weights", follow_redirects=False)
    assert r.status_code == 303
    job = session.scalars(select(Job).where(Job.kind == "weight_views")).one()
    assert job.params["layers"] == ["blocks.1"]
    assert r.headers["location"] == f"/models/tiny/blocks.1/3?view=weights&job={job.id}"
    assert client.post("/models/tiny/blocks.1/99/weights").status_code == 404
