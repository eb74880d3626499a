"""Keep each unit's neuron card in step with its views."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db.models import Artifact, Layer, Model, Unit
from backend.storage import NotFound, ObjectStore
from contracts.jobs import CHANNEL_VARIANTS
from workers.ml.cards import CARD_EXT, CARD_TYPE, neuron_card, sheet_tiles
from workers.ml.sheets import CARD_TILES, CELL
from workers.tasks.artifacts import Stored, record_units, store_artifact


def _image(store: ObjectStore, key: str | None) -> Image.Image | None:
    if key is None:
        return None
    try:
        return Image.open(io.BytesIO(store.get(key))).convert("RGB")
    except (NotFound, OSError):
        return None


@dataclass(frozen=True)
class CardFacts:
    """What a unit's card shows besides its examples, as the database has it."""

    featvis_key: str | None  # the channel feature visualization shown large, if rendered
    examples_key: str | None  # the stored top example sheet
    label: str | None  # the unit's label, with its fidelity when automatic


NO_FACTS = CardFacts(None, None, None)
# A card's params change with what it shows: recording one replaces any earlier card.
CARD_KINDS = ("neuron_card",)


def card_facts(
    session: Session, layer: Layer, units: Sequence[int] | None = None
) -> dict[int, CardFacts]:
    """The card facts of ``units`` of ``layer`` (None: all its units) in two queries; units
    with none are left out (``NO_FACTS``)."""
    arts = select(Artifact.unit_index, Artifact.kind, Artifact.variant, Artifact.storage_key).where(
        Artifact.layer_id == layer.id, Artifact.kind.in_(("featvis", "example_crop"))
    )
    labels = select(Unit.index, Unit.label, Unit.label_source, Unit.label_confidence).where(
        Unit.layer_id == layer.id, Unit.label.is_not(None), Unit.label != ""
    )
    if units is not None:
        arts = arts.where(Artifact.unit_index.in_(units))
        labels = labels.where(Unit.index.in_(units))
    keys: dict[int, dict[tuple[str, str], str]] = defaultdict(dict)
    for u, kind, variant, key in session.execute(arts):
        if u is not None:
            keys[u][(kind, variant)] = key
    label_of: dict[int, str] = {}
    for u, label, source, confidence in session.execute(labels):
        # An automatic label carries its fidelity, as on every page.
        scored = source == "auto" and confidence is not None
        label_of[u] = f"{label} (fidelity {confidence:.2f})" if scored else str(label)
    out = {}
    for u in keys.keys() | label_of.keys():
        k = keys.get(u, {})
        fv = next((k[("featvis", v)] for v in CHANNEL_VARIANTS if ("featvis", v) in k), None)
        out[u] = CardFacts(fv, k.get(("example_crop", "top")), label_of.get(u))
    return out


@dataclass
class PendingCard:
    """A unit's card with what it shows; ``draw`` needs no session and no ORM object, so it
    can run on a drawing thread."""

    model_slug: str
    layer_name: str
    unit: int
    facts: CardFacts
    examples: list[Image.Image] | None  # None: cut from the stored top sheet when drawn

    @property
    def params(self) -> dict[str, Any]:
        """The card's key changes whenever what it shows changes."""
        f = self.facts
        return {"featvis": f.featvis_key, "examples": f.examples_key, "label": f.label}

    def draw(self, store: ObjectStore) -> Stored:
        """Draw the card and store its bytes (its row is the caller's to record)."""
        examples = self.examples
        if examples is None:
            sheet = _image(store, self.facts.examples_key)
            examples = sheet_tiles(sheet, CELL, CARD_TILES) if sheet is not None else []
        data = neuron_card(
            f"Unit {self.unit}",
            f"{self.model_slug} · {self.layer_name}",
            self.facts.label,
            _image(store, self.facts.featvis_key),
            examples,
        )
        return store_artifact(
            store,
            model_slug=self.model_slug,
            layer_name=self.layer_name,
            unit=self.unit,
            kind="neuron_card",
            variant="",
            params=self.params,
            data=data,
            ext=CARD_EXT,
            content_type=CARD_TYPE,
        )


def pending_card(
    model_slug: str,
    layer_name: str,
    unit: int,
    facts: CardFacts,
    examples: list[Image.Image] | None = None,
) -> PendingCard | None:
    """The unit's card (None: nothing to show: no feature visualization and no examples).
    ``examples``: the top examples' crops when the caller just drew them."""
    if facts.featvis_key is None and facts.examples_key is None:
        return None
    return PendingCard(model_slug, layer_name, unit, facts, examples)


def refresh_cards(
    session: Session, store: ObjectStore, model: Model, layer: Layer, units: Sequence[int]
) -> None:
    """Render the units' cards from their current views and replace their previous cards."""
    facts = card_facts(session, layer, units)
    stored: dict[int | None, list[Stored]] = {}
    for u in units:
        card = pending_card(model.slug, layer.name, u, facts.get(u, NO_FACTS))
        if card is not None:
            stored[u] = [card.draw(store)]
    record_units(session, model=model, layer=layer, stored=stored, replace_kinds=CARD_KINDS)
