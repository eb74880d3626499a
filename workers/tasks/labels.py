"""The text views' labels step: a unit is labelled only where a label's fidelity clears a bar.

Fidelity is measured on held-out images (``workers/ml/text/fidelity.py``); the labels, their
scores, the unit's best guesses and the bar are written to the unit's row. An admin's label is
kept and scored the same way.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from backend.db.models import Layer, Unit
from contracts.jobs import DEFAULT_CONCEPTS
from workers.tasks.evidence import evidence_for
from workers.tasks.jobrun import Progress
from workers.tasks.mining import Plan

LABEL_IMAGES = 2000  # images labels are scored on, at most (a fixed sample of a larger dataset)
LABELS_VERSION = 1


def label_units(
    session: Session,
    plan: Plan,
    loaded: Any,
    head: Any,
    units_by_key: dict[tuple[int, int], Unit],
    progress: Progress,
) -> int:
    """Label the units of ``plan``'s layers; returns how many got a label."""
    from workers.ml.text.evidence import concept_match, concept_vocabulary
    from workers.ml.text.labels import label_layers

    ev = evidence_for(plan, loaded, head, LABEL_IMAGES, progress)
    assert ev.outputs is not None
    concepts = concept_vocabulary(loaded, DEFAULT_CONCEPTS)
    match = concept_match(head, ev.outputs, concepts)  # (N, T)
    run = label_layers(ev, match, concepts)
    base = {
        "threshold": round(run.threshold, 4),
        "heldout": int(run.heldout.sum()),
        "null_units": run.null_units,
        "version": LABELS_VERSION,
    }
    labelled = 0
    for layer in plan.layers:
        for u, found in enumerate(run.units[layer.module_path]):
            unit = units_by_key.get((layer.id, u))
            if unit is None:
                continue
            scores: dict[str, Any] = {
                **base,
                "labels": [asdict(x) for x in found.labels],
                "guesses": [asdict(x) for x in found.guesses],
            }
            if unit.label_source == "admin" and unit.label:
                score = _score_text(unit.label, layer, u, ev, head, run.heldout)
                scores["labels"] = [{"text": unit.label, "kind": "admin", "score": score}]
            else:
                texts = [x.text for x in found.labels]
                unit.label = ", ".join(texts) if texts else None
                unit.label_source = "auto" if texts else None
                unit.label_confidence = found.labels[0].score if texts else None
                labelled += bool(texts)
            unit.label_scores = scores
        session.commit()
    return labelled


def _score_text(
    text: str, layer: Layer, unit: int, ev: Any, head: Any, heldout: np.ndarray
) -> float:
    """An admin label's fidelity: its own descriptor if it is one, else through the text
    head (any text has a match there)."""
    from workers.ml.text import descriptors
    from workers.ml.text.evidence import concept_match
    from workers.ml.text.labels import heldout_fidelity

    acts = ev.acts[layer.module_path][:, unit]  # (N,)
    if text in descriptors.KINDS and ev.desc is not None:
        values = ev.desc[layer.module_path][:, unit, descriptors.WORDS.index(text)]
    else:
        values = concept_match(head, ev.outputs, [text])[:, 0]
    return heldout_fidelity(acts, values, heldout)
