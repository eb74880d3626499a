"""Planted weight-structure payloads for page, API and browser tests: a GoogLeNet-like model
with a stem (8 units), a branched layer (480 units, as inception3b) and a linear head."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db.models import Family, FamilyMember, Model, Unit
from backend.storage import ObjectStore
from contracts import weight_views as wv
from tests.factories import make_artifact, make_layer, make_model


def put(session, store, m, layer, kind: str, payload: BaseModel) -> None:  # type: ignore[no-untyped-def]
    blob = json.dumps(payload.model_dump(mode="json")).encode()
    make_artifact(session, store, m, layer, None, kind, blob, "json", "application/json", "")


def nmf_png(seed: int) -> bytes:
    cells = np.random.default_rng(seed).integers(0, 256, size=(3, 3, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.repeat(np.repeat(cells, 32, 0), 32, 1), "RGB").save(buf, "PNG")
    return buf.getvalue()


def plant_structure(session: Session, store: ObjectStore) -> Model:
    """Circuits, banding, groups, properties and branches stored for the planted model;
    30 units of inception3b labelled as curves (all in branch3, the article's 5x5 branch)."""
    m = make_model(session, "gnet")
    stem = make_layer(session, m, "conv1", units=8, order=0)
    mixed = make_layer(session, m, "inception3b", units=480, order=1)
    head = make_layer(session, m, "fc", units=10, order=2)
    head.kind = "linear"
    # NMF images: every stem unit, and three of inception3b's.
    for u in (330, 340, 345):
        png = nmf_png(u)
        make_artifact(session, store, m, mixed, u, "weights_nmf", png, "png", "image/png", "rgb")
    for u in range(8):
        png = nmf_png(u)
        make_artifact(session, store, m, stem, u, "weights_nmf", png, "png", "image/png", "rgb")
    mixed_links = [wv.UnitLinks() for _ in range(480)]
    mixed_links[340] = wv.UnitLinks(
        inputs=wv.Links(positive=[(3, 0.5), (1, 0.25)], negative=[(6, -0.4)])
    )
    put(session, store, m, mixed, wv.CIRCUITS, wv.CircuitsPayload(
        inputs=wv.CircuitPath(layer="conv1", method="expanded", convs=["a", "b", "c"]),
        units=mixed_links,
    ))
    stem_links = [wv.UnitLinks() for _ in range(8)]
    stem_links[3] = wv.UnitLinks(outputs=wv.Links(positive=[(340, 0.5)]))
    put(session, store, m, stem, wv.CIRCUITS, wv.CircuitsPayload(
        outputs=wv.CircuitPath(layer="inception3b", method="weights", convs=["mixed.conv"]),
        units=stem_links,
    ))
    put(session, store, m, mixed, wv.BANDING, wv.BandingPayload(
        maps="NMF-RGB maps, 3x3", score=0.42, horizontal=0.6, vertical=0.18, baseline=0.25,
        units=[(0.6, 0.18)] * 480,
    ))
    put(session, store, m, stem, wv.BANDING, wv.BandingPayload(
        reason="its units come from 1x1 convolutions with no spatial convolution before them"
    ))
    put(session, store, m, stem, wv.SVD_PAIR, wv.SvdPairPayload(
        first="conv1.conv", second=["conv2.conv"], explained=[0.6, 0.15],
        units=[(0.1 * u, (u % 3) * 0.2) for u in range(8)],
    ))
    put(session, store, m, mixed, wv.CLUSTERS, wv.ClustersPayload(
        kernel=(3, 3), k=2, silhouettes=[(2, 0.5)],
        groups=[wv.Group(units=list(range(300)), centroid=[0, 0, 0, 1, 1, 1, 0, 0, 0]),
                wv.Group(units=list(range(300, 480)), centroid=[0, 1, 0] * 3)],
    ))
    colour = [0.0] * 480
    for u in range(320, 440):
        colour[u] = 1.0  # the top quarter (120 units) of colour: 96 in "5x5", 24 in "pool"
    put(session, store, m, mixed, wv.PROPERTIES, wv.PropertiesPayload(
        first_layer="conv1.conv", carried=True, colour=colour, frequency=[0.1] * 480
    ))
    put(session, store, m, mixed, wv.BRANCHES, wv.BranchesPayload(
        source="concatenation",
        branches=[wv.BranchOut(name=n, start=a, stop=b) for n, a, b in (
            ("branch1", 0, 128), ("branch2", 128, 320), ("branch3", 320, 416),
            ("branch4", 416, 480))],
    ))
    # 30 "curve" units, all in branch3 (the article's 5x5 branch); one unrelated label.
    units = {u.index: u for u in session.scalars(select(Unit).where(Unit.layer_id == mixed.id))}
    for i in range(330, 360):
        units[i].label = "curve" if i % 2 else "Curve detector"
    units[5].label = "curvey"
    fam = Family(slug="curves", name="Curves")
    session.add(fam)
    session.flush()
    session.add_all([FamilyMember(family_id=fam.id, unit_id=units[i].id) for i in (330, 331)])
    session.commit()
    return m


