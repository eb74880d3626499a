"""Task: typographic attacks on a model (class names written on its dataset's photos)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db.models import Artifact, Job
from backend.storage import make_store
from contracts.jobs import TASK_TYPOGRAPHIC, TypographicParams
from workers.tasks.artifacts import publish_json
from workers.tasks.evidence import sample_ids
from workers.tasks.jobrun import Progress, job_task, params_of
from workers.tasks.mining import make_plan
from workers.tasks.runtime import cached_model, device

TOP_UNITS = 8  # units listed per word on the model page
TYPOGRAPHIC_VERSION = 1


def typographic(session: Session, job: Job, progress: Progress) -> str:
    """Write each word on each sampled photo; publish the attack's success rate per word with
    the units that rise most (the model's summary) and every unit's responses (per layer)."""
    from contracts.layout import Layout
    from workers.ml.native import imagenet_class_names
    from workers.ml.preprocess import model_view
    from workers.ml.text.heads import NoTextHead, make_text_head
    from workers.ml.text.typographic import attack, choose_words

    p = params_of(job, TypographicParams)
    plan = make_plan(session, p.model_id, p.dataset_id)
    store = make_store(get_settings())
    session.commit()
    loaded = cached_model(plan.model.spec, device())
    try:
        head = make_text_head(loaded)
    except NoTextHead as e:
        return f"no text-aligned head to read a prediction from: {e}"
    classes = list(loaded.class_names or imagenet_class_names())
    words = list(p.words) if p.words else choose_words(classes, p.n_words)
    unknown = [w for w in words if w not in classes]
    if unknown:
        raise ValueError(f"attack words must be class names of {plan.model.slug}: {unknown}")
    ids = sample_ids(plan.images.ids, p.photos)
    photos = [model_view(img, loaded.preprocess) for img in plan.images.decode(ids)]
    layouts = {x.module_path: Layout.from_dict(x.layout) for x in plan.layers}
    result = attack(
        loaded,
        head,
        layouts,
        photos,
        words,
        classes,
        progress=lambda d, t: progress(d, t, f"writing {d}/{t} words on {len(ids)} photos"),
    )
    flipped, eligible = result.success()
    names = {x.module_path: x.name for x in plan.layers}
    per_word: list[dict[str, Any]] = []
    rises = {path: result.rises(path) for path in layouts}  # each (W, U)
    for i, w in enumerate(words):
        ranked = sorted(
            ((float(r[i, u]), path, u) for path, r in rises.items() for u in range(r.shape[1])),
            reverse=True,
        )[:TOP_UNITS]
        per_word.append(
            {
                "word": w,
                "flipped": int(flipped[i]),
                "eligible": int(eligible[i]),
                "rate": float(flipped[i] / eligible[i]) if eligible[i] else None,
                "units": [
                    {"layer": names[path], "unit": u, "rise": round(z, 3)} for z, path, u in ranked
                ],
            }
        )
    total = int(eligible.sum())
    summary = {
        "words": words,
        "photos": len(ids),
        "classes": len(classes),
        "flipped": int(flipped.sum()),
        "eligible": total,
        "success_rate": float(flipped.sum() / total) if total else None,
        "per_word": per_word,
    }
    params = {
        "dataset_checksum": plan.ds.checksum,
        "model_checksum": plan.model.weights_checksum,
        "words": words,
        "photos": len(ids),
        "version": TYPOGRAPHIC_VERSION,
    }
    session.execute(
        delete(Artifact).where(Artifact.model_id == plan.model.id, Artifact.kind == "typographic")
    )
    publish_json(
        session,
        store,
        summary,
        model=plan.model,
        layer=None,
        unit=None,
        kind="typographic",
        variant="summary",
        params=params,
        meta={"success_rate": summary["success_rate"], "words": len(words)},
    )
    for layer in plan.layers:
        path = layer.module_path
        publish_json(
            session,
            store,
            {
                "words": words,
                "photo": result.clean[path].mean(0).round(4).tolist(),  # (U,)
                "with_word": result.attacked[path].mean(1).round(4).tolist(),  # (W, U)
                "word_alone": result.alone[path].round(4).tolist(),  # (W, U)
                "rise": rises[path].round(3).tolist(),  # (W, U)
            },
            model=plan.model,
            layer=layer,
            unit=None,
            kind="typographic",
            variant="units",
            params=params,
        )
    rate = summary["success_rate"]
    shown = "n/a" if not isinstance(rate, float) else f"{100 * rate:.0f}%"
    return f"{len(words)} words on {len(ids)} photos: success {shown}"


typographic_task = job_task(TASK_TYPOGRAPHIC, typographic)
