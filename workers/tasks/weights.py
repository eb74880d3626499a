"""Task: weight views of a model's layers — NMF-RGB per unit, SVD placement per layer."""

from __future__ import annotations

import numpy as np
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db.models import Artifact, Job, Layer, Model
from backend.storage import ObjectStore, make_store
from contracts.jobs import TASK_WEIGHT_VIEWS, WeightViewsParams
from workers.ml.images import png_bytes
from workers.ml.weights import (
    COLOURS,
    NmfRgb,
    NoWeights,
    SvdPlacement,
    UnitWeights,
    colour_share,
    conv_order,
    explained,
    factors_artifact,
    nmf_rgb,
    rgb_image,
    svd_artifact,
    svd_placement,
    unit_weights,
)
from workers.tasks.artifacts import publish, publish_json
from workers.tasks.jobrun import Progress, job_task, params_of
from workers.tasks.runtime import cached_model, device, ready_model
from workers.tasks.weight_structure import KernelSet, StructureRun, circuit_chain

WEIGHTS_VERSION = 1
NMF_COMPONENTS = len(COLOURS)
NMF_PNG_SIZE = 96  # pixels a side: each kernel position a square of whole pixels


def weight_layers(session: Session, model: Model, names: list[str] | str) -> list[Layer]:
    """The job's layers: ``"default"`` means the default layers and the stem (the classic
    weight view: a kernel over RGB), else the named ones."""
    q = select(Layer).where(Layer.model_id == model.id)
    if names == "default":
        q = q.where(or_(Layer.is_default.is_(True), Layer.kind == "stem"))
    else:
        q = q.where(Layer.name.in_(names))
    return list(session.scalars(q.order_by(Layer.order)))


def _publish_layer(
    session: Session, store: ObjectStore, model: Model, layer: Layer, uw: UnitWeights
) -> tuple[str, np.ndarray | None]:
    """One layer's weight views of its kernels ``uw``; returns what was published and the
    units' NMF-RGB maps (None for 1x1 kernels)."""
    c_out, _, kh, kw = uw.weight.shape
    base = {"convs": uw.convs, "version": WEIGHTS_VERSION}
    # The numerics first, the writes after: under SQLite a write holds the database's one
    # write lock until the layer commits, and the job's lease heartbeat must not wait on it.
    try:
        svd: SvdPlacement | None = svd_placement(uw.weight)
        no_svd = ""
    except NoWeights as e:
        svd, no_svd = None, str(e)
    nmf = nmf_rgb(uw.weight, NMF_COMPONENTS) if kh * kw > 1 else None
    # One set of weight views per layer: a newer code version replaces the older one.
    session.execute(
        delete(Artifact).where(
            Artifact.layer_id == layer.id, Artifact.kind.in_(("weights_nmf", "weights_svd"))
        )
    )
    done = []
    if svd is None:
        done.append(f"no SVD: {no_svd}")
    else:
        publish_json(
            session,
            store,
            svd_artifact(uw, svd),
            model=model,
            layer=layer,
            unit=None,
            kind="weights_svd",
            variant="",
            params={**base, "method": "svd-abs-sum"},
            meta={"units": c_out, "inputs": uw.inputs, "explained": explained(svd)},
        )
        done.append("SVD")
    if nmf is None:
        done.append("no NMF-RGB: 1x1 kernels and no spatial convolution feeds them")
        return "; ".join(done), None
    _publish_nmf(session, store, model, layer, uw, nmf)
    done.append(f"NMF-RGB of {c_out} units")
    return "; ".join(done), nmf.maps


