"""Keep each unit's neuron card in step with its views."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from backend.db.models import Artifact, Layer, Model, Unit
from backend.storage import NotFound, ObjectStore
from contracts.jobs import CHANNEL_VARIANTS
from workers.ml.cards import CARD_EXT, CARD_TYPE, neuron_card, sheet_tiles
from workers.ml.sheets import CARD_TILES, CELL
from workers.tasks.artifacts import Stored, record_artifacts, store_artifact


def _image(store: ObjectStore, key: str | None) -> Image.Image | None:
    if key is None:
        return None
    try:
        return Image.open(io.BytesIO(store.get(key))).convert("RGB")
    except (NotFound, OSError):
        return None


@dataclass
class PendingCard:
    """A unit's card with everything it shows read (on the session's thread); ``draw`` needs
    no session and no ORM object, so it can run on a drawing thread."""

    layer: Layer
    unit: int
    model_slug: str
    layer_name: str
    title: str
    subtitle: str
    label: str | None
    featvis: Image.Image | None
    examples: list[Image.Image]
    params: dict[str, Any]  # the card's key changes whenever what it shows changes

    def draw(self, store: ObjectStore) -> Stored:
        """Draw the card and store its bytes (its row is ``record_card``'s)."""
        return store_artifact(
            store,
            model_slug=self.model_slug,
            layer_name=self.layer_name,
            unit=self.unit,
            kind="neuron_card",
            variant="",
            params=self.params,
            data=neuron_card(self.title, self.subtitle, self.label, self.featvis, self.examples),
            ext=CARD_EXT,
            content_type=CARD_TYPE,
        )


def prepare_card(
    session: Session,
    store: ObjectStore,
    model: Model,
    layer: Layer,
    unit: int,
    *,
    examples: list[Image.Image] | None = None,
) -> PendingCard | None:
    """What the unit's card shows from its current views (None: nothing to show).

    ``examples``: the top examples' crops when the caller just drew them; else they are cut
    from the stored top sheet."""
    arts = session.execute(
        select(Artifact.kind, Artifact.variant, Artifact.storage_key).where(
            Artifact.layer_id == layer.id,
            Artifact.unit_index == unit,
            Artifact.kind.in_(("featvis", "example_crop")),
        )
    ).all()
    keys = {(k, v): key for k, v, key in arts}
    fv_key = next((keys[("featvis", v)] for v in CHANNEL_VARIANTS if ("featvis", v) in keys), None)
    if examples is None:
        sheet = _image(store, keys.get(("example_crop", "top")))
        examples = sheet_tiles(sheet, CELL, CARD_TILES) if sheet is not None else []
    if fv_key is None and not examples:
        return None
    row = session.execute(
        select(Unit.label, Unit.label_source, Unit.label_confidence).where(
            Unit.layer_id == layer.id, Unit.index == unit
        )
    ).first()
    label = None
    if row is not None and row[0]:
        # An automatic label carries its fidelity, as on every page.
        scored = row[1] == "auto" and row[2] is not None
        label = f"{row[0]} (fidelity {row[2]:.2f})" if scored else row[0]
    params = {"featvis": fv_key, "examples": keys.get(("example_crop", "top")), "label": label}
    return PendingCard(
        layer,
        unit,
        model.slug,
        layer.name,
        f"Unit {unit}",
        f"{model.slug} · {layer.name}",
        label,
        _image(store, fv_key),
        examples,
        params,
    )


def record_card(session: Session, model: Model, card: PendingCard, stored: Stored) -> None:
    """Replace the unit's previous card with the stored one (``card.draw``)."""
    session.execute(
        delete(Artifact).where(
            Artifact.layer_id == card.layer.id,
            Artifact.unit_index == card.unit,
            Artifact.kind == "neuron_card",
        )
    )
    record_artifacts(session, model=model, layer=card.layer, unit=card.unit, stored=[stored])


def refresh_card(
    session: Session,
    store: ObjectStore,
    model: Model,
    layer: Layer,
    unit: int,
    *,
    examples: list[Image.Image] | None = None,
) -> None:
    """Render the unit's card from its current views and replace the previous card (see
    ``prepare_card``)."""
    card = prepare_card(session, store, model, layer, unit, examples=examples)
    if card is not None:
        record_card(session, model, card, card.draw(store))
