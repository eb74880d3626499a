"""The JSON the weight-views job stores for a layer's structure (circuits, banding, groups,
properties, branches, the first-pair SVD): written by the workers with ``model_dump``, read
back by the web with ``model_validate``, so both sides agree on every field.

A view that does not apply to a layer is still stored, empty, with its ``reason``: the page
says why instead of showing nothing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

# artifact kind -> payload model (kinds are registered in backend/db/models.py)
CIRCUITS = "circuits"
BANDING = "weights_banding"
CLUSTERS = "weights_clusters"
PROPERTIES = "weights_properties"
BRANCHES = "weights_branches"
SVD_PAIR = "weights_svd_pair"


class Payload(BaseModel):
    """Every structure view: its fields, or why it is empty."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = None  # why the view is empty, when it is


class Links(BaseModel):
    """A unit's strongest links: (unit index, summed weight), strongest first."""

    positive: list[tuple[int, float]] = []
    negative: list[tuple[int, float]] = []


class UnitLinks(BaseModel):
    inputs: Links | None = None  # from the previous layer's units
    outputs: Links | None = None  # to the next layer's units


class CircuitPath(BaseModel):
    """How two layers were joined: one conv's kernel, or the linearised path's expansion."""

    layer: str  # the other layer
    method: Literal["weights", "expanded"]
    convs: list[str]  # the convolutions on the path, in forward order
    reason: str | None = None  # why there are no links this way (then units carry none)


class CircuitsPayload(Payload):
    inputs: CircuitPath | None = None
    outputs: CircuitPath | None = None
    units: list[UnitLinks] = []


class BandingPayload(Payload):
    maps: str = ""  # what was measured, e.g. "NMF-RGB maps, 3x3"
    score: float | None = None  # mean over units of horizontal minus vertical share
    horizontal: float | None = None  # mean share of structure in horizontal bands
    vertical: float | None = None
    baseline: float | None = None  # either share for independent noise
    # (horizontal, vertical) share of each unit; None for a unit with no map (a 1x1 branch)
    units: list[tuple[float, float] | None] = []


class Group(BaseModel):
    units: list[int]
    centroid: list[float]  # kh*kw unit-length spatial shape, row by row


class ClustersPayload(Payload):
    kernel: tuple[int, int] | None = None
    k: int | None = None
    silhouettes: list[tuple[int, float]] = []  # (k, silhouette) for every k tried
    groups: list[Group] = []  # largest first


class PropertiesPayload(Payload):
    first_layer: str = ""  # the layer whose kernels read the image
    carried: bool = False  # read through the linearised path from the first layer
    colour: list[float | None] = []  # per unit: share off the grey axis, 0..1
    frequency: list[float | None] = []  # per unit: mean radial frequency, cycles/pixel


class BranchOut(BaseModel):
    name: str
    start: int
    stop: int
    convs: str = ""


class BranchesPayload(Payload):
    source: Literal["concatenation", "groups", "none"] = "none"
    branches: list[BranchOut] = []


class SvdPairPayload(Payload):
    first: str = ""  # the first convolution (its units are placed)
    second: list[str] = []  # the convolution(s) reading them
    units: list[tuple[float, float]] = []  # each first-layer unit's two coordinates
    explained: list[float] = []  # share of |W|'s squared norm on each singular vector
    singular_values: list[float] = []


PAYLOADS: dict[str, type[Payload]] = {
    CIRCUITS: CircuitsPayload,
    BANDING: BandingPayload,
    CLUSTERS: ClustersPayload,
    PROPERTIES: PropertiesPayload,
    BRANCHES: BranchesPayload,
    SVD_PAIR: SvdPairPayload,
}
