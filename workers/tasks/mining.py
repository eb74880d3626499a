"""Tasks: dataset examples for every unit of a model's layers, sharded and resumable.

The parent job splits the dataset into shards and queues one job per shard (any worker runs
them); each shard job saves its reducer state to the object store, so nothing finished is
mined again. Once every shard is saved the parent merges them (exactly the single pass) and
publishes each unit's examples index, sheets, thumbnail and card.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db.models import Dataset, Job, Layer, Model
from backend.jobs.service import enqueue_job
from backend.storage import ObjectStore, make_store, params_hash
from contracts.artifacts import DatasetExamples
from contracts.jobs import (
    TASK_MINE_EXAMPLES,
    TASK_MINE_SHARD,
    JobState,
    MineExamplesParams,
    MineShardParams,
)
from contracts.layout import Layout
from workers.ml.mining import LayerReducer, Miner, merge_layer_states
from workers.ml.sheets import (
    CELL,
    COLS,
    RENDER_CHUNK,
    RENDER_THREADS,
    SHOWN,
    DrawnGroup,
    draw_units,
    drawing_processes,
)
from workers.ml.sources import ShardSpan, make_loader, plan_shards
from workers.tasks.artifacts import Stored, WriteBehind, record_units, store_artifact
from workers.tasks.cards import CARD_KINDS, NO_FACTS, CardFacts, card_facts, pending_card
from workers.tasks.jobrun import Progress, Waiting, job_task, params_of
from workers.tasks.runtime import (
    DatasetImages,
    cached_model,
    device,
    image_rows,
    loader_workers,
    ready_inputs,
)

K = 64  # examples kept per unit
# Images per shard. Each shard job costs about 30 ms besides its images (the job, the loader,
# its saved state; 196 shards of 512 made 100k images mine 5% slower than 49 of 2,048), and
# 2,048 images are seconds on a GPU and minutes on a CPU: small enough to spread a dataset
# over many workers and to lose little when a worker dies.
SHARD_SIZE = 2048
BATCH = 32
# 2: sheets drawn from the exact pixels the model saw; 3: shard states keep the shown
# examples' maps (older states lack them)
MINING_VERSION = 3
MAX_SHARD_ATTEMPTS = 3


def _save_state(store: ObjectStore, key: str, reducers: dict[str, LayerReducer]) -> None:
    buf = io.BytesIO()
    torch.save({p: r.state_dict() for p, r in reducers.items()}, buf)
    store.put(key, buf.getvalue(), "application/octet-stream")


def _load_state(store: ObjectStore, key: str) -> dict[str, LayerReducer]:
    raw = torch.load(io.BytesIO(store.get(key)), map_location="cpu", weights_only=True)
    return {p: LayerReducer.from_state_dict(s) for p, s in raw.items()}


@dataclass
class Run:
    """What one mining run covers (the model, dataset, layers and the hash naming its state);
    the parent job and its shard jobs derive the same run."""

    model: Model
    ds: Dataset
    layers: list[Layer]
    params: dict[str, Any]
    run_hash: str

    @property
    def layouts(self) -> dict[str, Layout]:
        return {x.module_path: Layout.from_dict(x.layout) for x in self.layers}

    def shard_key(self, start: int, stop: int) -> str:
        """Where the reducer state of the shard of dataset positions [start, stop) is saved.
        Named by its span, not its number: with another MINING_SHARD_SIZE the plan's shards
        are other spans, and a saved state of another span must not stand in for one."""
        return f"runs/mining/{self.model.slug}/{self.run_hash}/shard-{start:09d}-{stop:09d}.pt"


@dataclass
class Plan(Run):
    """A run with every image of the dataset (for tasks that go over all of them)."""

    images: DatasetImages


def make_run(
    session: Session, model_id: int, dataset_id: int, layer_names: list[str] | None = None
) -> Run:
    """Check the inputs (clear errors before any work) and name the run.

    ``layer_names``: the layers to mine (None: the model's default layers).
    """
    model, ds = ready_inputs(session, model_id, dataset_id)
    q = select(Layer).where(Layer.model_id == model.id)
    if layer_names is None:
        q = q.where(Layer.is_default.is_(True))
    else:
        q = q.where(Layer.name.in_(layer_names))
    layers = list(session.scalars(q.order_by(Layer.order)))
    if layer_names is not None:
        unknown = sorted(set(layer_names) - {x.name for x in layers})
        if unknown:
            raise ValueError(f"model {model.slug} has no layers {unknown}")
    if not layers:
        raise ValueError(f"model {model.slug} has no default layers")
    params = {
        "dataset": ds.slug,
        "dataset_checksum": ds.checksum,
        "model_checksum": model.weights_checksum,
        "k": K,
        "version": MINING_VERSION,
    }
    run_hash = params_hash({**params, "layers": [x.name for x in layers]})
    return Run(model, ds, layers, params, run_hash)


def make_plan(
    session: Session, model_id: int, dataset_id: int, layer_names: list[str] | None = None
) -> Plan:
    """``make_run`` with all the dataset's images loaded."""
    run = make_run(session, model_id, dataset_id, layer_names)
    return Plan(**vars(run), images=DatasetImages.of(session, run.ds))


def mine_shard(session: Session, job: Job, progress: Progress) -> str:
    """Mine one shard of images and save its reducer state (the merge needs nothing else)."""
    p = params_of(job, MineShardParams)
    run = make_run(session, p.model_id, p.dataset_id, p.layer_names)
    i = p.shard
    if run.run_hash != p.run_hash:
        return "superseded: the model, dataset or layers changed"
    store = make_store(get_settings())
    key = run.shard_key(p.start, p.stop)
    if store.exists(key):
        return "already mined"
    # Only this shard's rows: a shard job's work does not grow with the dataset.
    images = DatasetImages.of(session, run.ds, positions=range(p.start, p.stop))
    session.commit()
    loaded = cached_model(run.model.spec, device())
    miner = Miner(run.layouts, k=K, maps=SHOWN)  # the sheets draw the kept maps
    n = len(images.ids)
    miner.run(
        loaded.image_model,
        make_loader(
            images.ids, images.loader(images.ids, loaded.preprocess), BATCH, loader_workers()
        ),
        progress=lambda d: progress(d, n, f"shard {i}: {d}/{n} images"),
    )
    _save_state(store, key, miner.reducers)
    return f"shard {i}: {n} images"


def _shards_ready(session: Session, run: Run, spans: list[ShardSpan], progress: Progress) -> bool:
    """True when every shard is saved; otherwise queue the missing shard jobs (idempotent)."""
    store = make_store(get_settings())
    missing = [
        i for i, span in enumerate(spans) if not store.exists(run.shard_key(span.start, span.stop))
    ]
    done = len(spans) - len(missing)
    if not missing:
        return True
    for i in missing:
        shard_job = enqueue_job(
            session,
            MineShardParams(
                model_id=run.model.id,
                dataset_id=run.ds.id,
                run_hash=run.run_hash,
                shard=i,
                start=spans[i].start,
                stop=spans[i].stop,
                layers=[x.name for x in run.layers],
            ),
            queue="gpu",
            model_id=run.model.id,
            dataset_id=run.ds.id,
            total=spans[i].count,
        )
        if shard_job.state == JobState.FAILED and shard_job.attempts >= MAX_SHARD_ATTEMPTS:
            raise RuntimeError(f"shard {i} failed {shard_job.attempts} times: {shard_job.error}")
    session.commit()  # sends the shard tasks
    progress(done, len(spans) + 1, f"{done}/{len(spans)} shards mined")
    return False


def merge_saved(store: ObjectStore, keys: Iterable[str]) -> dict[str, LayerReducer]:
    """The saved shard states merged (exactly the single pass), loading one at a time."""
    return merge_layer_states(_load_state(store, k) for k in keys)


@dataclass
class _StoredUnit:
    """A drawn unit whose bytes (sheets, thumbnail, examples index, card) are stored."""

    path: str
    unit: int
    stored: list[Stored]


# A drawing process's own store (``_own_store``), by process id.
_STORES: dict[int, ObjectStore] = {}


def _own_store() -> ObjectStore:
    """This process's store: a forked drawing process makes its own, as an S3 client's
    connections are not to be shared across a fork."""
    pid = os.getpid()
    if pid not in _STORES:
        _STORES[pid] = make_store(get_settings())
    return _STORES[pid]


def _store_unit(
    store_of: Callable[[], ObjectStore],
    model_slug: str,
    layer_names: dict[str, str],
    facts: dict[str, dict[int, CardFacts]],
    params: dict[str, Any],
    path: str,
    u: int,
    index: DatasetExamples,
    drawn: dict[str, DrawnGroup],
) -> _StoredUnit:
    """Where a unit is drawn: store its sheets, thumbnail, examples index and card."""
    store = store_of()
    put = partial(
        store_artifact,
        store,
        model_slug=model_slug,
        layer_name=layer_names[path],
        unit=u,
        params=params,
        content_type="image/jpeg",
        ext="jpg",
    )
    stored = []
    for group, d in drawn.items():
        for kind, data in (("example_crop", d.crops), ("example_heatmap", d.heatmaps)):
            meta = {"cols": COLS, "cell": CELL, "image_ids": d.image_ids}
            stored.append(put(kind=kind, variant=group, data=data, meta=meta))
        if d.thumb is not None:
            meta = {"image_id": d.image_ids[0]}
            stored.append(put(kind="example_crop", variant="thumb", data=d.thumb, meta=meta))
    stored.append(
        put(
            kind="dataset_examples",
            variant="",
            data=index.model_dump_json().encode(),
            ext="json",
            content_type="application/json",
            meta={"stats": index.stats.model_dump()},
        )
    )
    if "top" in drawn:
        # The card shows the sheet just stored and the tiles just drawn.
        top_key = next(s.key for s in stored if (s.kind, s.variant) == ("example_crop", "top"))
        known = replace(facts[path].get(u, NO_FACTS), examples_key=top_key)
        card = pending_card(model_slug, layer_names[path], u, known, drawn["top"].card_tiles)
        assert card is not None  # it has examples
        stored.append(card.draw(store))
    return _StoredUnit(path, u, stored)


def mine(session: Session, job: Job, progress: Progress) -> str:
    """Dataset examples for every unit of the job's layers, published whole.

    Shards run as their own jobs (on any worker); this job waits for them, merges their
    states (exactly the single-pass result) and renders.
    """
    p = params_of(job, MineExamplesParams)
    run = make_run(session, p.model_id, p.dataset_id, p.layer_names)
    spans = plan_shards(image_rows(session, run.ds), get_settings().mining_shard_size or SHARD_SIZE)
    if not _shards_ready(session, run, spans, progress):
        raise Waiting(f"waiting for {run.model.slug} shards of {run.ds.slug}")
    store = make_store(get_settings())
    n = sum(s.count for s in spans)
    total_units = sum(x.unit_count for x in run.layers)
    work = n + total_units
    session.commit()
    merged = merge_saved(store, (run.shard_key(s.start, s.stop) for s in spans))
    results = {path: r.finalize() for path, r in merged.items()}
    del merged
    loaded = cached_model(run.model.spec, device())

    def decode(ids: list[int]) -> Iterator[tuple[list[int], list[PILImage.Image]]]:
        # Only the rows of the images a render block shows.
        return DatasetImages.of(session, run.ds, ids=ids).batches(BATCH)

    # Sheets and cards are drawn and stored in forked processes where the machine allows
    # (each with its own store), else on a thread with the puts on I/O threads (WriteBehind);
    # their rows are written on this thread, a chunk of units per statement (the session is
    # not shared).
    layers = {x.module_path: x for x in run.layers}
    facts = {path: card_facts(session, layer) for path, layer in layers.items()}
    processes = drawing_processes()
    writes = WriteBehind(store)
    then = partial(
        _store_unit,
        _own_store if processes else lambda: writes,
        run.model.slug,
        {p: x.name for p, x in layers.items()},
        facts,
        run.params,
    )
    published = 0
    pending: list[_StoredUnit] = []

    def record() -> None:
        writes.drain()  # the bytes first: readers never see a row without them
        for path in dict.fromkeys(d.path for d in pending):
            stored: dict[int | None, list[Stored]] = {
                d.unit: d.stored for d in pending if d.path == path
            }
            record_units(
                session,
                model=run.model,
                layer=layers[path],
                stored=stored,
                replace_kinds=CARD_KINDS,
            )
        session.commit()
        pending.clear()
        progress(n + published, work, f"rendered {published}/{total_units} units")

    try:
        with ThreadPoolExecutor(max_workers=RENDER_THREADS) as pool:
            drawn_units = draw_units(
                pool,
                loaded.image_model,
                run.layouts,
                results,
                decode,
                loaded.preprocess,
                then,
                processes,
            )
            for done in drawn_units:
                pending.append(done)
                published += 1
                if len(pending) == RENDER_CHUNK:
                    record()
        record()
    finally:
        writes.close()
    return f"{n} images, {published} units across {len(run.layers)} layers"


mine_examples = job_task(TASK_MINE_EXAMPLES, mine)


mine_examples_shard = job_task(TASK_MINE_SHARD, mine_shard)
