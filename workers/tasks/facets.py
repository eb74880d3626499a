"""Task: train a facet's linear probe (a dataset against generic images) on a lower layer."""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL.Image import Image
from sqlalchemy.orm import Session

from backend.catalog.repository import CatalogRepository
from backend.config import get_settings
from backend.db.models import Artifact, Dataset, Job, Layer
from backend.storage import ObjectStore, make_store
from contracts.jobs import TASK_TRAIN_FACET, TrainFacetParams
from contracts.layout import Layout
from workers.ml.featvis.facets import FacetProbe, train_facet_probe
from workers.tasks.artifacts import publish
from workers.tasks.jobrun import Progress, job_task, params_of
from workers.tasks.runtime import DatasetImages, cached_model, device, ready_inputs

# Images read per side: a logistic regression on pooled units needs hundreds, not millions,
# and every image is held decoded while the probe trains.
FACET_MAX_IMAGES = 1000
FACET_VERSION = 2  # 2: probes trained on the model's own resize and crop


def dataset_images(session: Session, ds: Dataset, limit: int = FACET_MAX_IMAGES) -> list[Image]:
    """The first ``limit`` images of an imported dataset, decoded to RGB."""
    images = DatasetImages.of(session, ds, limit).decode()
    if not images:
        raise ValueError(f"dataset {ds.slug} has no images")
    return images


def load_probe(store: ObjectStore, art: Artifact) -> FacetProbe:
    """A stored facet probe (safetensors bytes) as a FacetProbe."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "probe.safetensors"
        path.write_bytes(store.get(art.storage_key))
        return FacetProbe.load(path)


def train(session: Session, job: Job, progress: Progress) -> str:
    """Fit facet-vs-generic on the layer's pooled units and publish the probe."""
    p = params_of(job, TrainFacetParams)
    model, facet_ds = ready_inputs(session, p.model_id, p.dataset_id)
    _, generic_ds = ready_inputs(session, p.model_id, p.generic_id)
    layer = session.get(Layer, p.layer_id)
    if layer is None:
        raise ValueError("the layer of this job was deleted")
    name = p.name
    progress(0, 3, "reading images")
    facet_images = dataset_images(session, facet_ds)
    generic_images = dataset_images(session, generic_ds)
    session.commit()  # no transaction held through the model's forward passes
    dev = device()
    loaded = cached_model(model.spec, dev)
    progress(1, 3, f"{layer.name}: activations of {len(facet_images) + len(generic_images)}")
    probe = train_facet_probe(
        loaded.image_model,
        layer.module_path,
        Layout.from_dict(layer.layout),
        facet_images,
        generic_images,
        loaded.preprocess,
        device=dev,
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
