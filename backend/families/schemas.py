"""API shapes for families, neuron cards, labels and search results."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MemberRef(BaseModel):
    model: str
    layer: str
    unit: int = Field(ge=0)
    note: str | None = None


class FamilyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    members: list[MemberRef] = []


class FamilyUpdate(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, description="an empty string clears it")


class LabelUpdate(BaseModel):
    label: str | None = Field(None, max_length=200)


class LabelOut(BaseModel):
    label: str | None
    label_source: str | None


class Card(BaseModel):
    """A neuron card: enough to draw a unit in a grid of cards."""

    model: str
    layer: str
    unit: int
    label: str | None
    label_score: float | None = Field(None, description="the label's fidelity (None: unscored)")
    note: str | None = None
    url: str
    thumbnail: str | None
    score: float | None = None


class Term(Card):
    """A unit in a composition, with its weight."""

    weight: float


class CompositionOut(BaseModel):
    """``query ≈ sum(weight × unit text vector)`` over ``terms``."""

    query: str
    model: str | None
    layer: str | None
    used: list[str] = Field(description="vocabulary entries the query's vector was made from")
    cosine: float | None = Field(description="cosine between the weighted sum and the query")
    terms: list[Term]


class FamilyOut(BaseModel):
    slug: str
    name: str
    description: str | None
    source: str
    size: int
    url: str
    api_url: str
    members: list[Card] | None = None
