"""Home -> model -> layer -> unit in a real browser; tabs; permalinks round-trip."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image, ImageDraw

from backend.storage import make_store
from tests.factories import make_artifact, make_layer, make_model

pytestmark = pytest.mark.browser


def webp(color: tuple[int, int, int], size: int = 96) -> bytes:
    img = Image.new("RGB", (size, size), color)
    ImageDraw.Draw(img).ellipse(
        (size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(250, 250, 250)
    )
    buf = io.BytesIO()
    img.save(buf, format="WEBP")
    return buf.getvalue()


@pytest.fixture
def catalog(session, settings):  # type: ignore[no-untyped-def]
    store = make_store(settings)
    m = make_model(session, "tiny")
    make_layer(session, m, "stem", units=4, order=0)
    layer = make_layer(session, m, "blocks.1", units=40, order=1)
    for u in range(3):
        make_artifact(session, store, m, layer, u, data=webp((40 * u, 90, 160)))
    index = {
        "top": [{"image_id": 1, "score": 3.5, "y": 1, "x": 2, "box": [0, 0, 10, 10]}],
        "negative": None,
        "strata": [{"lo": 0.0, "hi": 1.0, "image_ids": [], "scores": []}],
        "histogram": {"lo": 0.0, "hi": 3.5, "counts": [5, 9, 3, 1]},
        "stats": {
            "count": 18,
            "mean": 1.2,
            "std": 0.8,
            "active_share": 0.9,
            "min": -0.1,
            "max": 3.5,
        },
    }
    make_artifact(
        session,
        store,
        m,
        layer,
        2,
        kind="dataset_examples",
        data=json.dumps(index).encode(),
        ext="json",
        content_type="application/json",
    )
    for kind, color in (("example_crop", (200, 60, 60)), ("example_heatmap", (60, 200, 60))):
        a = make_artifact(session, store, m, layer, 2, kind=kind, data=webp(color, 448))
        a.variant = "top"
    session.commit()
    return m


def test_browse_to_a_unit_and_share_its_permalink(server, browser, catalog, shot) -> None:
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(server + "/")
    assert page.locator(".card h2").inner_text() == "tiny"
    shot(page, "home")

    page.click("text=tiny")
    page.wait_for_url("**/models/tiny")
    steps = page.locator(".layer-diagram .lname").all_inner_texts()
    assert steps == ["stem", "blocks.1"]
    shot(page, "model")

    # The architecture diagram's boxes are links: the second one opens blocks.1.
    page.locator("figure.arch rect").nth(1).click()
    page.wait_for_url("**/models/tiny/blocks.1")
    assert page.locator(".unit-cell").count() == 40
    assert page.locator(".unit-cell img").count() == 3  # thumbnails where featvis exists
    # Lazy thumbnails load after the page's load event: wait until every one has loaded.
    page.wait_for_function(
        "[...document.querySelectorAll('.unit-cell img')].every(i => i.naturalWidth > 0)"
    )
    shot(page, "layer")

    page.click(".unit-cell a[href='/models/tiny/blocks.1/2']")
    page.wait_for_url("**/models/tiny/blocks.1/2")
    assert "Unit 2" in page.locator("h1").inner_text()
    tabs = page.locator(".tabs a").all_inner_texts()
    # Weight views are not computed here: the tab says so (and offers a button to an admin).
    assert tabs == ["Feature visualization", "Dataset examples", "Weights (missing)"]
    assert page.locator(".view[data-view=featvis] img").count() == 1

    page.click("text=Dataset examples")
    page.wait_for_url("**/models/tiny/blocks.1/2?view=examples")
    assert page.locator(".sheet img").count() == 1
    assert page.locator("svg.hist rect").count() == 4
    page.click("text=Heatmap off")
    page.wait_for_url("**heatmap=1")
    assert "example_heatmap" in page.locator(".sheet img").get_attribute("src")
    shot(page, "unit-examples")
    permalink = page.url

    # A shared link opens the same view in a fresh browser.
    fresh = browser.new_context(viewport={"width": 390, "height": 844})
    other = fresh.new_page()
    other.goto(permalink)
    assert other.locator(".tabs a.active").inner_text() == "Dataset examples"
    assert "example_heatmap" in other.locator(".sheet img").get_attribute("src")
    shot(other, "unit-examples-phone")
    other.click("a[rel=next]")
    other.wait_for_url("**/models/tiny/blocks.1/3?view=examples")
    fresh.close()
    ctx.close()


def test_unknown_unit_shows_a_404_page(server, browser, catalog) -> None:
    page = browser.new_page()
    resp = page.goto(server + "/models/tiny/blocks.1/999")
    assert resp.status == 404
    assert "unknown unit" in page.locator(".error").inner_text()
    page.close()
