"""How a layer's raw output maps onto units: stored with each layer, read by every task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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


class Branch(BaseModel):
    """One of the parallel branches whose outputs a layer lays side by side on its unit axis
    (an Inception module's 1x1, 3x3, 5x5 and pool branches): units ``start`` to ``stop - 1``."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="the branch's name, e.g. '5x5'")
    start: int = Field(ge=0, description="its first unit")
    stop: int = Field(gt=0, description="one past its last unit")

    @property
    def size(self) -> int:
        """How many units the branch holds."""
        return self.stop - self.start


def branches_from_json(data: list[dict[str, Any]] | None) -> list[Branch] | None:
    """Branches as stored in a layer row (None: the layer has no branches)."""
    return [Branch.model_validate(b) for b in data] if data else None


def branch_of(branches: list[Branch] | None, unit: int) -> Branch | None:
    """The branch holding ``unit``, if the layer has branches."""
    return next((b for b in branches or [] if b.start <= unit < b.stop), None)
