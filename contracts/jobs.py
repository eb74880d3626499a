"""Jobs as the web process writes them and the workers read them: states, task names, and
one typed parameter model per job kind.

The backend builds a params model and stores ``model_dump(mode="json")`` in the job row;
the task validates the row back into the same model, so a default lives in one place.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class JobState(StrEnum):
    """Where a job is; the jobs table is the truth."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
IN_FLIGHT_STATES = (JobState.QUEUED, JobState.RUNNING)

# "interactive" carries what a person asked for from a page, ahead of bulk work.
QUEUES = ("interactive", "gpu", "cpu")

# Task names: the web process sends these by name and never imports task code.
TASK_REGISTER_MODEL = "microscope.register_model"
TASK_IMPORT_DATASET = "microscope.import_dataset"
TASK_MINE_EXAMPLES = "microscope.mine_examples"
TASK_MINE_SHARD = "microscope.mine_examples_shard"
TASK_FEATVIS = "microscope.featvis"
TASK_FEATVIS_BULK = "microscope.featvis_bulk"
TASK_TEXT_VIEWS = "microscope.text_views"
TASK_RENDERED_WORDS = "microscope.rendered_words"
TASK_TRAIN_FACET = "microscope.train_facet"
TASK_WEIGHT_VIEWS = "microscope.weight_views"
TASK_CONDPROB = "microscope.condprob"
TASK_TYPOGRAPHIC = "microscope.typographic"

# Feature-visualization objectives. "channel" is Lucid's, Lucent's and Microscope's: the
# channel's spatial mean. The default bulk render, "channel_top16", maximises the mean of the
# unit's 16 strongest positions (it drives the unit's max, what dataset examples are ranked
# by, higher; the spatial mean lower): a different objective under its own name.
FEATVIS_OBJECTIVES = ("channel_top16", "channel", "neuron", "negative", "diversity")
Objective = Literal["channel_top16", "channel", "neuron", "negative", "diversity"]
DEFAULT_OBJECTIVE: Objective = "channel_top16"
# The renders that stand for a unit (grid thumbnails, cards), preferred first.
CHANNEL_VARIANTS = ("channel_top16", "channel")
# What each objective maximises, as pages say beside every image it made.
OBJECTIVE_TITLES = {
    "channel_top16": "the mean of the unit's 16 strongest positions",
    "channel": "the channel's spatial mean (Lucid's channel objective)",
    "neuron": "the activation at the centre position",
    "negative": "minus the mean of the unit's 16 lowest positions",
    "diversity": "the top-16 mean of 4 images pushed apart",
}
DEFAULT_WORDS = 10000  # dictionary words rendered and mined per model
DEFAULT_CLIMB_UNITS = 8  # CLIP units per default layer whose token strings are hill-climbed
DEFAULT_CLIMB_CANDIDATES = 64  # one-token words each climb searches
DEFAULT_VOCAB_WORDS = 5000  # dictionary words in the text vocabulary (plus class names, prompts)
DEFAULT_FEATVIS_STEPS = 512
# Broad categories: concept words for labels (beside the model's class names) and the default
# categories of conditional probability plots (a user can pass others).
DEFAULT_CONCEPTS = (
    "animal",
    "bird",
    "dog",
    "cat",
    "insect",
    "fish",
    "plant",
    "flower",
    "fruit",
    "food",
    "vehicle",
    "building",
    "furniture",
    "tool",
    "clothing",
    "person",
    "text",
    "sky",
    "water",
    "landscape",
)
DEFAULT_BUCKETS = 12  # conditional probability plots: buckets over [min, max] activation
DEFAULT_PER_BUCKET = 32  # images sampled per bucket, at most
DEFAULT_ATTACK_WORDS = 8  # typographic attacks: words written on the photos
DEFAULT_ATTACK_PHOTOS = 48  # photos each word is written on
# A layer selection: "default" (the model's default layers) or explicit layer names.
LayerSelection = Literal["default"] | list[str]


