"""Task: dataset examples for every unit of a model's default layers, sharded and resumable.

Shards are mined one after another; each shard's reducer state is saved to the object store,
so a killed worker resumes without redoing finished shards. Artifacts are published only once
every shard is merged (the merge equals the single pass exactly).
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db.models import Dataset, Image, Job, Layer, Model
from backend.jobs.service import enqueue_job
from backend.storage import ObjectStore, make_store, params_hash
from contracts.jobs import (
    TASK_MINE_EXAMPLES,
    TASK_MINE_SHARD,
    JobState,
    MineExamplesParams,
    MineShardParams,
)
from workers.tasks.artifacts import publish, publish_json
from workers.tasks.cards import refresh_card
from workers.tasks.jobrun import Progress, Waiting, job_task, params_of

K = 64  # examples kept per unit
SHOWN = 16  # examples drawn on each sheet (4 x 4)
CELL = 112  # px per crop on a sheet
SHARD_SIZE = 512  # images per shard
BATCH = 32
MINING_VERSION = 1
MAX_SHARD_ATTEMPTS = 3
# Units drawn at once on threads (benchmarks/mining_render.py); chunks bound the memory held.
RENDER_THREADS = min(8, os.cpu_count() or 1)
RENDER_CHUNK = 64


def model_view(img: PILImage.Image, cfg: Any) -> PILImage.Image:
    """The S x S image the model sees (resize + centre crop), as PIL."""
    from workers.ml.preprocess import crop_box

    left, top, right, bottom = crop_box(img.width, img.height, cfg)
    s = cfg.input_size
    return img.resize((s, s), PILImage.Resampling.BICUBIC, box=(left, top, right, bottom))


def fit(tile: PILImage.Image, cell: int) -> PILImage.Image:
    """One resize to cell x cell: hard-edged when enlarging tiny receptive fields."""
    if tile.size == (cell, cell):
        return tile
    if max(tile.size) < cell:
        return tile.resize((cell, cell), PILImage.Resampling.NEAREST)
    return tile.resize((cell, cell), PILImage.Resampling.BILINEAR, reducing_gap=2.0)


def sheet(tiles: list[PILImage.Image], cols: int = 4, cell: int = CELL) -> PILImage.Image:
    """Tiles (resized to cell x cell) on a grid, row-major."""
    rows = max(1, (len(tiles) + cols - 1) // cols)
    out = PILImage.new("RGB", (cols * cell, rows * cell), (24, 24, 24))
    for i, t in enumerate(tiles):
        out.paste(fit(t, cell), ((i % cols) * cell, (i // cols) * cell))
    return out


def jpeg(img: PILImage.Image, quality: int = 85) -> bytes:
    """JPEG bytes: encodes several times faster than WebP (measured), and sheets are photos."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _check_inputs(model: Model | None, ds: Dataset | None) -> None:
    if model is None or ds is None:
        raise ValueError("the model or dataset of this job was deleted")
    if model.state == "failed":
        raise ValueError(f"model {model.slug} failed to register: {model.error}")
    if ds.state == "failed":
        raise ValueError(f"dataset {ds.slug} failed to import: {ds.error}")
    if model.state != "ready":
        raise Waiting(f"waiting for model {model.slug} to register")
    if ds.state != "ready":
        raise Waiting(f"waiting for dataset {ds.slug} to import")
    if ds.image_count == 0:
        raise ValueError(f"dataset {ds.slug} has no images")


