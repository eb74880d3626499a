"""Weight structure in a real browser: walk a circuit from a unit to its strongest input and
back, read a layer's banding score, and ask how labelled units fall across its branches."""

from __future__ import annotations

import pytest

from backend.storage import make_store
from tests.weight_structure_data import plant_structure

pytestmark = pytest.mark.browser


@pytest.fixture
def planted(session, settings):  # type: ignore[no-untyped-def]
    return plant_structure(session, make_store(settings))


def test_walk_a_circuit_and_back(server, browser, planted, shot) -> None:
    page = browser.new_page()
    page.goto(server + "/models/gnet/inception3b/340?view=weights")
    inputs = page.locator(".circuit-side[data-side=inputs]")
    assert "not joined by one weight" in inputs.locator(".circuit-how").inner_text()
    thumb = inputs.locator(".circuit-links.pos li").first.locator("img")
    # The thumbnail loads lazily, after the page's load event: wait for it (it failed once
    # under load), then check it is the 96-px thumbnail.
    page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=thumb.element_handle())
    assert page.evaluate("i => i.naturalWidth", thumb.element_handle()) == 96
    shot(page, "unit-circuit")
    inputs.locator(".circuit-links.pos a").first.click()
    page.wait_for_url("**/models/gnet/conv1/3?view=weights")
    back = page.locator(".circuit-side[data-side=outputs] .circuit-links.pos a").first
    assert back.get_attribute("href") == "/models/gnet/inception3b/340?view=weights"
    back.click()
    page.wait_for_url("**/models/gnet/inception3b/340?view=weights")


def test_banding_and_branch_specialization_on_the_layer_page(
    server, browser, planted, shot
) -> None:
    page = browser.new_page()
    page.goto(server + "/models/gnet/inception3b?view=weights")
    assert page.locator(".band-score strong").inner_text() == "+0.42"
    assert page.locator(".wgroup").count() == 2
    form = page.locator("form.branch-form")
    form.locator("select[name=set]").select_option("label")
    form.locator("input[name=q]").fill("curve")
    form.locator("button[type=submit]").click()
    page.wait_for_url("**set=label&q=curve**")
    best = page.locator(".branch-result tr.best")
    assert best.locator("th").inner_text() == "branch3"
    assert float(page.locator(".branch-result .p-value").inner_text()) < 1e-20
    assert page.locator("#branches").is_visible()
    shot(page, "layer-structure")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing runs off
    page.goto(server + "/models/gnet/conv1?view=weights")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    shot(page, "first-layer-svd-phone")
