"""Task: import an image folder (validate every file, store thumbnails)."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db.models import Dataset, Image, Job
from backend.storage import make_store
from contracts.jobs import TASK_IMPORT_DATASET
from workers.tasks.jobrun import Progress, job_task

COMMIT_EVERY = 100


def dataset_checksum(rows: list[tuple[str, str]]) -> str:
    """sha256 over the sorted (relative path, file sha256) pairs."""
    h = hashlib.sha256()
    for path, sha in sorted(rows):
        h.update(f"{path}\0{sha}\n".encode())
    return h.hexdigest()


def import_folder(session: Session, job: Job, progress: Progress) -> str:
    """Decode every image (bad ones are skipped and counted), write thumbnails and rows."""
    from workers.ml.images import BadImage, load_rgb, thumbnail_jpeg
    from workers.ml.sources import count_sources, iter_sources

    ds = session.get(Dataset, job.dataset_id)
    if ds is None:
        return "dataset was deleted"
    if ds.state == "ready":
        return "already imported"
    root = Path(ds.source)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} is not reachable from this worker")
    total = count_sources(root)
    if not total:
        raise ValueError(f"no images (or tar shards of images) found under {root}")
    ds.state = "importing"
    session.commit()
    store = make_store(get_settings())
    done = {
        p: (sha, pos)
        for p, sha, pos in session.execute(
            select(Image.path, Image.sha256, Image.position).where(Image.dataset_id == ds.id)
        )
    }
    skipped: Counter[str] = Counter()
    max_bytes = get_settings().max_image_mb * 2**20
    for pos, (rel, read) in enumerate(iter_sources(root, max_bytes)):
        if rel in done:
            continue
        try:
            data = read()  # over max_bytes: BadImage("too large"), unread
            img = load_rgb(data)
        except BadImage as e:
            skipped[e.reason] += 1
            continue
        except OSError:
            skipped["unreadable"] += 1
            continue
        sha = hashlib.sha256(data).hexdigest()
        key = f"datasets/{ds.slug}/thumbs/{sha[:2]}/{sha}.jpg"
        store.put(key, thumbnail_jpeg(img), "image/jpeg")
        session.add(
            Image(
                dataset_id=ds.id,
                position=pos,
                path=rel,
                width=img.width,
                height=img.height,
                sha256=sha,
                thumb_key=key,
            )
        )
        done[rel] = (sha, pos)
        if (pos + 1) % COMMIT_EVERY == 0:
            session.commit()  # a killed worker resumes from here
        progress(pos + 1, total, f"{len(done)} images, {sum(skipped.values())} skipped")
    if not done:
        raise ValueError(f"none of the {total} files under {root} is a readable image")
    ds.image_count = len(done)
    ds.skipped_count = sum(skipped.values())
    ds.skipped = dict(skipped)
    ds.checksum = dataset_checksum([(p, sha) for p, (sha, _) in done.items()])
    ds.state = "ready"
    reasons = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))
    return f"{ds.image_count} images, {ds.skipped_count} skipped" + (
        f" ({reasons})" if reasons else ""
    )


def mark_failed(session: Session, job: Job, exc: Exception) -> None:
    ds = session.get(Dataset, job.dataset_id)
    if ds is not None:
        ds.state = "failed"
        ds.error = f"{type(exc).__name__}: {exc}"


import_dataset = job_task(TASK_IMPORT_DATASET, import_folder, mark_failed)