def _publish_nmf(
    session: Session,
    store: ObjectStore,
    model: Model,
    layer: Layer,
    uw: UnitWeights,
    nmf: NmfRgb,
    *,
    offset: int = 0,
    branch: str | None = None,
) -> None:
    """Each unit's NMF-RGB image and what the three colours read: for the whole layer, or
    (``branch``, its units from ``offset``) for one branch fitted on its own kernels, whose
    colours then mean the same only within that branch (factors variant ``factors-BRANCH``)."""
    c_out, _, kh, kw = uw.weight.shape
    params = {
        "convs": uw.convs,
        "version": WEIGHTS_VERSION,
        "method": "nmf-rgb",
        "components": NMF_COMPONENTS,
        "size": NMF_PNG_SIZE,
        **({"branch": branch} if branch else {}),
    }
    factors = factors_artifact(uw, nmf)
    publish_json(
        session,
        store,
        factors,
        model=model,
        layer=layer,
        unit=None,
        kind="weights_nmf",
        variant=f"factors-{branch}" if branch else "factors",
        params=params,
        meta={"inputs": uw.inputs, "kernel": [kh, kw], "error": factors.error},
    )
    extra = {"branch": branch} if branch else {}
    for u in range(c_out):
        publish(
            session,
            store,
            model=model,
            layer=layer,
            unit=offset + u,
            kind="weights_nmf",
            variant="rgb",
            params=params,
            data=png_bytes(rgb_image(nmf.maps[u], NMF_PNG_SIZE)),
            ext="png",
            content_type="image/png",
            meta={"kernel": [kh, kw], "colour_share": colour_share(nmf.maps[u]), **extra},
        )


def _publish_branches(
    session: Session, store: ObjectStore, model: Model, layer: Layer, sets: list[KernelSet]
) -> str:
    """NMF-RGB images of a layer concatenated from branches, branch by branch (each fitted
    on its own kernels); branches of 1x1 kernels have none."""
    session.execute(
        delete(Artifact).where(
            Artifact.layer_id == layer.id, Artifact.kind.in_(("weights_nmf", "weights_svd"))
        )
    )
    drawn = [k for k in sets if k.nmf is not None]
    for k in drawn:
        assert k.nmf is not None
        _publish_nmf(session, store, model, layer, k.uw, k.nmf, offset=k.offset, branch=k.name)
    if not drawn:
        return ""
    return "NMF-RGB per branch: " + ", ".join(
        f"{k.name} ({k.uw.weight.shape[0]} units)" for k in drawn
    )


def weight_views(session: Session, job: Job, progress: Progress) -> str:
    """NMF-RGB images, SVD placements and structure views (circuits, banding, groups,
    properties, branches) for the job's layers (no images needed)."""
    p = params_of(job, WeightViewsParams)
    model = ready_model(session, p.model_id)
    layers = weight_layers(session, model, p.layers)
    if not layers:
        raise ValueError(f"model {model.slug} has none of the layers {p.layers}")
    store = make_store(get_settings())
    session.commit()
    loaded = cached_model(model.spec, device())
    order = conv_order(loaded.image_model, int(loaded.preprocess.input_size))
    structure = StructureRun(
        session,
        store,
        model,
        loaded.image_model,
        order,
        circuit_chain(weight_layers(session, model, "default")),
        layers,
    )
    results = []
    for i, layer in enumerate(layers):
        progress(i, len(layers), f"{layer.name}: weight views")
        uw, maps, reason = None, None, ""
        try:
            uw = unit_weights(loaded.image_model, layer.module_path, layer.unit_count, order)
            done, maps = _publish_layer(session, store, model, layer, uw)
            results.append(f"{layer.name}: {done}")
        except NoWeights as e:
            reason = str(e)
            results.append(f"{layer.name}: skipped ({e})")
        sets = structure.kernel_sets(layer, uw, maps)
        if uw is None and sets:
            drawn = _publish_branches(session, store, model, layer, sets)
            if drawn:
                results[-1] += f"; {drawn}"
        more = structure.publish_layer(layer, uw, maps, reason, sets)
        if more:
            results[-1] += f"; {more}"
        session.commit()  # layer by layer: a lost worker loses one layer
    return " | ".join(results)


weight_views_task = job_task(TASK_WEIGHT_VIEWS, weight_views)
