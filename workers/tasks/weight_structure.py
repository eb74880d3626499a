"""The weight-views job's structure views of a layer (METHODS §6): circuits to the layers on
either side, banding, k-means groups, first-layer properties carried up, derived branches,
and, on the first layer, the SVD of the weights between the first two convolutions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import delete
from sqlalchemy.orm import Session

from backend.db.models import Artifact, Layer, Model
from backend.storage import ObjectStore
from contracts import weight_views as wv
from workers.ml.banding import banding
from workers.ml.branches import DerivedBranch, concat_branches, group_branches
from workers.ml.circuits import NoCircuit, PathWeights, path_weights, strongest
from workers.ml.weight_clusters import kmeans_groups, spatial_shapes
from workers.ml.weight_properties import carried, colour_share, spatial_frequency
from workers.ml.weights import (
    ConvCall,
    NmfRgb,
    NoWeights,
    UnitWeights,
    expand,
    first_pair,
    nmf_rgb,
    svd_placement,
    unit_weights,
)
from workers.tasks.artifacts import publish_json

STRUCTURE_VERSION = 1
TOP_LINKS = 8  # strongest inputs (and outputs) listed per unit, each sign
# Layer kinds whose units are not channels of a feature map: no circuits through them.
_NOT_MAPS = ("linear", "head", "mlp")


def circuit_chain(layers: list[Layer]) -> list[Layer]:
    """The layers circuits run between: feature-map layers (the stem and default layers) in
    forward order."""
    return [x for x in layers if x.kind not in _NOT_MAPS and x.layout.get("kind") == "nchw"]


def _round(v: float) -> float:
    return float(f"{v:.5g}")


@dataclass
class StructureRun:
    """One job's structure views: the model, its circuit chain, and what is shared between
    layers (path matrices, first-layer properties), computed once."""

    session: Session
    store: ObjectStore
    model: Model
    image_model: Any  # torch module
    order: list[ConvCall]
    chain: list[Layer]
    layers: list[Layer]  # the job's layers
    _paths: dict[tuple[str, str], PathWeights | str] = field(default_factory=dict)
    _first: dict[str, Any] | None = None
    _concats: dict[str, list[DerivedBranch]] | None = None

    # shared computations
    def pair(self, source: Layer, target: Layer) -> PathWeights | str:
        """The summed expanded weights from ``source``'s units to ``target``'s, or why none."""
        key = (source.name, target.name)
        if key not in self._paths:
            try:
                found = path_weights(
                    self.image_model, source.module_path, [target.module_path], source.unit_count
                )
                self._paths[key] = found[target.module_path]
            except NoCircuit as e:
                self._paths[key] = str(e)
        return self._paths[key]

    def first_layer(self) -> dict[str, Any]:
        """The first convolution's colour and frequency per unit, and every chain layer's
        matrix from it (one linearised pass), or a reason."""
        if self._first is None:
            self._first = self._read_first_layer()
        return self._first

    def _read_first_layer(self) -> dict[str, Any]:
        if not self.order:
            return {"reason": "the model has no convolutions"}
        path = self.order[0].path
        weight = expand(self.image_model, [path]).numpy()  # (C, C_in, kh, kw)
        if weight.shape[1] != 3:
            return {"reason": f"the first convolution ({path}) does not read R, G, B"}
        targets = [x.module_path for x in self.chain if x.module_path != path]
        try:
            mats = path_weights(self.image_model, path, targets, weight.shape[0])
        except NoCircuit as e:
            mats, reason = {}, str(e)
        else:
            reason = ""
        return {
            "path": path,
            "colour": colour_share(weight),
            "frequency": spatial_frequency(weight),
            "matrices": {t: p.matrix for t, p in mats.items()},
            "reason": reason,
        }

    def concatenations(self) -> dict[str, list[DerivedBranch]]:
        """Branches read from concatenations, for every layer of the chain (one pass)."""
        if self._concats is None:
            size = int(self.model.input_size or 224)
            paths = list(dict.fromkeys(x.module_path for x in [*self.chain, *self.layers]))
            self._concats = concat_branches(self.image_model, paths, size)
        return self._concats

    # publishing
    def _publish(self, layer: Layer | None, kind: str, payload: wv.Payload, **params: Any) -> None:
        publish_json(
            self.session,
            self.store,
            payload,
            model=self.model,
            layer=layer,
            unit=None,
            kind=kind,
            variant="",
            params={"version": STRUCTURE_VERSION, **params},
            meta={"reason": payload.reason} if payload.reason else None,
        )

    def publish_layer(
        self,
        layer: Layer,
        uw: UnitWeights | None,
        maps: np.ndarray | None,
        reason: str,
        sets: list[KernelSet] | None = None,
    ) -> str:
        """Every structure view of ``layer``; ``uw``/``maps`` are its kernels and NMF-RGB maps
        (None, with ``reason``, where there are none), ``sets`` its :meth:`kernel_sets` where
        already made. Returns what was published."""
        if sets is None:
            sets = self.kernel_sets(layer, uw, maps)  # before any write (see tasks/weights.py)
        self.session.execute(
            delete(Artifact).where(
                Artifact.layer_id == layer.id,
                Artifact.kind.in_(list(wv.PAYLOADS)),
                Artifact.unit_index.is_(None),
            )
        )
        done = [
            self._banding(layer, sets, reason if not sets else ""),
            self._clusters(layer, sets, reason if not sets else ""),
            self._branches(layer, uw),
            self._properties(layer, uw),
            self._circuits(layer),
        ]
        if uw is not None and self.order and uw.convs[-1] == self.order[0].path:
            done.append(self._svd_pair(layer))
        return ", ".join(d for d in done if d)

    def kernel_sets(
        self, layer: Layer, uw: UnitWeights | None, maps: np.ndarray | None
    ) -> list[KernelSet]:
        """The layer's kernels in sets that share an input space: the layer's own, or, for a
        layer concatenated from branches (an Inception module), each branch's own kernel
        with its NMF-RGB maps fitted per branch."""
        if uw is not None:
            return [KernelSet(layer.name, 0, uw, maps)]
        sets = []
        for b in self.concatenations().get(layer.module_path, []):
            path = f"{layer.module_path}.{b.name}" if layer.module_path else b.name
            try:
                buw = unit_weights(self.image_model, path, b.stop - b.start, self.order)
            except (NoWeights, AttributeError):
                continue
            spatial = buw.weight.shape[2] * buw.weight.shape[3] > 1
            fit = nmf_rgb(buw.weight) if spatial else None  # 3 colours, as the layer's
            sets.append(
                KernelSet(shown_name(layer, b), b.start, buw, fit.maps if fit else None, fit)
            )
        return sets

    def _banding(self, layer: Layer, sets: list[KernelSet], reason: str) -> str:
        spatial = [k for k in sets if k.maps is not None]
        if not spatial:
            why = reason or (
                "its units come from 1x1 convolutions with no spatial convolution before them "
                "in the layer: no kernel maps, so no rows or columns to compare"
            )
            self._publish(layer, wv.BANDING, wv.BandingPayload(reason=why), method="banding")
            return ""
        units: list[tuple[float, float] | None] = [None] * layer.unit_count
        baselines = []
        for k in spatial:
            assert k.maps is not None
            b = banding(k.maps)
            for i in np.flatnonzero(b.counted):
                units[k.offset + int(i)] = (_round(b.horizontal[i]), _round(b.vertical[i]))
                baselines.append(b.baseline)
        shares = np.array([u for u in units if u is not None]).reshape(-1, 2)
        payload = wv.BandingPayload(
            maps=_describe(sets, len(sets) > 1 or sets[0].name != layer.name),
            score=_round(float(np.mean(shares[:, 0] - shares[:, 1]))) if len(shares) else None,
            horizontal=_round(float(shares[:, 0].mean())) if len(shares) else None,
            vertical=_round(float(shares[:, 1].mean())) if len(shares) else None,
            baseline=_round(float(np.mean(baselines))) if baselines else None,
            units=units,
        )
        self._publish(layer, wv.BANDING, payload, method="banding", maps="nmf-rgb")
        return f"banding {payload.score}"

    def _clusters(self, layer: Layer, sets: list[KernelSet], reason: str) -> str:
        # Shapes are compared position by position: only kernels of one size group together
        # (the commonest spatial size; an Inception module's 1x1 branches have no shape).
        spatial = [k for k in sets if k.kernel[0] * k.kernel[1] > 1]
        sizes = [k.kernel for k in spatial for _ in range(k.uw.weight.shape[0])]
        if not spatial:
            why = reason or "its kernels are 1x1: every unit has the same (one-position) shape"
            self._publish(layer, wv.CLUSTERS, wv.ClustersPayload(reason=why), method="kmeans")
            return ""
        kernel = max(set(sizes), key=sizes.count)
        chosen = [k for k in spatial if k.kernel == kernel]
        index = np.concatenate([k.offset + np.arange(k.uw.weight.shape[0]) for k in chosen])
        try:
            c = kmeans_groups(np.concatenate([spatial_shapes(k.uw.weight) for k in chosen]))
        except ValueError as e:
            self._publish(layer, wv.CLUSTERS, wv.ClustersPayload(reason=str(e)), method="kmeans")
            return ""
        payload = wv.ClustersPayload(
            kernel=kernel,
            k=c.k,
            silhouettes=[(k, _round(s)) for k, s in c.silhouettes.items()],
            groups=[
                wv.Group(
                    units=[int(u) for u in index[c.labels == g]],
                    centroid=[_round(float(v)) for v in c.centroids[g]],
                )
                for g in range(c.k)
            ],
        )
        self._publish(layer, wv.CLUSTERS, payload, method="kmeans", shapes="norm-over-inputs")
        return f"{c.k} groups"

    def _branches(self, layer: Layer, uw: UnitWeights | None) -> str:
        found = self.concatenations().get(layer.module_path, [])
        source = "concatenation"
        if not found and uw is not None:
            found, source = group_branches(self.image_model.get_submodule(uw.convs[-1])), "groups"
        if not found:
            payload = wv.BranchesPayload(
                reason="its units are not concatenated from branches, nor made by a grouped "
                "convolution (a residual block adds its paths into every unit)"
            )
        else:
            payload = wv.BranchesPayload(
                source=source,  # type: ignore[arg-type]
                branches=[
                    wv.BranchOut(**{**b.__dict__, "name": shown_name(layer, b)}) for b in found
                ],
            )
        self._publish(layer, wv.BRANCHES, payload, method=source)
        return f"{len(found)} branches" if found else ""

    def _properties(self, layer: Layer, uw: UnitWeights | None) -> str:
        first = self.first_layer()
        if "path" not in first:
            self._publish(layer, wv.PROPERTIES, wv.PropertiesPayload(reason=first["reason"]))
            return ""
        own = uw is not None and uw.convs == [first["path"]]
        if own:
            colour, freq = first["colour"], first["frequency"]
        elif layer.module_path in first["matrices"]:
            mat = first["matrices"][layer.module_path]
            colour, freq = carried(first["colour"], mat), carried(first["frequency"], mat)
        else:
            why = first["reason"] or f"{layer.name} is not reached from {first['path']}"
            self._publish(layer, wv.PROPERTIES, wv.PropertiesPayload(reason=why))
            return ""

        def values(a: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else _round(float(v)) for v in a]

        payload = wv.PropertiesPayload(
            first_layer=first["path"],
            carried=not own,
            colour=values(colour),
            frequency=values(freq),
        )
        self._publish(layer, wv.PROPERTIES, payload, method="colour-frequency", first=first["path"])
        return "properties"

    def _links(
        self, path: PathWeights | str, other: Layer, side: str, units: int
    ) -> tuple[wv.CircuitPath, list[dict[str, list[tuple[int, float]]]] | None]:
        if isinstance(path, str):
            return wv.CircuitPath(layer=other.name, method="expanded", convs=[], reason=path), None
        info = wv.CircuitPath(
            layer=other.name, method="weights" if path.direct else "expanded", convs=path.convs
        )
        # inputs: rows of the (this, previous) matrix; outputs: columns of (next, this).
        m = path.matrix if side == "inputs" else path.matrix.T  # (units, other units)
        links = [strongest(m[u], TOP_LINKS) for u in range(units)]
        return info, links

    def _circuits(self, layer: Layer) -> str:
        names = [x.name for x in self.chain]
        if layer.name not in names:
            payload = wv.CircuitsPayload(reason="its units are not channels of a feature map")
            self._publish(layer, wv.CIRCUITS, payload, method="circuits")
            return ""
        i = names.index(layer.name)
        prev = self.chain[i - 1] if i > 0 else None
        nxt = self.chain[i + 1] if i + 1 < len(self.chain) else None
        n = layer.unit_count
        units = [wv.UnitLinks() for _ in range(n)]
        inputs = outputs = None
        params: dict[str, Any] = {"method": "summed-expanded-weights"}
        if prev is not None:
            inputs, links = self._links(self.pair(prev, layer), prev, "inputs", n)
            params["inputs"] = inputs.model_dump(exclude={"reason"})  # the pair and method
            for u, ln in enumerate(links or []):
                units[u].inputs = wv.Links(**_rounded(ln))
        if nxt is not None:
            outputs, links = self._links(self.pair(layer, nxt), nxt, "outputs", n)
            params["outputs"] = outputs.model_dump(exclude={"reason"})
            for u, ln in enumerate(links or []):
                units[u].outputs = wv.Links(**_rounded(ln))
        payload = wv.CircuitsPayload(inputs=inputs, outputs=outputs, units=units)
        self._publish(layer, wv.CIRCUITS, payload, **params)
        return "circuits"

    def _svd_pair(self, layer: Layer) -> str:
        try:
            pair = first_pair(self.image_model, self.order)
            svd = svd_placement(pair.weight)
        except NoWeights as e:
            self._publish(layer, wv.SVD_PAIR, wv.SvdPairPayload(reason=str(e)), method="svd-pair")
            return ""
        sq = svd.singular_values**2
        payload = wv.SvdPairPayload(
            first=pair.first,
            second=pair.second,
            units=[(_round(a), _round(b)) for a, b in svd.inputs],
            explained=[_round(float(v)) for v in sq[:2] / sq.sum()],
            singular_values=[_round(float(v)) for v in svd.singular_values[:16]],
        )
        self._publish(layer, wv.SVD_PAIR, payload, method="svd-abs-sum", second=pair.second)
        return "first-pair SVD"


def shown_name(layer: Layer, branch: DerivedBranch) -> str:
    """A branch read from the network, named as the catalog names the same units (GoogLeNet's
    child module ``branch3`` is the layer's ``5x5`` branch), so every view of a layer speaks
    of its branches by one name; the module's own name where the catalog lists none."""
    for b in layer.branches or []:
        if (b.get("start"), b.get("stop")) == (branch.start, branch.stop):
            return str(b["name"])
    return branch.name


@dataclass
class KernelSet:
    """Kernels of some of a layer's units that read one input space (and their maps)."""

    name: str  # the layer, or the branch
    offset: int  # the first unit's index in the layer
    uw: UnitWeights
    maps: np.ndarray | None  # (N, kh, kw, 3) NMF-RGB maps; None for 1x1 kernels
    nmf: NmfRgb | None = None  # the fit itself, where made for this set alone (a branch)

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.uw.weight.shape[2]), int(self.uw.weight.shape[3])


def _describe(sets: list[KernelSet], branched: bool) -> str:
    """What the banding was measured on, e.g. "NMF-RGB maps, 3x3, expanded through ..."."""
    if not branched:
        k = sets[0]
        through = f", expanded through {', '.join(k.uw.convs[1:])}" if k.uw.expanded else ""
        return f"NMF-RGB maps, {k.kernel[0]}x{k.kernel[1]}{through}"
    parts = [
        f"{k.name} branch, {k.kernel[0]}x{k.kernel[1]} kernels ({k.uw.weight.shape[0]} units)"
        for k in sets
        if k.maps is not None
    ]
    flat = [f"{k.name} branch" for k in sets if k.maps is None]
    text = "NMF-RGB maps fitted per branch on each branch's own kernels: " + ", ".join(parts)
    return text + (f"; {', '.join(flat)} are 1x1 and not counted" if flat else "")


def _rounded(links: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    return {k: [(i, _round(w)) for i, w in v] for k, v in links.items()}
