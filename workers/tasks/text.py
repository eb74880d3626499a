"""Task: text-aligned views of a model — search index, text feature vis, labels, families."""

from __future__ import annotations

import io
import json
from collections import Counter
from typing import Any

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db.models import Artifact, Family, FamilyMember, Job, Layer, Model, Unit
from backend.storage import ObjectStore, make_store
from contracts.jobs import (
    TASK_RENDERED_WORDS,
    TASK_TEXT_VIEWS,
    JobState,
    MineExamplesParams,
    RenderedWordsParams,
    TextViewsParams,
)
from contracts.spec import slugify
from workers.tasks.artifacts import publish, publish_ranked
from workers.tasks.jobrun import Progress, Waiting, job_task, params_of, ready_model
from workers.tasks.labels import label_units
from workers.tasks.mining import BATCH, _device, _loader_fn, cached_model, make_plan

TOP_EXAMPLES = 8  # a unit's text vector: the head's mean output over its top examples
VOCAB_WORDS = 5000  # dictionary words in the vocabulary (plus class names and prompts)
FAMILY_SIZE = 24
TEXT_VERSION = 2  # 2: classifiers describe images by class probabilities
# CLIP only: the one-token words each climb searches (how many units are climbed is the job's
# TextViewsParams.climb_units).
CLIMB_CANDIDATES = 64
CLIMB_TOKENS = 3
CLIMB_SWEEPS = 2
CLIMB_VERSION = 1


def _mining_done(session: Session, model_id: int, dataset_id: int) -> bool:
    jobs = session.scalars(
        select(Job).where(Job.kind == "mine_examples", Job.model_id == model_id)
    ).all()
    return any(
        j.state == JobState.SUCCEEDED
        and MineExamplesParams.model_validate(j.params).dataset_id == dataset_id
        for j in jobs
    )


