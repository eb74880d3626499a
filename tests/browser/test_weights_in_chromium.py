"""The unit page's Weights tab in a real browser: the NMF-RGB image loads, the SVD placement's
dots lead to the other units' weights."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from backend.storage import make_store
from contracts.artifacts import FactorInput, WeightsFactors, WeightsSvd
from tests.factories import make_artifact, make_layer, make_model

pytestmark = pytest.mark.browser


def nmf_png(seed: int) -> bytes:
    cells = np.random.default_rng(seed).integers(0, 256, size=(3, 3, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.repeat(np.repeat(cells, 32, 0), 32, 1), "RGB").save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def weights(session, settings):  # type: ignore[no-untyped-def]
    store = make_store(settings)
    m = make_model(session, "tiny")
    layer = make_layer(session, m, "blocks.1", units=6)
    for u in range(6):
        a = make_artifact(
            session, store, m, layer, u, "weights_nmf", nmf_png(u), "png", "image/png", "rgb"
        )
        a.meta = {"kernel": [3, 3]}
    # The JSON views as the weight-views job writes them: through their contract models.
    factors = WeightsFactors(
        inputs="input channels of blocks.1.conv",
        input_count=3,
        kernel=(3, 3),
        error=0.3,
        converged=True,
        colours={
            c: [FactorInput(channel=i, name=str(i), sign="+", share=0.5)]
            for i, c in enumerate(("red", "green", "blue"))
        },
        components=[[0.0] * 6 for _ in range(3)],
    )
    svd = WeightsSvd(
        matrix="sum over kernel positions of |W|, rows: units, columns: inputs",
        inputs="input channels of blocks.1.conv",
        units=[(float(u), float(u % 3)) for u in range(6)],
        input_channels=[(0.0, 0.0)] * 3,
        singular_values=[2.0, 1.0],
    )
    for variant, kind, data in [("factors", "weights_nmf", factors), ("", "weights_svd", svd)]:
        blob = data.model_dump_json().encode()
        make_artifact(
            session, store, m, layer, None, kind, blob, "json", "application/json", variant
        )
    session.commit()
    return m


def test_weights_tab_image_loads_and_dots_lead_to_units(server, browser, weights, shot) -> None:
    page = browser.new_page()
    page.goto(server + "/models/tiny/blocks.1/2?view=weights")
    assert page.locator(".tabs a.active").inner_text() == "Weights"
    size = page.evaluate(
        "(() => { const i = document.querySelector('.nmf img'); "
        "return [i.complete, i.naturalWidth, i.getBoundingClientRect().width]; })()"
    )
    assert size == [True, 96, 192]  # shown at twice its size, pixelated
    assert page.locator(".svd circle").count() == 6
    assert page.locator(".svd circle.current").is_visible()
    shot(page, "unit-weights")
    page.locator(".svd a[href='/models/tiny/blocks.1/4?view=weights'] circle").click()
    page.wait_for_url("**/models/tiny/blocks.1/4?view=weights")
    assert page.locator(".svd circle.current title").text_content() == "unit 4 (this unit)"
