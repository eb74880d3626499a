"""Tasks: dataset examples for every unit of a model's layers, sharded and resumable.

The parent job splits the dataset into shards and queues one job per shard (any worker runs
them); each shard job saves its reducer state to the object store, so nothing finished is
mined again. Once every shard is saved the parent merges them (exactly the single pass) and
publishes each unit's examples index, sheets, thumbnail and card.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
from workers.ml.receptive_field import receptive_field
from workers.ml.sheets import (
    CELL,
    COLS,
    RENDER_THREADS,
    DrawnGroup,
    draw_layer,
    example_maps,
    shown_images,
)
from workers.ml.sources import make_loader, plan_shards
from workers.tasks.artifacts import publish, publish_json
from workers.tasks.cards import refresh_card
from workers.tasks.jobrun import Progress, Waiting, job_task, params_of
from workers.tasks.runtime import DatasetImages, cached_model, device, ready_inputs

K = 64  # examples kept per unit
SHARD_SIZE = 512  # images per shard
BATCH = 32
MINING_VERSION = 2  # 2: sheets drawn from the exact pixels the model saw
MAX_SHARD_ATTEMPTS = 3


def _save_state(store: ObjectStore, key: str, reducers: dict[str, LayerReducer]) -> None:
    buf = io.BytesIO()
    torch.save({p: r.state_dict() for p, r in reducers.items()}, buf)
    store.put(key, buf.getvalue(), "application/octet-stream")


def _load_state(store: ObjectStore, key: str) -> dict[str, LayerReducer]:
    raw = torch.load(io.BytesIO(store.get(key)), map_location="cpu", weights_only=True)
    return {p: LayerReducer.from_state_dict(s) for p, s in raw.items()}


@dataclass
class Plan:
    """What one mining run covers; the parent job and its shard jobs derive the same plan."""

    model: Model
    ds: Dataset
    layers: list[Layer]
    params: dict[str, Any]
    run_hash: str
    images: DatasetImages
    shards: list[range]  # index ranges into images.ids
    keys: list[str]  # each shard's saved state

    @property
    def layouts(self) -> dict[str, Layout]:
        return {x.module_path: Layout.from_dict(x.layout) for x in self.layers}


def make_plan(
    session: Session, model_id: int, dataset_id: int, layer_names: list[str] | None = None
) -> Plan:
    """Check the inputs (clear errors before any work) and lay out the shards.

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
    images = DatasetImages.of(session, ds)
    shard_size = get_settings().mining_shard_size or SHARD_SIZE
    shards = plan_shards([images.names[i] for i in images.ids], shard_size)
    keys = [f"runs/mining/{model.slug}/{run_hash}/shard-{i:05d}.pt" for i in range(len(shards))]
    return Plan(model, ds, layers, params, run_hash, images, shards, keys)


def mine_shard(session: Session, job: Job, progress: Progress) -> str:
    """Mine one shard of images and save its reducer state (the merge needs nothing else)."""
    p = params_of(job, MineShardParams)
    plan = make_plan(session, p.model_id, p.dataset_id, p.layer_names)
    i = p.shard
    if plan.run_hash != p.run_hash:
        return "superseded: the model, dataset or layers changed"
    store = make_store(get_settings())
    if store.exists(plan.keys[i]):
        return "already mined"
    session.commit()
    dev = device()
    loaded = cached_model(plan.model.spec, dev)
    rng = plan.shards[i]
    miner = Miner(plan.layouts, k=K)
    # Decoding runs in loader processes where a GPU would otherwise wait for it.
    workers = min(4, (os.cpu_count() or 1) - 1) if dev.startswith("cuda") else 0
    shard_ids = [plan.images.ids[j] for j in rng]
    miner.run(
        loaded.image_model,
        make_loader(shard_ids, plan.images.loader(shard_ids, loaded.preprocess), BATCH, workers),
        progress=lambda d: progress(d, len(rng), f"shard {i}: {d}/{len(rng)} images"),
    )
    _save_state(store, plan.keys[i], miner.reducers)
    return f"shard {i}: {len(rng)} images"