class JobParams(BaseModel):
    """Base of every job's parameters: its kind and task name go with the class."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str]
    task: ClassVar[str]

    def to_row(self) -> dict[str, object]:
        """The JSON stored in ``jobs.params`` (also what the job's dedupe key hashes)."""
        return self.model_dump(mode="json")


class RegisterModelParams(JobParams):
    kind: ClassVar[str] = "register_model"
    task: ClassVar[str] = TASK_REGISTER_MODEL
    model_id: int
    spec: str


class ImportDatasetParams(JobParams):
    kind: ClassVar[str] = "import_dataset"
    task: ClassVar[str] = TASK_IMPORT_DATASET
    dataset_id: int
    source: str


class MineExamplesParams(JobParams):
    kind: ClassVar[str] = "mine_examples"
    task: ClassVar[str] = TASK_MINE_EXAMPLES
    model_id: int
    dataset_id: int
    layers: LayerSelection = "default"

    @property
    def layer_names(self) -> list[str] | None:
        """Explicit layer names, or None for the model's default layers."""
        return None if self.layers == "default" else list(self.layers)


class MineShardParams(MineExamplesParams):
    kind: ClassVar[str] = "mine_shard"
    task: ClassVar[str] = TASK_MINE_SHARD
    run_hash: str
    shard: int = Field(ge=0)
    # Dataset positions [start, stop) of the shard's images: the job loads only those rows.
    start: int = Field(ge=0)
    stop: int = Field(ge=0)


class TextViewsParams(JobParams):
    kind: ClassVar[str] = "text_views"
    task: ClassVar[str] = TASK_TEXT_VIEWS
    model_id: int
    dataset_id: int
    climb_units: int | None = DEFAULT_CLIMB_UNITS  # None: every unit; 0: none
    climb_candidates: int = Field(default=DEFAULT_CLIMB_CANDIDATES, ge=1)
    vocab_words: int = Field(default=DEFAULT_VOCAB_WORDS, ge=1)


class RenderedWordsParams(JobParams):
    kind: ClassVar[str] = "rendered_words"
    task: ClassVar[str] = TASK_RENDERED_WORDS
    model_id: int
    dataset_id: int | None = None
    words: int = Field(default=DEFAULT_WORDS, ge=1)


class FeatvisBulkParams(JobParams):
    kind: ClassVar[str] = "featvis_bulk"
    task: ClassVar[str] = TASK_FEATVIS_BULK
    model_id: int
    units_per_layer: int | None = None  # None: every unit of each default layer
    after: list[int] = []  # on a CPU, jobs to let finish first (text views)


class FeatvisParams(JobParams):
    kind: ClassVar[str] = "featvis"
    task: ClassVar[str] = TASK_FEATVIS
    model_id: int
    layer_id: int
    units: tuple[int, int]  # [start, stop)
    objective: Objective = DEFAULT_OBJECTIVE
    steps: int = Field(default=DEFAULT_FEATVIS_STEPS, ge=1)
    facet: str | None = None  # the facet's artifact variant ("facet-<name>")
    facet_probe: str | None = None  # the probe's params hash: a retrained facet renders again

    def to_row(self) -> dict[str, object]:
        """Unfaceted renders store no facet keys (their dedupe keys predate facets)."""
        return self.model_dump(mode="json", exclude_none=True)


class WeightViewsParams(JobParams):
    kind: ClassVar[str] = "weight_views"
    task: ClassVar[str] = TASK_WEIGHT_VIEWS
    model_id: int
    layers: LayerSelection = "default"


class CondProbParams(JobParams):
    """Conditional probability plots: per unit, the share of each concept among images
    sampled from uniform buckets of its activation range."""

    kind: ClassVar[str] = "condprob"
    task: ClassVar[str] = TASK_CONDPROB
    model_id: int
    dataset_id: int
    layers: LayerSelection = "default"
    concepts: list[str] = Field(default=list(DEFAULT_CONCEPTS), min_length=2, max_length=40)
    buckets: int = Field(default=DEFAULT_BUCKETS, ge=2, le=50)
    per_bucket: int = Field(default=DEFAULT_PER_BUCKET, ge=1, le=1000)

    @property
    def layer_names(self) -> list[str] | None:
        """Explicit layer names, or None for the model's default layers."""
        return None if self.layers == "default" else list(self.layers)


class TypographicParams(JobParams):
    """Typographic attacks: words pasted onto photos; how the prediction and units move."""

    kind: ClassVar[str] = "typographic"
    task: ClassVar[str] = TASK_TYPOGRAPHIC
    model_id: int
    dataset_id: int
    words: list[str] | None = Field(default=None, max_length=40)  # None: chosen from classes
    n_words: int = Field(default=DEFAULT_ATTACK_WORDS, ge=1, le=40)
    photos: int = Field(default=DEFAULT_ATTACK_PHOTOS, ge=1, le=2000)


class TrainFacetParams(JobParams):
    kind: ClassVar[str] = "train_facet"
    task: ClassVar[str] = TASK_TRAIN_FACET
    model_id: int
    name: str
    dataset_id: int
    generic_id: int
    layer_id: int
    dataset_checksums: list[str | None]


PARAMS_OF_KIND: dict[str, type[JobParams]] = {
    p.kind: p
    for p in (
        RegisterModelParams,
        ImportDatasetParams,
        MineExamplesParams,
        MineShardParams,
        TextViewsParams,
        RenderedWordsParams,
        FeatvisBulkParams,
        FeatvisParams,
        WeightViewsParams,
        TrainFacetParams,
        CondProbParams,
        TypographicParams,
    )
}
# job kind -> task name, used to send unfinished jobs again after a crash.
TASKS = {kind: p.task for kind, p in PARAMS_OF_KIND.items()}
