"""A unit's labels as pages and the API show them: each with its fidelity score.

The labels step of the text views writes ``Unit.label_scores``; an admin's label is scored at
the next run (until then it shows unscored). A label from before scores existed shows unscored
too: the page never shows a number that was not measured.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from backend.db.models import Unit


class LabelOut(BaseModel):
    """A label and its fidelity: Spearman correlation, over held-out images, of how well it
    matches each image with the unit's activation (None: not scored yet)."""

    text: str
    kind: str = Field(description="colour, tone, orientation, frequency, texture, concept, admin")
    score: float | None


def _outs(rows: Any) -> list[LabelOut]:
    if not isinstance(rows, list):
        return []
    return [
        LabelOut(text=str(r["text"]), kind=str(r.get("kind") or ""), score=r.get("score"))
        for r in rows
        if isinstance(r, dict) and r.get("text")
    ]


def shown_labels(unit: Unit) -> list[LabelOut]:
    """The labels a unit shows (none when it abstains), with their scores."""
    if not unit.label:
        return []
    scored = _outs((unit.label_scores or {}).get("labels"))
    texts = [x.text for x in scored]
    if scored and (", ".join(texts) == unit.label or texts == [unit.label]):
        return scored
    return [LabelOut(text=unit.label, kind=unit.label_source or "", score=None)]


def label_guesses(unit: Unit) -> list[LabelOut]:
    """The unit's best candidate labels with their scores, shown or not."""
    return _outs((unit.label_scores or {}).get("guesses"))


def label_threshold(unit: Unit) -> float | None:
    """The fidelity a label needed to be shown, when the unit was last labelled."""
    value = (unit.label_scores or {}).get("threshold")
    return float(value) if isinstance(value, int | float) else None


def label_score(unit: Unit) -> float | None:
    """The score shown beside a unit's label in grids and cards: its first label's."""
    shown = shown_labels(unit)
    return shown[0].score if shown else None
