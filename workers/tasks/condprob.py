"""Task: conditional probability plots for every unit of a model's layers."""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db.models import Artifact, Job
from backend.storage import make_store, params_hash
from contracts.jobs import TASK_CONDPROB, CondProbParams
from workers.tasks.artifacts import publish_json
from workers.tasks.evidence import evidence_for
from workers.tasks.jobrun import Progress, job_task, params_of
from workers.tasks.mining import make_plan
from workers.tasks.runtime import cached_model, device

CONDPROB_IMAGES = 5000  # images a plot's range, buckets and samples come from, at most
CONDPROB_VERSION = 1


def condprob_plots(session: Session, job: Job, progress: Progress) -> str:
    """Per unit: uniform buckets of its activation range, up to ``per_bucket`` images sampled
    in each, and the share of each concept (the text head's zero-shot class) among them."""
    from workers.ml.text.condprob import condprob
    from workers.ml.text.evidence import concept_match
    from workers.ml.text.heads import NoTextHead, make_text_head

    p = params_of(job, CondProbParams)
    plan = make_plan(session, p.model_id, p.dataset_id, p.layer_names)
    store = make_store(get_settings())
    session.commit()
    loaded = cached_model(plan.model.spec, device())
    try:
        head = make_text_head(loaded)
    except NoTextHead as e:
        return f"no text-aligned head to name categories: {e}"
    ev = evidence_for(plan, loaded, head, CONDPROB_IMAGES, progress, measure=False)
    assert ev.outputs is not None
    categories = concept_match(head, ev.outputs, p.concepts).argmax(axis=1)  # (N,)
    params = {
        "dataset_checksum": plan.ds.checksum,
        "model_checksum": plan.model.weights_checksum,
        "concepts": p.concepts,
        "buckets": p.buckets,
        "per_bucket": p.per_bucket,
        "images": len(ev.ids),
        "version": CONDPROB_VERSION,
    }
    # One plot per unit and concept list (the unit page offers each list computed); a new
    # run with the same list replaces its earlier plots.
    variant = "concepts-" + params_hash({"concepts": p.concepts})[:10]
    session.execute(
        delete(Artifact).where(
            Artifact.kind == "condprob",
            Artifact.variant == variant,
            Artifact.layer_id.in_([x.id for x in plan.layers]),
        )
    )
    done = 0
    for layer in plan.layers:
        acts = ev.acts[layer.module_path]  # (N, U)
        for u in range(layer.unit_count):
            plot = condprob(
                acts[:, u],
                categories,
                p.concepts,
                ev.ids,
                buckets=p.buckets,
                per_bucket=p.per_bucket,
            )
            publish_json(
                session,
                store,
                plot,
                model=plan.model,
                layer=layer,
                unit=u,
                kind="condprob",
                variant=variant,
                params=params,
                meta={"concepts": len(p.concepts), "images": len(ev.ids)},
            )
        done += layer.unit_count
        session.commit()
    return f"{done} units, {len(p.concepts)} concepts over {len(ev.ids)} images"


condprob_task = job_task(TASK_CONDPROB, condprob_plots)
