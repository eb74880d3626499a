"""An admin curates families and labels from the pages; a visitor searches and sees a
text concept composed from units."""

from __future__ import annotations

import pytest

from backend.families.schemas import FamilyCreate
from backend.families.service import create_family
from backend.storage import make_store
from tests.browser.test_pages_in_chromium import webp
from tests.conftest import ADMIN_TOKEN
from tests.factories import make_artifact, make_layer, make_model, make_search_index, unit_vectors

pytestmark = pytest.mark.browser


@pytest.fixture
def catalog(session, settings):  # type: ignore[no-untyped-def]
    store = make_store(settings)
    m = make_model(session, "tiny")
    layer = make_layer(session, m, "blocks.1", units=12)
    for u in range(6):
        make_artifact(session, store, m, layer, u, data=webp((40 * u, 90, 200 - 30 * u)))
    vecs = unit_vectors(12, dim=32, seed=5)
    stripes = 0.6 * vecs[2] + 0.3 * vecs[5] + 0.15 * vecs[9]
    make_search_index(session, store, m, [layer], vecs, {"stripes": stripes})
    create_family(session, FamilyCreate(name="Stripes", description="periodic patterns"))
    session.commit()
    return m


def test_admin_adds_a_unit_to_a_family_from_its_page(server, browser, catalog, shot) -> None:
    ctx = browser.new_context()
    page = ctx.new_page()
    unit = f"{server}/models/tiny/blocks.1/2"
    page.goto(unit)
    assert page.locator("details.edit").count() == 0  # a visitor: nothing to edit
    page.goto(f"{server}/admin/login?next=/models/tiny/blocks.1/2")
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("form[action='/admin/login'] button")
    page.wait_for_url(unit)

    page.click("text=Edit label and families")
    page.select_option("select[name=family]", "stripes")
    page.click("form[action='/families/add-unit'] button")
    page.wait_for_selector(".families-of-unit a[href='/families/stripes']")
    page.fill("input[name=label]", "zebra stripes")
    page.click("text=Save label")
    page.wait_for_selector(".meta .label:text('zebra stripes')")
    page.fill("input[name=new_family]", "")
    page.click("form[action='/families/add-unit'] button")  # neither chosen: an error
    assert "pick a family" in page.locator("#curation .err").inner_text()
    shot(page, "unit-curation")

    page.click(".families-of-unit a[href='/families/stripes']")
    page.wait_for_url("**/families/stripes")
    cards = page.locator(".neuron-card > a")
    assert cards.count() == 1 and cards.first.get_attribute("href") == "/models/tiny/blocks.1/2"
    assert "zebra stripes" in cards.first.inner_text()
    page.fill("form.add-member input[name=layer]", "blocks.1")
    page.fill("form.add-member input[name=unit]", "5")
    page.click("form.add-member button")
    page.wait_for_selector(".neuron-card > a[href='/models/tiny/blocks.1/5']")
    page.fill("form.add-member input[name=layer]", "blocks.9")
    page.fill("form.add-member input[name=unit]", "1")
    page.click("form.add-member button")
    page.wait_for_selector("form.add-member .err")
    assert "unknown layer 'blocks.9'" in page.locator("form.add-member .err").inner_text()
    shot(page, "family-admin")

    page.click("button[aria-label='Remove unit 2 of blocks.1 from this family']")
    page.wait_for_selector(".neuron-card > a[href='/models/tiny/blocks.1/2']", state="detached")
    assert page.locator(".neuron-card").count() == 1

    # A visitor sees the family as the admin left it, without the controls.
    visitor = browser.new_context(viewport={"width": 390, "height": 844})
    other = visitor.new_page()
    other.goto(f"{server}/families/stripes")
    assert other.locator(".neuron-card > a").get_attribute("href") == "/models/tiny/blocks.1/5"
    assert other.locator("form").count() == 0
    other.goto(f"{server}/search?q=stripes")
    terms = other.locator(".composition a.term")
    assert terms.first.get_attribute("href") == "/models/tiny/blocks.1/2"
    assert terms.count() == 3
    shot(other, "search-composition-phone")
    visitor.close()

    page.goto(f"{server}/search?q=stripes")
    shot(page, "search-composition")
    page.goto(f"{server}/families")
    shot(page, "families-admin")
    ctx.close()
