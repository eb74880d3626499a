"""Many concurrent requests on a real server: no pool exhaustion, no errors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.factories import make_layer, make_model


def test_64_concurrent_unit_requests_all_succeed(server, session) -> None:
    m = make_model(session, "tiny")
    make_layer(session, m, "blocks.1", units=200)
    session.commit()

    def fetch(i: int) -> int:
        with httpx.Client(base_url=server, timeout=60) as c:
            codes = [
                c.get(f"/api/v1/models/tiny/layers/blocks.1/units/{(i * 7 + k) % 200}").status_code
                for k in range(4)
            ]
            codes.append(
                c.get(
                    f"/models/tiny/blocks.1/{i % 200}", headers={"Accept": "text/html"}
                ).status_code
            )
        return max(codes) if set(codes) != {200} else 200

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(fetch, range(64)))
    assert results == [200] * 64
