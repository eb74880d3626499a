"""Task: train a facet's linear probe (a dataset against generic images) on a lower layer."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.catalog.repository import CatalogRepository
from backend.config import get_settings
from backend.db.models import Artifact, Dataset, Image, Job, Layer, Model
from backend.storage import ObjectStore, make_store
from contracts.jobs import TASK_TRAIN_FACET, TrainFacetParams
from workers.tasks.artifacts import publish
from workers.tasks.jobrun import Progress, job_task, params_of
from workers.tasks.mining import _check_inputs, _device, cached_model, read_images

# Images read per side: a logistic regression on pooled units needs hundreds, not millions,
# and every image is held decoded while the probe trains.
FACET_MAX_IMAGES = 1000
FACET_VERSION = 1


def dataset_images(session: Session, ds: Dataset, limit: int = FACET_MAX_IMAGES) -> list[Any]:
    """The first ``limit`` images of an imported dataset, decoded to RGB."""
    from workers.ml.images import load_rgb

    names = list(
        session.scalars(
            select(Image.path)
            .where(Image.dataset_id == ds.id)
            .order_by(Image.position)
            .limit(limit)
        )
    )
    if not names:
        raise ValueError(f"dataset {ds.slug} has no images")
    data = read_images(Path(ds.source), names)
    return [load_rgb(data[n]) for n in names]


def load_probe(store: ObjectStore, art: Artifact) -> Any:
    """A stored facet probe (safetensors bytes) as a FacetProbe."""
    from workers.ml.featvis.facets import FacetProbe

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "probe.safetensors"
        path.write_bytes(store.get(art.storage_key))
        return FacetProbe.load(path)


def train(session: Session, job: Job, progress: Progress) -> str:
    """Fit facet-vs-generic on the layer's pooled units and publish the probe."""
    from contracts.layout import Layout
    from workers.ml.featvis.facets import train_facet_probe

    p = params_of(job, TrainFacetParams)
    model = session.get(Model, p.model_id)
    layer = session.get(Layer, p.layer_id)
    facet_ds = session.get(Dataset, p.dataset_id)
    generic_ds = session.get(Dataset, p.generic_id)
    _check_inputs(model, facet_ds)
    _check_inputs(model, generic_ds)
    assert model is not None and facet_ds is not None and generic_ds is not None
    if layer is None:
        raise ValueError("the layer of this job was deleted")
    name = p.name
    progress(0, 3, "reading images")
    facet_images = dataset_images(session, facet_ds)
    generic_images = dataset_images(session, generic_ds)
    session.commit()  # no transaction held through the model's forward passes
    device = _device()
    loaded = cached_model(model.spec, device)
    progress(1, 3, f"{layer.name}: activations of {len(facet_images) + len(generic_images)}")
    probe = train_facet_probe(
        loaded.image_model,
        layer.module_path,
        Layout.from_dict(layer.layout),
        facet_images,
        generic_images,
        loaded.preprocess,
        device=device,
    )
    progress(2, 3, "storing the probe")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "probe.safetensors"
        probe.save(path)
        data = path.read_bytes()
    # One probe per facet name: a retrained facet replaces the old one.
    for old in CatalogRepository(session).facet_probes(model.id, name):
        session.delete(old)
    session.flush()
    publish(
        session,
        make_store(get_settings()),
        model=model,
        layer=None,
        unit=None,
        kind="facet_probe",
        variant=name,
        params={
            "layer": layer.name,
            "facet": facet_ds.slug,
            "facet_checksum": facet_ds.checksum,
            "generic": generic_ds.slug,
            "generic_checksum": generic_ds.checksum,
            "version": FACET_VERSION,
        },
        data=data,
        ext="safetensors",
        content_type="application/octet-stream",
        meta={
            "name": name,
            "layer": layer.name,
            "accuracy": probe.accuracy,
            "n_facet": len(facet_images),
            "n_generic": len(generic_images),
        },
    )
    return f"facet {name} on {layer.name}: accuracy {probe.accuracy:.2f}"


train_facet = job_task(TASK_TRAIN_FACET, train)
