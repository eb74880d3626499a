"""Tasks: text-aligned views of a model (search index, top strings, labels, families, CLIP's
hill-climbed strings) and rendered words."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db.models import Artifact, Family, FamilyMember, Job, Layer, Model, Unit
from backend.storage import ObjectStore, make_store
from contracts.artifacts import DatasetExamples, RankedStrings
from contracts.jobs import (
    TASK_RENDERED_WORDS,
    TASK_TEXT_VIEWS,
    MineExamplesParams,
    RenderedWordsParams,
    TextViewsParams,
)
from contracts.layout import Layout
from contracts.spec import slugify
from workers.ml.models import LoadedModel
from workers.ml.sources import make_loader
from workers.ml.text.families import propose_families
from workers.ml.text.heads import NoTextHead, TextHead, make_text_head
from workers.ml.text.index import search_index_arrays, unit_text_vectors
from workers.ml.text.textfv import (
    LM_PENALTY,
    build_vocabulary,
    climb_candidates,
    dictionary_words,
    hill_climb,
    one_token_words,
    top_strings,
)
from workers.ml.text.unit_vectors import head_outputs
from workers.ml.text.words import top_words, word_activations
from workers.tasks.artifacts import publish, publish_json
from workers.tasks.jobrun import Progress, Waiting, job_task, params_of, settled
from workers.tasks.labels import label_units
from workers.tasks.mining import BATCH, Plan, make_plan
from workers.tasks.runtime import cached_model, device, ready_model

TOP_EXAMPLES = 8  # a unit's text vector: the head's mean output over its top examples
TOP_STRINGS = 16  # strings shown per unit
FAMILY_SIZE = 24
TEXT_VERSION = 2  # 2: classifiers describe images by class probabilities
# CLIP only: the tokens of each climbed string and the sweeps over them (how many units are
# climbed, and among how many one-token words, are the job's TextViewsParams).
CLIMB_TOKENS = 3
CLIMB_SWEEPS = 2
CLIMB_VERSION = 1
WORDS_VERSION = 1
WORDS_BATCH = 256  # rendered words per progress report


def _mining_done(session: Session, model_id: int, dataset_id: int) -> bool:
    """True once the dataset examples exist; DependencyFailed when their mining failed."""
    jobs = session.scalars(
        select(Job).where(Job.kind == "mine_examples", Job.model_id == model_id).order_by(Job.id)
    ).all()
    mined = [
        j for j in jobs if MineExamplesParams.model_validate(j.params).dataset_id == dataset_id
    ]
    return settled(mined, "mining the dataset examples")


@dataclass
class TextRun:
    """What the steps of one text-views run share."""

    session: Session
    store: ObjectStore
    model: Model
    layers: list[Layer]
    loaded: LoadedModel
    head: TextHead
    params: dict[str, Any]  # provenance of every artifact the run publishes
    top_ids: dict[str, torch.Tensor]  # layer path -> (U, k) top example ids, -1 = none
    predicted: dict[int, str]  # image id -> the class the model predicts (classifiers only)
    text: dict[str, torch.Tensor]  # layer path -> (U, D) each unit's text vector
    vocab: list[str]
    vocab_emb: torch.Tensor  # (V, D) normalised
    units: dict[tuple[int, int], Unit]  # (layer id, index) -> its row


def _top_example_ids(
    session: Session, store: ObjectStore, model: Model, layers: list[Layer]
) -> dict[str, torch.Tensor]:
    """Each unit's top example ids, from its published dataset-examples index: (U, k) per
    layer path, -1 where a unit has fewer (or no index)."""
    index_keys = {
        (lid, u): key
        for lid, u, key in session.execute(
            select(Artifact.layer_id, Artifact.unit_index, Artifact.storage_key).where(
                Artifact.model_id == model.id, Artifact.kind == "dataset_examples"
            )
        )
    }
    out: dict[str, torch.Tensor] = {}
    for layer in layers:
        rows = []
        for u in range(layer.unit_count):
            key = index_keys.get((layer.id, u))
            top = DatasetExamples.model_validate_json(store.get(key)).top if key else []
            ids_u = [e.image_id for e in top[:TOP_EXAMPLES]]
            rows.append(ids_u + [-1] * (TOP_EXAMPLES - len(ids_u)))
        out[layer.module_path] = torch.tensor(rows, dtype=torch.int64)  # (U, k)
    return out


def _start(
    session: Session, store: ObjectStore, plan: Plan, p: TextViewsParams, progress: Progress
) -> TextRun | str:
    """Unit text vectors from what the head says about each unit's top examples, and the
    vocabulary's embeddings; a message instead when the model has no text-aligned head."""
    loaded = cached_model(plan.model.spec, device())
    try:
        head = make_text_head(loaded)
    except NoTextHead as e:
        return f"no text-aligned head: {e}"
    progress(0, 6, "head outputs over the dataset")
    images = plan.images
    batches = make_loader(images.ids, images.loader(images.ids, loaded.preprocess), BATCH)
    ids, outputs = head_outputs(loaded, head, batches)  # (N,), (N, S)
    top_ids = _top_example_ids(session, store, plan.model, plan.layers)
    classes = loaded.class_names or []
    predicted = (
        dict(zip(ids.tolist(), (classes[c] for c in outputs.argmax(dim=1).tolist()), strict=True))
        if classes
        else {}
    )
    progress(1, 6, "unit vectors")
    text = unit_text_vectors(head, ids, outputs, top_ids)  # path -> (U, D)
    progress(2, 6, "vocabulary")
    vocab = build_vocabulary(classes, dictionary_words(limit=p.vocab_words))
    vocab_emb = F.normalize(head.encode(vocab).float(), dim=-1)  # (V, D)
    params = {
        "dataset_checksum": plan.ds.checksum,
        "model_checksum": plan.model.weights_checksum,
        "vocab_words": p.vocab_words,
        "top_examples": TOP_EXAMPLES,
        "version": TEXT_VERSION,
    }
    units = {
        (u.layer_id, u.index): u
        for u in session.scalars(select(Unit).where(Unit.layer_id.in_([x.id for x in plan.layers])))
    }
    return TextRun(
        session=session,
        store=store,
        model=plan.model,
        layers=plan.layers,
        loaded=loaded,
        head=head,
        params=params,
        top_ids=top_ids,
        predicted=predicted,
        text=text,
        vocab=vocab,
        vocab_emb=vocab_emb,
        units=units,
    )