def text_views(session: Session, job: Job, progress: Progress) -> str:
    """Unit text vectors from the head's output over each unit's top dataset examples, then
    the search index, each unit's top strings, labels scored on held-out images (shown only
    above a measured bar) and proposed families; for
    CLIP, token strings hill-climbed for the first ``climb_units`` units of each layer."""
    from workers.ml.mining import make_loader
    from workers.ml.text.families import propose_families
    from workers.ml.text.heads import NoTextHead, make_text_head
    from workers.ml.text.index import search_index_arrays, unit_text_vectors
    from workers.ml.text.textfv import build_vocabulary, dictionary_words, top_strings
    from workers.ml.text.unit_vectors import head_outputs

    p = params_of(job, TextViewsParams)
    plan = make_plan(session, p.model_id, p.dataset_id)
    if not _mining_done(session, plan.model.id, plan.ds.id):
        raise Waiting(f"waiting for the dataset examples of {plan.model.slug}")
    model, layers, store = plan.model, plan.layers, make_store(get_settings())
    session.commit()
    loaded = cached_model(model.spec, _device())
    try:
        head = make_text_head(loaded)
    except NoTextHead as e:
        return f"no text-aligned head: {e}"
    n_words = VOCAB_WORDS
    progress(0, 6, "head outputs over the dataset")
    ids, outputs = head_outputs(
        loaded,
        head,
        make_loader(plan.ids, _loader_fn(plan, loaded.preprocess, plan.ids), BATCH),
    )  # (N,), (N, S)

    # Each unit's top example ids, from the published dataset-example indexes.
    index_keys = {
        (lid, u): key
        for lid, u, key in session.execute(
            select(Artifact.layer_id, Artifact.unit_index, Artifact.storage_key).where(
                Artifact.model_id == model.id, Artifact.kind == "dataset_examples"
            )
        )
    }
    top_ids: dict[str, torch.Tensor] = {}
    for layer in layers:
        rows = []
        for u in range(layer.unit_count):
            key = index_keys.get((layer.id, u))
            top = json.loads(store.get(key))["top"][:TOP_EXAMPLES] if key else []
            ids_u = [e["image_id"] for e in top] + [-1] * (TOP_EXAMPLES - len(top))
            rows.append(ids_u)
        top_ids[layer.module_path] = torch.tensor(rows, dtype=torch.int64)  # (U, k)
    progress(1, 6, "unit vectors")
    text = unit_text_vectors(head, ids, outputs, top_ids)  # path -> (U, D)

    progress(2, 6, "vocabulary")
    vocab = build_vocabulary(loaded.class_names or [], dictionary_words(limit=n_words))
    vocab_emb = torch.nn.functional.normalize(head.encode(vocab).float(), dim=-1)  # (V, D)

    # The search index the web process queries with numpy.
    arrays = search_index_arrays([(x.name, text[x.module_path]) for x in layers], vocab, vocab_emb)
    vecs = torch.from_numpy(arrays["unit_vecs"])  # (U_all, D) normalised
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    params = {
        "dataset_checksum": plan.ds.checksum,
        "model_checksum": model.weights_checksum,
        "vocab_words": n_words,
        "top_examples": TOP_EXAMPLES,
        "version": TEXT_VERSION,
    }
    session.execute(
        Artifact.__table__.delete().where(
            Artifact.model_id == model.id, Artifact.kind == "search_index"
        )
    )
    publish(
        session,
        store,
        model=model,
        layer=None,
        unit=None,
        kind="search_index",
        variant="",
        params=params,
        data=buf.getvalue(),
        ext="npz",
        content_type="application/octet-stream",
        meta={"units": int(vecs.shape[0]), "vocab": len(vocab), "dim": int(vecs.shape[1])},
    )

    session.commit()  # progress writes in its own transaction: never while holding the lock
    progress(3, 6, "text feature visualizations")
    units_by_key = {
        (u.layer_id, u.index): u
        for u in session.scalars(select(Unit).where(Unit.layer_id.in_([x.id for x in layers])))
    }
    for layer in layers:
        tops = top_strings(text[layer.module_path], vocab_emb, vocab, k=16)
        for u, strings in enumerate(tops):
            publish_ranked(
                session,
                store,
                model=model,
                layer=layer,
                unit=u,
                kind="text_fv",
                params=params,
                ranked=strings,
            )
        session.commit()

    progress(3, 6, "labels scored on held-out images")
    labelled = label_units(session, plan, loaded, head, units_by_key, progress)

    session.commit()
    progress(4, 6, "families")
    keys = [(x.name, int(i)) for x in layers for i in range(x.unit_count)]
    proposals = propose_families(vecs, keys, vocab_emb, vocab)
    prefix = f"{model.slug}-auto-"
    for old in session.scalars(select(Family).where(Family.slug.startswith(prefix))):
        session.delete(old)
    session.flush()
    layer_ids = {x.name: x.id for x in layers}
    made = Counter[str]()
    for prop in proposals:
        slug = slugify(f"{prefix}{prop.name}")
        made[slug] += 1
        if made[slug] > 1:
            slug = f"{slug}-{made[slug]}"
        fam = Family(
            slug=slug,
            name=f"{prop.name} ({model.slug})",
            description="proposed by clustering the units' text vectors: " + ", ".join(prop.words),
            source="auto",
        )
        session.add(fam)
        session.flush()
        for pos, (layer_name, u) in enumerate(prop.members[:FAMILY_SIZE]):
            unit = units_by_key.get((layer_ids[layer_name], u))
            if unit is not None:
                session.add(FamilyMember(family_id=fam.id, unit_id=unit.id, position=pos))

    # Last, as the slowest part: the families are committed before it starts.
    climbed = 0
    climb_units = p.climb_units
    if head.kind == "clip" and climb_units != 0:
        session.commit()
        progress(5, 6, "hill-climbing token strings")
        climbed = _climb_strings(
            session,
            store,
            loaded,
            model,
            layers,
            text,
            vocab,
            vocab_emb,
            params,
            units=climb_units,
            candidates=CLIMB_CANDIDATES,
        )
    climbs = f", {climbed} climbed" if climbed else ""
    return (
        f"{int(vecs.shape[0])} units ({labelled} labelled), {len(vocab)} strings{climbs}, "
        f"{len(proposals)} families"
    )