def _save_state(store: ObjectStore, key: str, reducers: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({p: r.state_dict() for p, r in reducers.items()}, buf)
    store.put(key, buf.getvalue(), "application/octet-stream")


def _load_state(store: ObjectStore, key: str, k: int) -> dict[str, Any]:
    from workers.ml.mining import LayerReducer

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
    ids: list[int]
    names: dict[int, str]  # image id -> its name under the dataset root (file or tar member)
    shards: list[range]
    keys: list[str]

    @property
    def layouts(self) -> dict[str, Any]:
        from contracts.layout import Layout

        return {x.module_path: Layout.from_dict(x.layout) for x in self.layers}


def make_plan(
    session: Session, model_id: int, dataset_id: int, layer_names: list[str] | None = None
) -> Plan:
    """Check the inputs (clear errors before any work) and lay out the shards.

    ``layer_names``: the layers to mine (None: the model's default layers).
    """
    model = session.get(Model, model_id)
    ds = session.get(Dataset, dataset_id)
    _check_inputs(model, ds)
    assert model is not None and ds is not None
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
    rows = session.execute(
        select(Image.id, Image.path).where(Image.dataset_id == ds.id).order_by(Image.position)
    ).all()
    ids = [r[0] for r in rows]
    shards = plan_shards([r[1] for r in rows], SHARD_SIZE)
    keys = [f"runs/mining/{model.slug}/{run_hash}/shard-{i:05d}.pt" for i in range(len(shards))]
    names = {r[0]: r[1] for r in rows}
    return Plan(model, ds, layers, params, run_hash, ids, names, shards, keys)


def plan_shards(names: list[str], size: int) -> list[range]:
    """Loose files split by listing; each tar shard's images (contiguous) are one shard."""
    from workers.ml.mining import split_shards
    from workers.ml.sources import shard_of

    loose = sum(1 for n in names if shard_of(n) is None)
    shards = split_shards(loose, size) if loose else []
    i = loose
    while i < len(names):
        tar = shard_of(names[i])
        j = i
        while j < len(names) and shard_of(names[j]) == tar:
            j += 1
        shards.append(range(i, j))
        i = j
    return shards


def read_images(root: Path, names: list[str]) -> dict[str, bytes]:
    """Bytes of many images, reading each tar shard once, in one streaming pass."""
    from workers.ml.sources import iter_tar, shard_of

    out: dict[str, bytes] = {}
    by_tar: dict[str, set[str]] = defaultdict(set)
    for n in names:
        tar = shard_of(n)
        if tar is None:
            out[n] = (root / n).read_bytes()
        else:
            by_tar[tar].add(n)
    for tar, wanted in by_tar.items():
        for name, data in iter_tar(root, tar):
            if name in wanted:
                out[name] = data
    return out


@lru_cache(maxsize=2)
def cached_model(spec: str, device: str) -> Any:
    """Workers keep the last models they loaded: shard after shard reuses them."""
    from workers.ml.models import load_model

    return load_model(spec, device=device)


def _device() -> str:
    from workers.ml.device import resolve_device

    return str(resolve_device(get_settings().device))


def _loader_fn(plan: Plan, cfg: Any, ids: list[int]) -> Any:
    """Image tensors by id for one shard; a tar shard is read once, front to back."""
    from workers.ml.images import load_rgb
    from workers.ml.preprocess import to_batch
    from workers.ml.sources import shard_of

    root = Path(plan.ds.source)
    tarred = [plan.names[i] for i in ids if shard_of(plan.names[i]) is not None]
    cache = read_images(root, tarred) if tarred else {}

    def load(image_id: int) -> torch.Tensor:
        name = plan.names[image_id]
        src = cache.pop(name) if name in cache else root / name
        return to_batch([load_rgb(src)], cfg)[0]  # (3, S, S)

    return load


def mine_shard(session: Session, job: Job, progress: Progress) -> str:
    """Mine one shard of images and save its reducer state (the merge needs nothing else)."""
    from workers.ml.mining import Miner, make_loader

    p = params_of(job, MineShardParams)
    plan = make_plan(session, p.model_id, p.dataset_id, p.layer_names)
    i = p.shard
    if plan.run_hash != p.run_hash:
        return "superseded: the model, dataset or layers changed"
    store = make_store(get_settings())
    if store.exists(plan.keys[i]):
        return "already mined"
    session.commit()
    device = _device()
    loaded = cached_model(plan.model.spec, device)
    rng = plan.shards[i]
    miner = Miner(plan.layouts, k=K)
    workers = min(4, (os.cpu_count() or 1) - 1) if device.startswith("cuda") else 0
    shard_ids = [plan.ids[j] for j in rng]
    miner.run(
        loaded.image_model,
        make_loader(shard_ids, _loader_fn(plan, loaded.preprocess, shard_ids), BATCH, workers),
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


@dataclass
class DrawnGroup:
    """One group's (top or negative) sheets of a unit, encoded."""

    crops: bytes
    heatmaps: bytes
    image_ids: list[int]
    thumb: bytes | None  # top group only
    card_tiles: list[PILImage.Image]  # top group only: the card's examples


def render_unit(
    info: dict[str, Any],
    path: str,
    unit: int,
    views: dict[int, PILImage.Image],
    unit_maps: dict[tuple[str, int, int], torch.Tensor],
    rf: Any,
    size: int,
) -> dict[str, DrawnGroup]:
    """A unit's example sheets (receptive-field crops and heatmaps), per group; adds each
    example's box and the input size to ``info``. No database or store: safe to run on
    several threads."""
    from workers.ml.render import crop_example, heatmap_overlay

    info["input_size"] = size
    out = {}
    for group in ("top", "negative"):
        examples = info[group] or []
        for ex in examples:
            ex["box"] = list(rf.box(ex["y"], ex["x"], size))
        shown = [e for e in examples[:SHOWN] if (path, unit, e["image_id"]) in unit_maps]
        if not shown:
            continue
        crops, heats = [], []
        for e in shown:
            view = views[e["image_id"]]
            box = tuple(e["box"])
            crops.append(crop_example(view, box))
            umap = unit_maps[(path, unit, e["image_id"])]
            # Negative examples: highlight where the unit is most negative.
            heat = heatmap_overlay(view, umap if group == "top" else -umap, box)
            heats.append(crop_example(heat, box))
        top = group == "top"
        out[group] = DrawnGroup(
            crops=jpeg(sheet(crops)),
            heatmaps=jpeg(sheet(heats)),
            image_ids=[e["image_id"] for e in shown],
            thumb=jpeg(fit(crops[0], 96)) if top else None,
            card_tiles=crops[:6] if top else [],
        )
    return out


def _publish_unit(
    session: Session,
    store: ObjectStore,
    model: Model,
    layer: Layer,
    u: int,
    params: dict[str, Any],
    info: dict[str, Any],
    drawn: dict[str, DrawnGroup],
) -> None:
    """A unit's sheets, thumbnail, card and examples index."""
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
            meta = {"cols": 4, "cell": CELL, "image_ids": d.image_ids}
            jpeg_art(kind=kind, variant=group, data=data, meta=meta)
        if d.thumb is not None:
            meta = {"image_id": d.image_ids[0]}
            jpeg_art(kind="example_crop", variant="thumb", data=d.thumb, meta=meta)
            refresh_card(session, store, model, layer, u, examples=d.card_tiles)
    publish_json(
        session,
        store,
        info,
        model=model,
        layer=layer,
        unit=u,
        kind="dataset_examples",
        variant="",
        params=params,
        meta={"stats": info["stats"]},
    )


def mine(session: Session, job: Job, progress: Progress) -> str:
    """Dataset examples for every unit of the model's default layers, published whole.

    Shards run as their own jobs (on any worker); this job waits for them, merges their
    states (exactly the single-pass result) and renders.
    """
    from workers.ml.mining import merge_layer_states

    p = params_of(job, MineExamplesParams)
    plan = make_plan(session, p.model_id, p.dataset_id, p.layer_names)
    if not _shards_ready(session, plan, progress):
        raise Waiting(f"waiting for {plan.model.slug} shards of {plan.ds.slug}")
    model, layers, params = plan.model, plan.layers, plan.params
    store = make_store(get_settings())
    n = len(plan.ids)
    total_units = sum(x.unit_count for x in layers)
    work = n + total_units
    session.commit()
    merged = merge_layer_states([_load_state(store, k, K) for k in plan.keys])
    device = _device()
    loaded = cached_model(model.spec, device)
    net, cfg = loaded.image_model, loaded.preprocess
    layouts = plan.layouts
    from workers.ml.images import load_rgb
    from workers.ml.preprocess import to_batch

    # 2. Results, then the maps of the images the sheets show (one more truncated pass).
    results = {p: r.finalize() for p, r in merged.items()}
    wanted: dict[int, set[tuple[str, int]]] = defaultdict(set)
    for path, res in results.items():
        for u in range(res.unit_count):
            for i in res.top_ids[u, :SHOWN].tolist():
                if i >= 0:
                    wanted[i].add((path, u))
            if res.neg_ids is not None:
                for i in res.neg_ids[u, :SHOWN].tolist():
                    if i >= 0:
                        wanted[i].add((path, u))
    from workers.ml.hooks import run_to, to_unit_maps

    unit_maps: dict[tuple[str, int, int], torch.Tensor] = {}
    views: dict[int, PILImage.Image] = {}
    need = sorted(wanted)
    for start in range(0, len(need), BATCH):
        chunk = need[start : start + BATCH]
        data = read_images(Path(plan.ds.source), [plan.names[i] for i in chunk])
        imgs = [load_rgb(data[plan.names[i]]) for i in chunk]
        for i, im in zip(chunk, imgs, strict=True):
            views[i] = model_view(im, cfg)
        x = to_batch(imgs, cfg).to(device)  # (N, 3, S, S)
        with torch.inference_mode():
            outs = run_to(net, x, list(layouts))
        for path, out in outs.items():
            maps = to_unit_maps(out, layouts[path]).float().cpu()  # (N, U, H, W)
            for row, i in enumerate(chunk):
                for p, u in wanted[i]:
                    if p == path:
                        unit_maps[(path, u, i)] = maps[row, u].clone()  # (H, W)

    # 3. Render (threads: Pillow and numpy release the GIL) and publish (this thread, in
    # unit order, the database session is not shared).
    from workers.ml.receptive_field import receptive_field

    s = cfg.input_size
    published = 0
    with ThreadPoolExecutor(max_workers=RENDER_THREADS) as pool:
        for layer in layers:
            res = results[layer.module_path]
            rf = receptive_field(net, layer.module_path, layouts[layer.module_path], s)

            def draw(u: int, res: Any = res, rf: Any = rf, path: str = layer.module_path) -> Any:
                info = res.unit(u)
                return info, render_unit(info, path, u, views, unit_maps, rf, s)

            for first in range(0, layer.unit_count, RENDER_CHUNK):
                units = range(first, min(first + RENDER_CHUNK, layer.unit_count))
                for u, (info, drawn) in zip(units, pool.map(draw, units), strict=True):
                    _publish_unit(session, store, model, layer, u, params, info, drawn)
                    published += 1
                    if published % 16 == 0:
                        session.commit()
                        progress(n + published, work, f"rendered {published}/{total_units} units")
    return f"{n} images, {published} units across {len(layers)} layers"


mine_examples = job_task(TASK_MINE_EXAMPLES, mine)


mine_examples_shard = job_task(TASK_MINE_SHARD, mine_shard)
