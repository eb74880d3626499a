"""Feature visualization: Fourier-parameterized images optimised for many units per batch."""

from workers.ml.featvis.facets import FacetProbe, train_facet_probe
from workers.ml.featvis.objectives import Objective
from workers.ml.featvis.render import RenderResult, evaluate_units, optimise, render_units
from workers.ml.featvis.transforms import TransformConfig

__all__ = [
    "FacetProbe",
    "Objective",
    "RenderResult",
    "TransformConfig",
    "evaluate_units",
    "optimise",
    "render_units",
    "train_facet_probe",
]
