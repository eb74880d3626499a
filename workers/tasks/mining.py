"""Task: dataset examples for every unit of a model's default layers, sharded and resumable.

Shards are mined one after another; each shard's reducer state is saved to the object store,
so a killed worker resumes without redoing finished shards. Artifacts are published only once
every shard is merged (the merge equals the single pass exactly).
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.celeryconf import TASK_MINE_EXAMPLES
from backend.config import get_settings
from backend.db.models import Dataset, Image, Job, Layer, Model
from backend.storage import ObjectStore, make_store, params_hash
from workers.celery_app import app
from workers.tasks.artifacts import publish
from workers.tasks.jobrun import Progress, Waiting, run_job

K = 64  # examples kept per unit
SHOWN = 16  # examples drawn on each sheet (4 x 4)
CELL = 112  # px per crop on a sheet
SHARD_SIZE = 512  # images per shard
BATCH = 32
MINING_VERSION = 1


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


def mine(session: Session, job: Job, progress: Progress) -> str:
    """Mine the dataset for every unit of the model's default layers and publish the views."""
    from workers.ml.device import resolve_device
    from workers.ml.hooks import Layout
    from workers.ml.images import load_rgb
    from workers.ml.mining import Miner, make_loader, merge_layer_states, split_shards
    from workers.ml.models import load_model
    from workers.ml.preprocess import to_batch

    model = session.get(Model, job.params["model_id"])
    ds = session.get(Dataset, job.params["dataset_id"])
    _check_inputs(model, ds)
    assert model is not None and ds is not None
    layers = list(
        session.scalars(
            select(Layer)
            .where(Layer.model_id == model.id, Layer.is_default.is_(True))
            .order_by(Layer.order)
        )
    )
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
    store = make_store(get_settings())
    rows = session.execute(
        select(Image.id, Image.path).where(Image.dataset_id == ds.id).order_by(Image.position)
    ).all()
    ids = [r[0] for r in rows]
    paths = {r[0]: Path(ds.source) / r[1] for r in rows}
    total_units = sum(x.unit_count for x in layers)
    n = len(ids)
    session.commit()

    device = str(resolve_device(get_settings().device))
    loaded = load_model(model.spec, device=device)
    net, cfg = loaded.image_model, loaded.preprocess
    layouts = {x.module_path: Layout(**x.layout) for x in layers}

    def load(image_id: int) -> torch.Tensor:
        return to_batch([load_rgb(paths[image_id])], cfg)[0]  # (3, S, S)

    # 1. Shards: each one's reducer state is saved as soon as it is complete.
    shards = split_shards(n, SHARD_SIZE)
    keys = [f"runs/mining/{model.slug}/{run_hash}/shard-{i:05d}.pt" for i in range(len(shards))]
    work = n + total_units
    done = 0
    for rng, key in zip(shards, keys, strict=True):
        if not store.exists(key):
            miner = Miner(layouts, k=K)
            base = done
            miner.run(
                net,
                make_loader([ids[i] for i in rng], load, batch_size=BATCH),
                progress=lambda d, b=base: progress(b + d, work, f"mining images {b + d}/{n}"),
            )
            _save_state(store, key, miner.reducers)
        done += len(rng)
        progress(done, work, f"mined {done}/{n} images")
    merged = merge_layer_states([_load_state(store, k, K) for k in keys])

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
        imgs = [load_rgb(paths[i]) for i in chunk]
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

    # 3. Render and publish, one unit at a time.
    from workers.ml.receptive_field import receptive_field
    from workers.ml.render import crop_example, heatmap_overlay

    s = cfg.input_size
    published = 0
    for layer in layers:
        res = results[layer.module_path]
        rf = receptive_field(net, layer.module_path, layouts[layer.module_path], s)
        for u in range(layer.unit_count):
            info = res.unit(u)
            for group in ("top", "negative"):
                examples = info[group] or []
                for ex in examples:
                    ex["box"] = list(rf.box(ex["y"], ex["x"], s))
                shown = [
                    e
                    for e in examples[:SHOWN]
                    if (layer.module_path, u, e["image_id"]) in unit_maps
                ]
                if not shown:
                    continue
                crops, heats = [], []
                for e in shown:
                    view = views[e["image_id"]]
                    box = tuple(e["box"])
                    crops.append(crop_example(view, box))
                    heat = heatmap_overlay(
                        view, unit_maps[(layer.module_path, u, e["image_id"])], box
                    )
                    heats.append(crop_example(heat, box))
                for kind, tiles in (("example_crop", crops), ("example_heatmap", heats)):
                    publish(
                        session,
                        store,
                        model=model,
                        layer=layer,
                        unit=u,
                        kind=kind,
                        variant=group,
                        params=params,
                        data=jpeg(sheet(tiles)),
                        ext="jpg",
                        content_type="image/jpeg",
                        meta={"cols": 4, "cell": CELL, "image_ids": [e["image_id"] for e in shown]},
                    )
                if group == "top":
                    publish(
                        session,
                        store,
                        model=model,
                        layer=layer,
                        unit=u,
                        kind="example_crop",
                        variant="thumb",
                        params=params,
                        data=jpeg(fit(crops[0], 96)),
                        ext="jpg",
                        content_type="image/jpeg",
                        meta={"image_id": shown[0]["image_id"]},
                    )
            info["input_size"] = s
            publish(
                session,
                store,
                model=model,
                layer=layer,
                unit=u,
                kind="dataset_examples",
                variant="",
                params=params,
                data=json.dumps(info).encode(),
                ext="json",
                content_type="application/json",
                meta={"stats": info["stats"]},
            )
            published += 1
            if published % 16 == 0:
                session.commit()
                progress(n + published, work, f"rendered {published}/{total_units} units")
    return f"{n} images, {published} units across {len(layers)} layers"


@app.task(
    name=TASK_MINE_EXAMPLES,
    autoretry_for=(Waiting,),
    retry_kwargs={"countdown": 3, "max_retries": 400},
    retry_backoff=False,
)
def mine_examples(job_id: int) -> str:
    return run_job(job_id, mine)