def _climb_strings(
    session: Session,
    store: ObjectStore,
    loaded: Any,
    model: Model,
    layers: list[Layer],
    text: dict[str, torch.Tensor],
    vocab: list[str],
    vocab_emb: torch.Tensor,
    params: dict[str, Any],
    *,
    units: int | None,
    candidates: int,
) -> int:
    """Token strings hill-climbed towards each unit's text vector (the article's text feature
    visualization) for the first ``units`` units of each layer (None: all), published as the
    ``hill_climb`` variant of ``text_fv``; returns how many units were climbed."""
    from workers.ml.text.textfv import LM_PENALTY, climb_candidates, hill_climb, one_token_words

    rows, ids = one_token_words(vocab)
    if not ids:
        return 0
    word_emb = vocab_emb[rows]  # (W, D) the one-token words' own embeddings
    climb_params = {
        **params,
        "candidates": candidates,
        "tokens": CLIMB_TOKENS,
        "sweeps": CLIMB_SWEEPS,
        "lm_penalty": LM_PENALTY,
        "climb_version": CLIMB_VERSION,
    }
    # A run replaces every earlier climb of this model (other settings, other unit counts).
    session.execute(
        Artifact.__table__.delete().where(
            Artifact.model_id == model.id,
            Artifact.kind == "text_fv",
            Artifact.variant == "hill_climb",
        )
    )
    done = 0
    for layer in layers:
        vecs = text[layer.module_path]  # (U, D)
        n = layer.unit_count if units is None else min(int(units), layer.unit_count)
        for u in range(n):
            cands = climb_candidates(vecs[u], word_emb, ids, candidates)
            climb = hill_climb(loaded, vecs[u], cands, n_tokens=CLIMB_TOKENS, sweeps=CLIMB_SWEEPS)
            start = {"text": climb.start_text, "tokens": climb.start, "score": climb.start_score}
            publish_ranked(
                session,
                store,
                model=model,
                layer=layer,
                unit=u,
                kind="text_fv",
                params=climb_params,
                ranked=climb.top,
                variant="hill_climb",
                extra={"tokens": climb.tokens, "start": start, "lm_penalty": LM_PENALTY},
            )
            done += 1
        session.commit()
    return done


text_views_task = job_task(TASK_TEXT_VIEWS, text_views)


def rendered_words(session: Session, job: Job, progress: Progress) -> str:
    """Dictionary words rendered as images and mined: each unit's top words after subtracting
    its mean over all words (the article's image-based word embedding)."""
    from contracts.layout import Layout
    from workers.ml.text.textfv import dictionary_words
    from workers.ml.text.words import top_words, word_activations

    p = params_of(job, RenderedWordsParams)
    model = ready_model(session, p.model_id)
    dataset_id = p.dataset_id
    if dataset_id is not None and not _mining_done(session, model.id, dataset_id):
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
    loaded = cached_model(model.spec, _device())
    layouts = {x.module_path: Layout.from_dict(x.layout) for x in layers}
    chunks: dict[str, list[torch.Tensor]] = {p: [] for p in layouts}
    step = 256
    for start in range(0, len(words), step):
        part = word_activations(loaded, layouts, words[start : start + step])  # path -> (w, U)
        for path, acts in part.items():
            chunks[path].append(acts)
        progress(min(start + step, len(words)), len(words), "rendering and mining words")
    store = make_store(get_settings())
    params = {"model_checksum": model.weights_checksum, "words": len(words), "version": 1}
    for layer in layers:
        acts = torch.cat(chunks[layer.module_path])  # (W, U)
        for u, tops in enumerate(top_words(acts, words, k=16)):
            publish_ranked(
                session,
                store,
                model=model,
                layer=layer,
                unit=u,
                kind="rendered_words",
                params=params,
                ranked=tops,
            )
        session.commit()
    return f"{len(words)} words over {len(layers)} layers"


rendered_words_task = job_task(TASK_RENDERED_WORDS, rendered_words)
