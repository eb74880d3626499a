"""The JSON artifacts the workers write and the pages read, one model per shape.

Workers build these models and publish ``model_dump_json()``; the web process validates the
stored bytes back with ``model_validate_json``, so a field renamed on one side cannot go
unnoticed on the other. Unknown fields are ignored on reading (a newer writer may add some).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class JsonModel(BaseModel):
    """Base of every model here, parts included (pydantic applies a config per class)."""

    # NaN and infinities stay NaN / Infinity in the JSON, as Python's json module writes and
    # reads them (a unit that never fires has NaN moments), instead of null, which the float
    # fields would then refuse.
    model_config = ConfigDict(ser_json_inf_nan="constants")


# ---------------------------------------------------------------------------------------------
# dataset_examples: one per unit


class Example(JsonModel):
    """One dataset example of a unit: the image, its score and where the unit peaked."""

    image_id: int
    score: float  # the unit's max over positions (negative examples: its min)
    y: int  # row of the extreme position in the unit map
    x: int  # column
    # The position's receptive field (top, left, bottom, right) on the model-view image, in
    # pixels; set once the unit's sheets are drawn.
    box: tuple[int, int, int, int] | None = None


class Stratum(JsonModel):
    """Images from one quantile band of the unit's per-image max."""

    lo: float
    hi: float
    image_ids: list[int]
    scores: list[float]


class Histogram(JsonModel):
    """Counts of the sampled images' max scores in equal bins over [lo, hi]."""

    lo: float
    hi: float
    counts: list[int]


class UnitStats(JsonModel):
    """Moments of the unit's max over positions, over every image mined."""

    count: int  # images mined
    mean: float
    std: float
    active_share: float  # share of images whose max is above zero
    min: float  # over all images and positions
    max: float


class DatasetExamples(JsonModel):
    """A unit's dataset examples (kind ``dataset_examples``)."""

    top: list[Example]  # best first
    negative: list[Example] | None  # most negative first; None when the unit never goes below 0
    strata: list[Stratum]  # lowest quantile first
    histogram: Histogram
    stats: UnitStats
    input_size: int | None = None  # side of the model-view image the boxes are in


# ---------------------------------------------------------------------------------------------
# text_fv and rendered_words: one per unit


class RankedString(JsonModel):
    text: str
    score: float


class RankedStrings(JsonModel):
    """A unit's strings, best first (``text_fv``, ``rendered_words``)."""

    top: list[RankedString]

    @classmethod
    def of(cls, ranked: list[tuple[str, float]]) -> RankedStrings:
        """From (text, score) pairs, best first."""
        return cls(top=[RankedString(text=t, score=s) for t, s in ranked])


class ClimbStart(JsonModel):
    text: str
    tokens: list[int]
    score: float


class ClimbedStrings(RankedStrings):
    """Token strings hill-climbed towards the unit's text vector (``text_fv``, variant
    ``hill_climb``): the best strings, the winner's tokens and where the climb started."""

    tokens: list[int]
    start: ClimbStart
    lm_penalty: float


# ---------------------------------------------------------------------------------------------
# weights_svd and the weights_nmf factors: one per layer


class WeightsSvd(JsonModel):
    """Every unit of a layer placed by the first two left singular vectors of its weights."""

    matrix: str  # what was decomposed
    inputs: str  # what the input channels are
    units: list[tuple[float, float]]  # (C_out, 2)
    input_channels: list[tuple[float, float]]  # (C_in, 2)
    singular_values: list[float]  # the largest, at most 16


class FactorInput(JsonModel):
    """An input channel one NMF colour reads."""

    channel: int
    name: str
    sign: Literal["+", "-"]  # an excitatory or an inhibitory weight
    share: float  # of the colour


class WeightsFactors(JsonModel):
    """What each colour of a layer's NMF-RGB images reads (``weights_nmf``, variant
    ``factors``)."""

    inputs: str  # what the input channels are
    input_count: int
    kernel: tuple[int, int]
    error: float  # relative reconstruction error of the NMF
    converged: bool
    colours: dict[str, list[FactorInput]]  # red, green, blue -> its strongest inputs
    components: list[list[float]]  # (3, 2 * C_in): [+W | -W]
