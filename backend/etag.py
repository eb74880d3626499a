"""ETags on every page and JSON response, with 304s for conditional requests.

Objects under /objects carry their own strong ETags; everything else that is small and
dynamic gets a weak ETag from a hash of its body, so browsers and proxies revalidate cheaply.
"""

from __future__ import annotations

import hashlib

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CACHEABLE = ("text/html", "application/json")


class ETagMiddleware:
    """Pure ASGI middleware: buffers GET 200 HTML/JSON bodies, tags them, answers 304."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        if_none_match = Headers(scope=scope).get("if-none-match")
        start: Message | None = None
        body: list[bytes] = []
        passthrough = False

        async def wrapped(message: Message) -> None:
            nonlocal start, passthrough
            if passthrough or message["type"] not in ("http.response.start", "http.response.body"):
                await send(message)  # e.g. Starlette's http.response.debug for templates
                return
            if message["type"] == "http.response.start":
                headers = Headers(raw=message["headers"])
                ctype = headers.get("content-type", "")
                if message["status"] != 200 or "etag" in headers or not ctype.startswith(CACHEABLE):
                    passthrough = True
                    await send(message)
                    return
                start = message
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            assert start is not None
            data = b"".join(body)
            etag = f'W/"{hashlib.blake2b(data, digest_size=12).hexdigest()}"'
            headers = MutableHeaders(raw=start["headers"])
            headers["etag"] = etag
            headers.setdefault("cache-control", "no-cache")
            if if_none_match and etag in [t.strip() for t in if_none_match.split(",")]:
                del headers["content-length"]
                start["status"] = 304
                await send(start)
                await send({"type": "http.response.body", "body": b""})
                return
            await send(start)
            await send({"type": "http.response.body", "body": data})

        await self.app(scope, receive, wrapped)