def _shards_ready(session: Session, plan: Plan, progress: Progress) -> bool:
    """True when every shard is saved; otherwise queue the missing shard jobs (idempotent)."""
    store = make_store(get_settings())
    missing = [i for i, key in enumerate(plan.keys) if not store.exists(key)]
    done = len(plan.keys) - len(missing)
    if not missing:
        return True
    for i in missing:
        shard_job = enqueue_job(
            session,
            MineShardParams(
                model_id=plan.model.id,
                dataset_id=plan.ds.id,
                run_hash=plan.run_hash,
                shard=i,
                layers=[x.name for x in plan.layers],
            ),
            queue="gpu",
            model_id=plan.model.id,
            dataset_id=plan.ds.id,
            total=len(plan.shards[i]),
        )
        if shard_job.state == JobState.FAILED and shard_job.attempts >= MAX_SHARD_ATTEMPTS:
            raise RuntimeError(f"shard {i} failed {shard_job.attempts} times: {shard_job.error}")
    session.commit()  # sends the shard tasks
    progress(done, len(plan.keys) + 1, f"{done}/{len(plan.keys)} shards mined")
    return False


def _publish_unit(
    session: Session,
    store: ObjectStore,
    plan: Plan,
    layer: Layer,
    u: int,
    index: DatasetExamples,
    drawn: dict[str, DrawnGroup],
) -> None:
    """A unit's sheets, thumbnail, card and examples index."""
    model, params = plan.model, plan.params
    jpeg_art = partial(
        publish,
        session,
        store,
        model=model,
        layer=layer,
        unit=u,
        params=params,
        ext="jpg",
        content_type="image/jpeg",
    )
    for group, d in drawn.items():
        for kind, data in (("example_crop", d.crops), ("example_heatmap", d.heatmaps)):
            meta = {"cols": COLS, "cell": CELL, "image_ids": d.image_ids}
            jpeg_art(kind=kind, variant=group, data=data, meta=meta)
        if d.thumb is not None:
            meta = {"image_id": d.image_ids[0]}
            jpeg_art(kind="example_crop", variant="thumb", data=d.thumb, meta=meta)
            refresh_card(session, store, model, layer, u, examples=d.card_tiles)
    publish_json(
        session,
        store,
        index,
        model=model,
        layer=layer,
        unit=u,
        kind="dataset_examples",
        variant="",
        params=params,
        meta={"stats": index.stats.model_dump()},
    )


def _batches(
    images: DatasetImages, ids: Sequence[int]
) -> Iterator[tuple[list[int], list[PILImage.Image]]]:
    for start in range(0, len(ids), BATCH):
        chunk = list(ids[start : start + BATCH])
        yield chunk, images.decode(chunk)


def mine(session: Session, job: Job, progress: Progress) -> str:
    """Dataset examples for every unit of the job's layers, published whole.

    Shards run as their own jobs (on any worker); this job waits for them, merges their
    states (exactly the single-pass result) and renders.
    """
    p = params_of(job, MineExamplesParams)
    plan = make_plan(session, p.model_id, p.dataset_id, p.layer_names)
    if not _shards_ready(session, plan, progress):
        raise Waiting(f"waiting for {plan.model.slug} shards of {plan.ds.slug}")
    store = make_store(get_settings())
    n = len(plan.images.ids)
    total_units = sum(x.unit_count for x in plan.layers)
    work = n + total_units
    session.commit()
    merged = merge_layer_states([_load_state(store, k) for k in plan.keys])
    dev = device()
    loaded = cached_model(plan.model.spec, dev)
    net, cfg, layouts = loaded.image_model, loaded.preprocess, plan.layouts
    results = {path: r.finalize() for path, r in merged.items()}
    # The maps of the images the sheets show: one more pass, over those images only.
    wanted = shown_images(results)
    batches = _batches(plan.images, sorted(wanted))
    views, unit_maps = example_maps(net, layouts, wanted, batches, cfg, dev)

    # Drawn on threads; published on this thread in unit order (the session is not shared).
    s = cfg.input_size
    published = 0
    with ThreadPoolExecutor(max_workers=RENDER_THREADS) as pool:
        for layer in plan.layers:
            path = layer.module_path
            rf = receptive_field(net, path, layouts[path], s)
            for u, index, drawn in draw_layer(pool, results[path], path, views, unit_maps, rf, s):
                _publish_unit(session, store, plan, layer, u, index, drawn)
                published += 1
                if published % 16 == 0:
                    session.commit()
                    progress(n + published, work, f"rendered {published}/{total_units} units")
    return f"{n} images, {published} units across {len(plan.layers)} layers"


mine_examples = job_task(TASK_MINE_EXAMPLES, mine)


mine_examples_shard = job_task(TASK_MINE_SHARD, mine_shard)
