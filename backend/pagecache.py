"""An in-process cache of rendered catalog pages and JSON, validated by the catalog version.

The microscope is read-mostly: a unit page changes only when a worker publishes a view or an
admin edits a label or a family, and every such commit bumps ``catalog_version`` (see
backend/db/version.py). This pure ASGI middleware keeps the full response (status, headers
with the ETag, body) of GET requests for catalog pages and their JSON, keyed by path, query
and htmx header, and serves it again while the version is unchanged; a hit skips the
database session, the ORM, Pydantic and Jinja. The version is read from the database at most
once per ``check_seconds`` (so a worker's commit is seen within that time) and at once after
a commit made by this process. Requests that carry the admin cookie or follow a job, and
responses that are not 200 HTML/JSON, pass through untouched.

Written by hand because no maintained ASGI cache validates against application state: the
ones on PyPI expire by time, which would show a finished render as missing.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.db import version as catalog_version
from backend.deps import ADMIN_COOKIE

CACHED_PREFIXES = ("/models/", "/api/v1/models")
CACHEABLE_TYPES = ("text/html", "application/json")
MAX_ENTRY_BYTES = 512 * 1024
# How long a request waits for the catalog version before it is served uncached.
READ_TIMEOUT_SECONDS = 0.25


@dataclass
class Entry:
    version: tuple[int, int]
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class PageCache:
    """Pure ASGI middleware; ``read_version`` returns the database's catalog version or None
    (run on ``reader``, a one-thread executor the app shuts down)."""

    def __init__(
        self,
        app: ASGIApp,
        read_version: Callable[[], int | None],
        *,
        max_bytes: int = 64 * 1024 * 1024,
        check_seconds: float = 0.02,
        reader: ThreadPoolExecutor | None = None,
    ) -> None:
        self.app = app
        self.read_version = read_version
        self.max_bytes = max_bytes
        self.check_seconds = check_seconds
        self.entries: OrderedDict[tuple[str, bytes, str], Entry] = OrderedDict()
        self.size = 0
        self._db_version: int | None = None
        self._checked_at = -1.0
        self._checked_local = -1
        # The version is read on a thread of its own, never in the event loop: a database
        # that is away (or slow to refuse) must not freeze the server. One thread, so the
        # read never waits on the handlers' thread pool or connection pool (that deadlocked
        # under load), and at most one read in flight.
        self._reader = reader or ThreadPoolExecutor(1, thread_name_prefix="catalog-version")
        self._inflight: asyncio.Future[int | None] | None = None

    async def _read(self) -> int | None:
        if self._inflight is None or self._inflight.done():
            loop = asyncio.get_running_loop()
            self._inflight = loop.run_in_executor(self._reader, self.read_version)
        try:
            # shield: a request that stops waiting leaves the read to finish for the next one.
            return await asyncio.wait_for(asyncio.shield(self._inflight), READ_TIMEOUT_SECONDS)
        except TimeoutError:
            return None

    async def version(self) -> tuple[int, int] | None:
        """(database version, this process's commits); None: do not cache now."""
        local = catalog_version.local_generation
        now = time.monotonic()
        if local != self._checked_local or now - self._checked_at >= self.check_seconds:
            # A primary-key read of one row: tens of microseconds, at most 1/check_seconds
            # times a second.
            self._db_version = await self._read()
            self._checked_at, self._checked_local = now, local
        return None if self._db_version is None else (self._db_version, local)

    def _cacheable_request(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] != "GET" or self.max_bytes <= 0:
            return False
        if not scope["path"].startswith(CACHED_PREFIXES):
            return False
        query = scope.get("query_string", b"")
        if b"job=" in query:
            return False
        cookie = Headers(scope=scope).get("cookie", "")
        return ADMIN_COOKIE not in cookie

    def _store(self, key: tuple[str, bytes, str], entry: Entry) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.size -= len(old.body)
        self.entries[key] = entry
        self.size += len(entry.body)
        while self.size > self.max_bytes and self.entries:
            _, evicted = self.entries.popitem(last=False)
            self.size -= len(evicted.body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._cacheable_request(scope):
            await self.app(scope, receive, send)
            return
        version = await self.version()
        if version is None:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        key = (scope["path"], scope.get("query_string", b""), headers.get("hx-request", ""))
        hit = self.entries.get(key)
        if hit is not None and hit.version == version:
            self.entries.move_to_end(key)
            await self._replay(hit, headers.get("if-none-match"), send)
            return
        start: Message | None = None
        chunks: list[bytes] = []
        keep = True

        async def capture(message: Message) -> None:
            nonlocal start, keep
            if message["type"] == "http.response.start":
                out = Headers(raw=message["headers"])
                keep = (
                    message["status"] == 200
                    and out.get("content-type", "").startswith(CACHEABLE_TYPES)
                    and "set-cookie" not in out
                )
                start = message
            elif message["type"] == "http.response.body" and keep:
                chunks.append(message.get("body", b""))
                if sum(map(len, chunks)) > MAX_ENTRY_BYTES:
                    keep = False
                elif not message.get("more_body") and start is not None:
                    # Cache under the version read before the response was built: a commit
                    # in between makes the entry stale at once, never wrong.
                    self._store(
                        key,
                        Entry(version, 200, list(start["headers"]), b"".join(chunks)),
                    )
            await send(message)

        await self.app(scope, receive, capture)

    @staticmethod
    async def _replay(entry: Entry, if_none_match: str | None, send: Send) -> None:
        headers = MutableHeaders(raw=list(entry.headers))
        etag = headers.get("etag")
        if if_none_match and etag and etag in [t.strip() for t in if_none_match.split(",")]:
            del headers["content-length"]
            await send({"type": "http.response.start", "status": 304, "headers": headers.raw})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": entry.status, "headers": headers.raw})
        await send({"type": "http.response.body", "body": entry.body})
