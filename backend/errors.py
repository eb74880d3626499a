"""Domain errors that handlers turn into 404/422 pages or JSON error objects."""

from __future__ import annotations


class MicroscopeError(Exception):
    status = 400
    code = "bad_request"


class NotFoundError(MicroscopeError):
    status = 404
    code = "not_found"

    def __init__(self, what: str, name: object) -> None:
        super().__init__(f"unknown {what} {name!r}")
        self.what = what
        self.name = name


class InvalidInput(MicroscopeError):
    status = 422
    code = "invalid_input"


class Unauthorized(MicroscopeError):
    status = 401
    code = "unauthorized"


class TooLarge(MicroscopeError):
    status = 413
    code = "too_large"


class NotReady(MicroscopeError):
    """The request is fine but what answers it has not been computed yet."""

    status = 409
    code = "not_ready"
