"""The two new views in a real browser: the conditional probability tab draws full stacked
bars with a legend; the model page's typographic attack links to the units that read."""

from __future__ import annotations

import pytest

from tests.backend.test_analyses import seeded

pytestmark = pytest.mark.browser


def test_condprob_tab_and_typographic_table(server, browser, session, settings, shot) -> None:
    plot = seeded(session, settings)
    page = browser.new_page()
    page.goto(server + "/models/tiny/blocks.1/1?view=condprob")
    assert page.locator(".tabs a.active").inner_text() == "Conditional probability"
    heights = page.evaluate(
        "[...document.querySelectorAll('figure.condprob g.bucket')].map(g => "
        "[...g.querySelectorAll('rect:not(.empty)')].reduce((s, r) => s + r.getBBox().height, 0))"
    )
    assert [round(h) for h in heights] == [160 if n else 0 for n in plot["sampled"]]
    assert page.locator("ul.legend li").count() >= 2
    shot(page, "unit-condprob")
    page.goto(server + "/models/tiny#typographic")
    assert "50%" in page.locator("#typographic p").inner_text()
    page.locator("#typographic a", has_text="blocks.1:2").click()
    page.wait_for_url("**/models/tiny/blocks.1/2?view=text")
    assert page.locator(".attack tbody tr").count() == 2
    shot(page, "unit-typographic")
