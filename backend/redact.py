"""What a visitor may read of a server-side error: the words, not the server's file layout.

Job errors and messages name dataset folders, checkpoints and temporary files by absolute
path; the jobs API and pages show them to anyone. Each absolute file path is cut to its last
part (``/srv/data/photos/cat.jpg`` -> ``…/cat.jpg``); the site's own URLs stay whole.
"""

from __future__ import annotations

import re
from typing import Any

# The site's own URL roots: "/api/v1/models/x" in a message is a link, not a file.
_SITE_ROOTS = (
    "api",
    "models",
    "objects",
    "families",
    "jobs",
    "search",
    "static",
    "partials",
    "admin",
    "docs",
)
_PATH = re.compile(r"(?<![\w.:/~])(/(?:[^\s'\"`,;:()\[\]{}<>|/]+/)+)([^\s'\"`,;:()\[\]{}<>|/]*)")
_TRACEBACK = re.compile(r"Traceback \(most recent call last\):.*", re.DOTALL)


def _cut(match: re.Match[str]) -> str:
    head, last = match.group(1), match.group(2)
    if head.split("/", 2)[1] in _SITE_ROOTS:
        return match.group(0)
    return f"…/{last}" if last else "…/"


def scrub(text: str | None) -> str | None:
    """``text`` without tracebacks and with absolute file paths cut to their last part."""
    if text is None:
        return None
    return _PATH.sub(_cut, _TRACEBACK.sub("(traceback in the worker's log)", text))


def scrub_values(params: dict[str, Any]) -> dict[str, Any]:
    """A job's parameters with every string value scrubbed (a dataset's folder, say)."""
    return {k: scrub(v) if isinstance(v, str) else v for k, v in params.items()}