def _index(run: TextRun) -> torch.Tensor:
    """Publish the search index the web process queries with numpy (replacing the model's
    previous one); returns every unit's normalised vector (U_all, D), in layer order."""
    layers = [(x.name, run.text[x.module_path]) for x in run.layers]
    arrays = search_index_arrays(layers, run.vocab, run.vocab_emb)
    vecs = torch.from_numpy(arrays["unit_vecs"])  # (U_all, D)
    buf = io.BytesIO()
    # (Any: numpy's stubs would match a str-keyed dict of arrays against allow_pickle.)
    np.savez_compressed(buf, **cast(dict[str, Any], arrays))
    run.session.execute(
        delete(Artifact).where(Artifact.model_id == run.model.id, Artifact.kind == "search_index")
    )
    publish(
        run.session,
        run.store,
        model=run.model,
        layer=None,
        unit=None,
        kind="search_index",
        variant="",
        params=run.params,
        data=buf.getvalue(),
        ext="npz",
        content_type="application/octet-stream",
        meta={"units": int(vecs.shape[0]), "vocab": len(run.vocab), "dim": int(vecs.shape[1])},
    )
    run.session.commit()
    return vecs


def _strings(run: TextRun) -> dict[str, list[list[tuple[str, float]]]]:
    """Publish each unit's top vocabulary strings (``text_fv``); returns them per layer path."""
    out = {}
    put = partial(
        publish_json, run.session, run.store, model=run.model, kind="text_fv", params=run.params
    )
    for layer in run.layers:
        tops = top_strings(run.text[layer.module_path], run.vocab_emb, run.vocab, k=TOP_STRINGS)
        for u, strings in enumerate(tops):
            put(RankedStrings.of(strings), layer=layer, unit=u, variant="")
        run.session.commit()  # layer by layer: a lost worker loses one layer
        out[layer.module_path] = tops
    return out


def _families(run: TextRun, vecs: torch.Tensor) -> int:
    """Replace the model's proposed families with clusters of its units' text vectors;
    returns how many were proposed."""
    keys = [(x.name, i) for x in run.layers for i in range(x.unit_count)]
    proposals = propose_families(vecs, keys, run.vocab_emb, run.vocab)
    prefix = f"{run.model.slug}-auto-"
    for old in run.session.scalars(select(Family).where(Family.slug.startswith(prefix))):
        run.session.delete(old)
    run.session.flush()
    layer_ids = {x.name: x.id for x in run.layers}
    made = Counter[str]()
    for prop in proposals:
        slug = slugify(f"{prefix}{prop.name}")
        made[slug] += 1
        if made[slug] > 1:
            slug = f"{slug}-{made[slug]}"
        fam = Family(
            slug=slug,
            name=f"{prop.name} ({run.model.slug})",
            description="proposed by clustering the units' text vectors: " + ", ".join(prop.words),
            source="auto",
        )
        run.session.add(fam)
        run.session.flush()
        for pos, (layer_name, u) in enumerate(prop.members[:FAMILY_SIZE]):
            unit = run.units.get((layer_ids[layer_name], u))
            if unit is not None:
                run.session.add(FamilyMember(family_id=fam.id, unit_id=unit.id, position=pos))
    run.session.commit()
    return len(proposals)


