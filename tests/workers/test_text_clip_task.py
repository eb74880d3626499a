"""Text views end to end in-process on a CLIP model registered from a local checkpoint file:
mining, search index, strings, labels, families, hill-climbed strings, rendered words, pages."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from bs4 import BeautifulSoup
from sqlalchemy import select, update

from backend.catalog.service import add_model
from backend.datasets.service import add_dataset
from backend.db.models import Artifact, Dataset, Family, Job, Layer, Model, Unit
from backend.db.session import session_scope
from backend.precompute import queue_precompute
from backend.storage import make_store
from backend.textsearch import load_index
from tests.workers.test_mining_task import photos
from tests.workers.test_text_task import assert_labels_scored
from workers.ml.models import load_model, state_dict_checksum
from workers.ml.text.heads import make_text_head
from workers.ml.text.textfv import LM_PENALTY
from workers.tasks.catalog import register
from workers.tasks.datasets import import_folder
from workers.tasks.jobrun import Waiting, run_job
from workers.tasks.mining import mine, mine_shard
from workers.tasks.runtime import cached_model
from workers.tasks.text import rendered_words, text_views

pytestmark = pytest.mark.slow  # builds each model three times and runs every text job on it

HTML = {"Accept": "text/html"}
ARCHS = {
    # RN50's stem: 32 + 64 units, quick to mine.
    "RN50": ("visual.conv1", "visual.conv3"),
    # A CLIP ViT's image embedding (the head's own space) and its last MLP: ViT-S-32, the
    # same architecture as ViT-B-32 at half the width (384 + 1,536 units, a quarter the CPU).
    "ViT-S-32": ("visual.embedding", "visual.transformer.resblocks.11.mlp"),
}


@pytest.mark.parametrize(
    # The ViT checks the model's mechanics (minutes on a CPU); the database side is the same
    # as RN50's, which PostgreSQL runs again.
    "arch",
    [pytest.param("RN50"), pytest.param("ViT-S-32", marks=pytest.mark.once)],
)
def test_text_views_on_clip_from_a_local_checkpoint(arch, settings, tmp_path, client) -> None:
    from safetensors.torch import save_file

    LAYERS = ARCHS[arch]  # noqa: N806 - the layers this run browses
    family = "clip_vit" if arch.startswith("ViT") else "clip_resnet"
    net = load_model(f"open_clip:{arch}").full_model
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.001)  # unlike the seeded init, so the checkpoint is really read
    path = tmp_path / "tuned.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    checksum = state_dict_checksum(net.state_dict())
    del net

    url = settings.database_url
    with session_scope(url) as s:
        ds, ds_job = add_dataset(s, str(photos(tmp_path, n=4)), "imgs")
        m, m_job = add_model(s, f"open_clip:{arch}@{path}")
        s.info.clear()
        ds_id, mid, slug, ds_job_id, m_job_id = ds.id, m.id, m.slug, ds_job.id, m_job.id
    assert run_job(ds_job_id, import_folder) == "succeeded"
    assert run_job(m_job_id, register) == "succeeded"
    with session_scope(url) as s:
        m = s.get(Model, mid)
        assert m.family == family and m.pretrained and m.weights_checksum == checksum
        assert set(LAYERS) <= set(s.scalars(select(Layer.name).where(Layer.model_id == mid)))
        s.execute(
            update(Layer).where(Layer.model_id == mid).values(is_default=Layer.name.in_(LAYERS))
        )
        jobs = queue_precompute(s, m, s.get(Dataset, ds_id), featvis_units=0, words=20)
        s.info.clear()
        mine_id = next(j.id for j in jobs if j.kind == "mine_examples")
        words_id = next(j.id for j in jobs if j.kind == "rendered_words")
        text = next(j for j in jobs if j.kind == "text_views")
        text.params = {**text.params, "vocab_words": 100, "climb_units": 1, "climb_candidates": 8}
        text_id = text.id
    with pytest.raises(Waiting):  # queues the shard jobs and waits for them
        run_job(mine_id, mine)
    with session_scope(url) as s:
        shard_ids = s.scalars(select(Job.id).where(Job.kind == "mine_shard")).all()
    for j in shard_ids:
        assert run_job(j, mine_shard) == "succeeded"
    assert run_job(mine_id, mine) == "succeeded"
    assert run_job(text_id, text_views) == "succeeded"
    assert run_job(words_id, rendered_words) == "succeeded"

    store = make_store(settings)
    with session_scope(url) as s:
        layers = s.scalars(select(Layer).where(Layer.model_id == mid, Layer.is_default)).all()
        names = {x.id: x.name for x in layers}
        arts = s.scalars(select(Artifact).where(Artifact.model_id == mid)).all()
        fv = {
            (names[a.layer_id], a.unit_index, a.variant): a.storage_key
            for a in arts
            if a.kind == "text_fv"
        }
        index_key = next(a.storage_key for a in arts if a.kind == "search_index")
        units = s.scalars(select(Unit).where(Unit.layer_id.in_(names))).all()
        n = sum(x.unit_count for x in layers)
        assert sorted(names.values()) == sorted(LAYERS) and len(units) == n
        assert sum(a.kind == "rendered_words" for a in arts) == n
        assert sum(v == "" for *_, v in fv) == n
        assert sorted(k for k in fv if k[2] == "hill_climb") == [  # climb_units: 1
            (name, 0, "hill_climb") for name in sorted(LAYERS)
        ]
        assert_labels_scored(units)
        assert s.scalars(select(Family).where(Family.source == "auto")).all()

    # The climb never ends below where it started (the unit's best one-token words), and its
    # scores are the objective: cosine with the unit's text vector less the token penalty.
    index = load_index(store, index_key)
    loaded = cached_model(f"open_clip:{arch}@{path}", "cpu")
    head = make_text_head(loaded)
    for name in LAYERS:
        climbed = json.loads(store.get(fv[(name, 0, "hill_climb")]))
        top = climbed["top"]
        assert top[0]["score"] >= climbed["start"]["score"]
        assert [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
        row = index.layers.index(name)
        at = int(((index.unit_layer == row) & (index.unit_index == 0)).argmax())
        direction = torch.from_numpy(index.unit_vecs[at])  # (D,)
        emb = head.encode([top[0]["text"], climbed["start"]["text"]])  # (2, D)
        cos = emb @ F.normalize(direction, dim=0)  # (2,)
        for c, toks, score in (
            (cos[0], climbed["tokens"], top[0]["score"]),
            (cos[1], climbed["start"]["tokens"], climbed["start"]["score"]),
        ):
            penalty = LM_PENALTY * float(torch.log1p(torch.tensor(toks, dtype=torch.float)).sum())
            assert float(c) - penalty == pytest.approx(score, abs=1e-3)

    # The web app: search ranks this model's units, the unit's JSON and text tab show it all.
    word = "air"
    hits, used = index.search(word)
    assert used == [word] and hits
    cards = client.get("/api/v1/search", params={"q": word, "model": slug, "mode": "text"}).json()
    assert [(c["model"], c["layer"], c["unit"]) for c in cards] == [
        (slug, h.layer, h.unit) for h in hits
    ]
    assert [c["score"] for c in cards] == sorted((c["score"] for c in cards), reverse=True)
    layer = LAYERS[1]
    unit_json = client.get(f"/api/v1/models/{slug}/layers/{layer}/units/0").json()
    variants = {a["variant"] for a in unit_json["artifacts"] if a["kind"] == "text_fv"}
    assert variants == {"", "hill_climb"}
    page = BeautifulSoup(
        client.get(f"/models/{slug}/{layer}/0?view=text", headers=HTML).text, "html.parser"
    )
    sections = {s.h3.text: s for s in page.select(".text-views section")}
    assert list(sections) == [
        "Strings that drive this unit",
        "Hill-climbed token strings",
        "Rendered words",
    ]
    strings = json.loads(store.get(fv[(layer, 0, "")]))["top"]
    shown = [x.text for x in sections["Strings that drive this unit"].select("li .s")]
    assert shown == [t["text"] for t in strings]
    climbed = json.loads(store.get(fv[(layer, 0, "hill_climb")]))["top"]
    shown = [x.text for x in sections["Hill-climbed token strings"].select("li .s")]
    assert shown == [t["text"] for t in climbed]
