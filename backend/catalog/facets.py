"""Facets: linear probes (a folder of images against generic ones) that steer renders."""

from __future__ import annotations

from sqlalchemy.orm import Session

from backend import urls
from backend.catalog.repository import CatalogRepository
from backend.catalog.schemas import FacetOut
from backend.db.models import Artifact, Layer, Model
from backend.errors import InvalidInput, NotFoundError, NotReady
from contracts.spec import slugify


def facet_name(name: str) -> str:
    """The slug a facet is stored and rendered under (``facet-<name>`` variants)."""
    slug = slugify(name)
    if not slug:
        raise InvalidInput("a facet needs a name with letters or digits")
    return slug[:48]  # the variant column holds 64 characters, "facet-" and a suffix included


def facet_out(a: Artifact) -> FacetOut:
    meta = a.meta or {}
    return FacetOut(
        name=a.variant,
        layer=meta.get("layer"),
        accuracy=meta.get("accuracy"),
        n_facet=meta.get("n_facet"),
        n_generic=meta.get("n_generic"),
        url=urls.object_url(a.storage_key),
    )


def list_facets(session: Session, model: Model) -> list[FacetOut]:
    """The model's trained facets, by name."""
    return [facet_out(a) for a in CatalogRepository(session).facet_probes(model.id)]


def get_facet(session: Session, model: Model, name: str) -> Artifact:
    """The stored probe of a trained facet; 404 if the model has none by that name."""
    found = CatalogRepository(session).facet_probes(model.id, slugify(name))
    if not found:
        raise NotFoundError("facet", name)
    return found[0]


def facet_layer(session: Session, model: Model, name: str | None) -> Layer:
    """The named layer, or the middle of the model's default layers (a lower layer)."""
    repo = CatalogRepository(session)
    if name is not None:
        layer = repo.get_layer(model.id, name)
        if layer is None:
            raise NotFoundError("layer", name)
        return layer
    layers = repo.list_layers(model.id, only_default=True)
    if not layers:
        raise NotReady(f"model {model.slug} has no layers yet (still registering?)")
    return layers[(len(layers) - 1) // 2]


def check_facet_below(session: Session, model: Model, probe: Artifact, layer: Layer) -> None:
    """A facet steers a unit through a layer the unit reads from: the probe's layer must come
    before the unit's (its gradient at a later layer does not exist)."""
    name = (probe.meta or {}).get("layer")
    below = CatalogRepository(session).get_layer(model.id, name) if name else None
    if below is not None and below.order >= layer.order:
        raise InvalidInput(
            f"facet {probe.variant!r} reads layer {below.name}, which is not below {layer.name}:"
            " render a later layer's units with it"
        )