def _climb_strings(run: TextRun, *, units: int | None, candidates: int) -> int:
    """Token strings hill-climbed towards each unit's text vector (the article's text feature
    visualization) for the first ``units`` units of each layer (None: all), published as the
    ``hill_climb`` variant of ``text_fv``; returns how many units were climbed."""
    rows, ids = one_token_words(run.vocab)
    if not ids:
        return 0
    word_emb = run.vocab_emb[rows]  # (W, D) the one-token words' own embeddings
    climb_params = {
        **run.params,
        "candidates": candidates,
        "tokens": CLIMB_TOKENS,
        "sweeps": CLIMB_SWEEPS,
        "lm_penalty": LM_PENALTY,
        "climb_version": CLIMB_VERSION,
    }
    # A run replaces every earlier climb of this model (other settings, other unit counts).
    run.session.execute(
        delete(Artifact).where(
            Artifact.model_id == run.model.id,
            Artifact.kind == "text_fv",
            Artifact.variant == "hill_climb",
        )
    )
    put = partial(
        publish_json, run.session, run.store, model=run.model, kind="text_fv", params=climb_params
    )
    done = 0
    for layer in run.layers:
        vecs = run.text[layer.module_path]  # (U, D)
        n = layer.unit_count if units is None else min(units, layer.unit_count)
        for u in range(n):
            cands = climb_candidates(vecs[u], word_emb, ids, candidates)
            climb = hill_climb(
                run.loaded, vecs[u], cands, n_tokens=CLIMB_TOKENS, sweeps=CLIMB_SWEEPS
            )
            put(climb.artifact(), layer=layer, unit=u, variant="hill_climb")
            done += 1
        run.session.commit()
    return done


def text_views(session: Session, job: Job, progress: Progress) -> str:
    """Unit text vectors from the head's output over each unit's top dataset examples, then
    the search index, each unit's top strings, labels scored on held-out images (shown only
    above a measured bar) and proposed families; for
    CLIP, token strings hill-climbed for the first ``climb_units`` units of each layer."""
    p = params_of(job, TextViewsParams)
    plan = make_plan(session, p.model_id, p.dataset_id)
    if not _mining_done(session, plan.model.id, plan.ds.id):
        raise Waiting(f"waiting for the dataset examples of {plan.model.slug}")
    store = make_store(get_settings())
    session.commit()  # progress writes in its own transaction: never while holding a lock
    run = _start(session, store, plan, p, progress)
    if isinstance(run, str):
        return run
    vecs = _index(run)
    progress(3, 6, "text feature visualizations")
    _strings(run)
    run.session.commit()  # progress writes in its own transaction: never while holding a lock
    progress(3, 6, "labels scored on held-out images")
    labelled = label_units(session, plan, run.loaded, run.head, run.units, progress)
    progress(4, 6, "families")
    families = _families(run, vecs)
    # Last, as the slowest part: everything else is committed before it starts.
    climbed = 0
    if run.head.kind == "clip" and p.climb_units != 0:
        progress(5, 6, "hill-climbing token strings")
        climbed = _climb_strings(run, units=p.climb_units, candidates=p.climb_candidates)
    climbs = f", {climbed} climbed" if climbed else ""
    return (
        f"{int(vecs.shape[0])} units ({labelled} labelled), {len(run.vocab)} strings{climbs}, "
        f"{families} families"
    )


text_views_task = job_task(TASK_TEXT_VIEWS, text_views)


def rendered_words(session: Session, job: Job, progress: Progress) -> str:
    """Dictionary words rendered as images and mined: each unit's top words after subtracting
    its mean over all words (the article's image-based word embedding)."""
    p = params_of(job, RenderedWordsParams)
    model = ready_model(session, p.model_id)
    if p.dataset_id is not None and not _mining_done(session, model.id, p.dataset_id):
        # Not needed for the words, but a person waits for dataset examples first.
        raise Waiting(f"waiting for the dataset examples of {model.slug}")
    layers = list(
        session.scalars(
            select(Layer)
            .where(Layer.model_id == model.id, Layer.is_default.is_(True))
            .order_by(Layer.order)
        )
    )
    words = dictionary_words(limit=p.words)
    session.commit()
    loaded = cached_model(model.spec, device())
    layouts = {x.module_path: Layout.from_dict(x.layout) for x in layers}
    chunks: dict[str, list[torch.Tensor]] = {path: [] for path in layouts}
    for start in range(0, len(words), WORDS_BATCH):
        part = word_activations(loaded, layouts, words[start : start + WORDS_BATCH])
        for path, acts in part.items():  # (w, U)
            chunks[path].append(acts)
        progress(min(start + WORDS_BATCH, len(words)), len(words), "rendering and mining words")
    store = make_store(get_settings())
    params = {
        "model_checksum": model.weights_checksum,
        "words": len(words),
        "version": WORDS_VERSION,
    }
    put = partial(publish_json, session, store, model=model, kind="rendered_words", params=params)
    for layer in layers:
        acts = torch.cat(chunks[layer.module_path])  # (W, U)
        for u, tops in enumerate(top_words(acts, words, k=TOP_STRINGS)):
            put(RankedStrings.of(tops), layer=layer, unit=u, variant="")
        session.commit()
    return f"{len(words)} words over {len(layers)} layers"


rendered_words_task = job_task(TASK_RENDERED_WORDS, rendered_words)
