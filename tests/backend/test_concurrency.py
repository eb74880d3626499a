"""Many concurrent requests on a real server: no pool exhaustion, no deadlock, no errors."""

from __future__ import annotations

import asyncio

import httpx

from tests.factories import make_layer, make_model

UNITS = 640
CONNECTIONS = 96


def test_concurrent_uncached_requests_never_wait_on_the_pool_forever(server, session) -> None:
    """More requests in flight than worker threads (40) and pooled connections (20).

    Regression test for a deadlock: without a cap on requests holding a session, every
    threadpool thread sat in a handler waiting for a pooled connection while the requests that
    held the connections waited for a thread to serialize their responses, until the pool's
    30-s timeout failed them. Every URL is distinct, so the page cache cannot hide it, and a
    request that takes longer than 20 s counts as stuck.
    """
    m = make_model(session, "tiny")
    make_layer(session, m, "blocks.1", units=UNITS)
    session.commit()
    urls = [f"/api/v1/models/tiny/layers/blocks.1/units/{i}" for i in range(UNITS)]
    urls += [f"/models/tiny/blocks.1/{i}" for i in range(0, UNITS, 8)]

    async def run() -> list[int | str]:
        limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
        async with httpx.AsyncClient(base_url=server, timeout=20, limits=limits) as c:
            gate = asyncio.Semaphore(CONNECTIONS)

            async def fetch(url: str) -> int | str:
                async with gate:
                    for attempt in range(2):
                        try:
                            r = await c.get(url, headers={"Accept": "text/html"})
                        except httpx.TimeoutException:
                            return f"stuck: {url}"
                        except httpx.TransportError as e:
                            # A keep-alive connection closed under the client (seen about once
                            # in five runs, with no server error): not the deadlock; once more.
                            if attempt:
                                return f"dropped twice: {url}: {e!r}"
                            continue
                        return r.status_code
                    raise AssertionError("unreachable")

            return await asyncio.gather(*(fetch(u) for u in urls))

    results = asyncio.run(run())
    assert [r for r in results if r != 200] == []
