"""Bounds on what a request may carry: integers the database can store, body sizes, and
credentials checked before a write's body is read.

A path or query integer is bound at the edge so no value the database cannot hold ever reaches
a query (SQLite raises OverflowError past 64 bits, PostgreSQL a DataError past its column's
width: both were 500s). Unit indexes and offsets are ``integer`` columns (32-bit on
PostgreSQL); row ids are ``bigint``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.auth import PUBLIC_WRITES, AdminAuth
from backend.errors import MicroscopeError, TooLarge, Unauthorized
from backend.failures import error_response

INT_MAX = 2**31 - 1  # an `integer` column
BIGINT_MAX = 2**63 - 1  # a `bigint` id


def storable_index(n: int) -> bool:
    """True when ``n`` fits an ``integer`` column (a larger unit index names nothing)."""
    return 0 <= n <= INT_MAX


def storable_id(n: int) -> bool:
    """True when ``n`` fits a ``bigint`` id (a larger id names nothing)."""
    return 0 <= n <= BIGINT_MAX


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NEEDS_TOKEN = "this write needs the admin token (Authorization: Bearer <token>)"

Offset = Annotated[int, Query(ge=0, le=INT_MAX, description="index of the first item")]
FollowedJob = Annotated[
    int | None, Query(alias="job", ge=1, le=BIGINT_MAX, description="a job to follow live")
]


class GuardedWrites:
    """Pure ASGI middleware run before any route: a write without admin credentials is
    refused (401) and a body over ``max_bytes`` is refused (413), both before the body is
    read. A declared Content-Length is checked at once; a chunked body is counted as it
    streams and cut off at the limit.

    FastAPI reads a request's body before it resolves the route's dependencies, so the
    admin check in backend/deps.py alone would let anyone make the server read (and parse)
    any body; this guard checks the same credentials (backend/auth.py) from the headers.
    """

    def __init__(self, app: ASGIApp, auth: AdminAuth, max_bytes: int) -> None:
        self.app = app
        self.auth = auth
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["path"] not in PUBLIC_WRITES and not self.auth.authorized(headers):
            await self._refuse(scope, receive, send, Unauthorized(NEEDS_TOKEN))
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, TooLarge(self._too_large()))
            return
        await self.app(scope, self._counting(receive), send)

    def _too_large(self) -> str:
        return f"the request body is over the limit of {self.max_bytes} bytes"

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises HTTPExceptions from body reading; the app's handler
                    # answers it as the JSON error.
                    raise HTTPException(413, self._too_large())
            return message

        return counted

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, exc: MicroscopeError) -> None:
        request = Request(scope, receive)
        response = error_response(request, exc.status, exc.code, str(exc))
        await response(scope, receive, send)
