"""How a layer's raw output maps onto units: stored with each layer, read by every task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Layout:
    """How a layer's raw output maps onto (N, units, H, W) unit maps.

    kind: 'nchw' (conv), 'nhwc' (channels-last blocks), 'nlc' (transformer tokens, batch first),
    'lnc' (transformer tokens, sequence first), 'nc' (vectors).
    prefix_tokens: class/register tokens before the patch grid (dropped from spatial maps).
    """

    kind: str
    prefix_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON stored in the layer row."""
        return {"kind": self.kind, "prefix_tokens": self.prefix_tokens}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Layout:
        """Read back what :meth:`to_dict` stored."""
        return cls(kind=str(data["kind"]), prefix_tokens=int(data.get("prefix_tokens", 0)))
