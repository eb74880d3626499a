"""What every task needs from its worker process: the device, loaded models, input checks, and
a dataset's images read and decoded for a model.

Tasks import these instead of each resolving devices or loading models its own way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db.models import Dataset, Image, Model
from workers.ml.device import resolve_device
from workers.ml.images import load_rgb
from workers.ml.models import LoadedModel, PreprocessConfig, load_model
from workers.ml.preprocess import to_batch
from workers.ml.sources import iter_images, read_images, shard_of
from workers.tasks.jobrun import Waiting


def device() -> str:
    """The device this worker computes on (the DEVICE setting; 'auto' picks CUDA if present)."""
    return str(resolve_device(get_settings().device))


def loader_workers() -> int:
    """DataLoader worker processes that decode images beside the forward pass (the
    LOADER_WORKERS setting). Default: on a GPU, the cores but one (at most 4), so decoding
    keeps up with the device; on the CPU none, as the forward's threads already use every
    core and loader processes beside them only oversubscribe (measured on 2 cores: one worker
    made a mining pass 3-10x slower, benchmarks/mining_scale.py)."""
    n = get_settings().loader_workers
    if n is not None:
        return n
    return max(0, min(4, (os.cpu_count() or 1) - 1)) if device().startswith("cuda") else 0


def image_rows(session: Session, ds: Dataset) -> Iterator[tuple[int, str]]:
    """(position, name) of the dataset's images in order, streamed from the database (a plan
    over every image holds none of them)."""
    q = select(Image.position, Image.path).where(Image.dataset_id == ds.id)
    yield from session.execute(
        q.order_by(Image.position).execution_options(yield_per=2000)
    ).tuples()


@lru_cache(maxsize=2)
def cached_model(spec: str, device: str) -> LoadedModel:
    """The model a spec names, on ``device``; workers keep the last two they loaded, so shard
    after shard and job after job reuse them."""
    return load_model(spec, device=device)


def _existing_model(model: Model | None) -> Model:
    if model is None:
        raise ValueError("the model of this job was deleted")
    if model.state == "failed":
        raise ValueError(f"model {model.slug} failed to register: {model.error}")
    return model


def _existing_dataset(ds: Dataset | None) -> Dataset:
    if ds is None:
        raise ValueError("the dataset of this job was deleted")
    if ds.state == "failed":
        raise ValueError(f"dataset {ds.slug} failed to import: {ds.error}")
    return ds


def ready_model(session: Session, model_id: int) -> Model:
    """The job's model once registered: Waiting while it registers, an error if it failed or
    was deleted (so no job waits forever on a model that will never be ready)."""
    model = _existing_model(session.get(Model, model_id))
    if model.state != "ready":
        raise Waiting(f"waiting for model {model.slug} to register")
    return model


def ready_inputs(session: Session, model_id: int, dataset_id: int) -> tuple[Model, Dataset]:
    """The job's model and dataset once both are ready. Errors come before waiting: a deleted
    or failed input (or a dataset with no images) fails the job, whatever the other's state."""
    model = _existing_model(session.get(Model, model_id))
    ds = _existing_dataset(session.get(Dataset, dataset_id))
    if model.state != "ready":
        raise Waiting(f"waiting for model {model.slug} to register")
    if ds.state != "ready":
        raise Waiting(f"waiting for dataset {ds.slug} to import")
    if ds.image_count == 0:
        raise ValueError(f"dataset {ds.slug} has no images")
    return model, ds


@dataclass
class DatasetImages:
    """A dataset's images in its order: their ids, and each id's name under the dataset root
    (a file, or a member of a tar shard)."""

    root: Path
    ids: list[int]
    names: dict[int, str]

    @classmethod
    def of(
        cls,
        session: Session,
        ds: Dataset,
        limit: int | None = None,
        *,
        positions: range | None = None,
        ids: Collection[int] | None = None,
    ) -> DatasetImages:
        """The dataset's images (the first ``limit`` of them; only those at ``positions``, or
        only ``ids``): a shard or a sheet loads its own rows, not the whole dataset's."""
        q = select(Image.id, Image.path).where(Image.dataset_id == ds.id)
        if positions is not None:
            q = q.where(Image.position >= positions.start, Image.position < positions.stop)
        if ids is not None:
            q = q.where(Image.id.in_(list(ids)))
        rows = session.execute(q.order_by(Image.position).limit(limit)).all()
        return cls(Path(ds.source), [r[0] for r in rows], {r[0]: r[1] for r in rows})

    def read(self, ids: Sequence[int]) -> dict[int, bytes]:
        """Bytes of many images, each tar shard read once, front to back."""
        data = read_images(self.root, [self.names[i] for i in ids])
        return {i: data[self.names[i]] for i in ids}

    def decode(self, ids: Sequence[int] | None = None) -> list[PILImage.Image]:
        """The images (default: all of them) decoded to RGB, in the order asked."""
        wanted = self.ids if ids is None else ids
        data = self.read(wanted)
        return [load_rgb(data[i]) for i in wanted]

    def batches(self, size: int) -> Iterator[tuple[list[int], list[PILImage.Image]]]:
        """All its images decoded, ``size`` at a time, in the order the sources store them:
        each tar shard read once, front to back, and one batch's images held at a time."""
        by_name = {name: i for i, name in self.names.items()}
        ids: list[int] = []
        imgs: list[PILImage.Image] = []
        for name, data in iter_images(self.root, [self.names[i] for i in self.ids]):
            ids.append(by_name[name])
            imgs.append(load_rgb(data))
            if len(ids) == size:
                yield ids, imgs
                ids, imgs = [], []
        if ids:
            yield ids, imgs

    def loader(self, ids: Sequence[int], cfg: PreprocessConfig) -> Callable[[int], torch.Tensor]:
        """Model input by image id, for ``workers.ml.sources.make_loader``: loose files are read
        when asked for, tar members are read up front (one pass over each shard)."""
        tarred = [self.names[i] for i in ids if shard_of(self.names[i]) is not None]
        cache = read_images(self.root, tarred) if tarred else {}

        def load(image_id: int) -> torch.Tensor:
            name = self.names[image_id]
            src = cache.pop(name) if name in cache else self.root / name
            return to_batch([load_rgb(src)], cfg)[0]  # (3, S, S)

        return load
