"""A layer's branches on its pages: each branch's share, the grid grouped by branch, and the
bands a branched layer's box shows in the model's layer diagram."""

from __future__ import annotations

from typing import Any

from contracts.layout import Branch


def branch_shares(branches: list[Branch] | None, unit_count: int) -> list[dict[str, Any]]:
    """Each branch with its size and its share of the layer's units (percent)."""
    total = max(unit_count, 1)
    return [
        {"branch": b, "size": b.size, "share": round(100.0 * b.size / total, 1)}
        for b in branches or []
    ]


def group_units(units: list[dict[str, Any]], branches: list[Branch] | None) -> list[dict[str, Any]]:
    """One page of the grid as runs of units of the same branch ({branch, units}); a layer
    without branches is one run with branch None."""
    groups: list[dict[str, Any]] = []
    for u in units:
        branch = next((b for b in branches or [] if b.start <= u["index"] < b.stop), None)
        if not groups or groups[-1]["branch"] != branch:
            groups.append({"branch": branch, "units": []})
        groups[-1]["units"].append(u)
    return groups


def branch_bands(
    branches: list[Branch] | None, unit_count: int, y: float, h: float
) -> list[dict[str, Any]]:
    """Horizontal bands splitting a diagram box (top ``y``, height ``h``) by branch size."""
    bands, at, total = [], y, max(unit_count, 1)
    for b in branches or []:
        bh = h * b.size / total
        bands.append({"name": b.name, "y": round(at, 1), "h": round(bh, 1), "size": b.size})
        at += bh
    return bands
