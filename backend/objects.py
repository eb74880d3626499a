"""Serve stored objects with ETags, 304s and long-lived caching."""

from __future__ import annotations

import mimetypes
from email.utils import format_datetime

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from backend.errors import NotFoundError
from backend.storage import InvalidKey, NotFound
from backend.storage.local import LocalStore

router = APIRouter(tags=["objects"])

# Keys embed the hash of the parameters that made them, so their bytes never change.
IMMUTABLE = "public, max-age=31536000, immutable"


@router.get("/objects/{key:path}", include_in_schema=False)
def get_object(key: str, request: Request) -> Response:
    store = request.app.state.store
    try:
        info = store.stat(key)
    except (InvalidKey, NotFound) as e:
        raise NotFoundError("object", key) from e
    etag = f'"{info.etag}"'
    headers = {
        "ETag": etag,
        "Cache-Control": IMMUTABLE,
        "Last-Modified": format_datetime(info.last_modified, usegmt=True),
    }
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    media = mimetypes.guess_type(key)[0] or "application/octet-stream"
    if isinstance(store, LocalStore):
        return FileResponse(store.path(key), media_type=media, headers=headers)
    return Response(store.get(key), media_type=media, headers=headers)
