"""Label fidelity on the default model and the demo photos: are the labels we show true?

For every unit of the default layers, each label's fidelity is the Spearman correlation, over
the held-out half of the images, of how well the label matches each image (a low-level
descriptor on the unit's receptive field at its argmax; a concept word through the model's
text head) with the unit's activation (``workers/ml/text/fidelity.py``). Side by side:

- ``ours``: the labels the product shows (``labels.label_layers``: chosen on the other half,
  shown only above the bar measured on shuffled units), mean fidelity of each unit's first
  label over the units we label, and the share of units labelled;
- ``random``: a label drawn uniformly from the same vocabulary (its expected fidelity);
- ``ceiling``: the best label in the vocabulary chosen on the held-out half itself;
- ``before``: the earlier labels (``labels.auto_labels``: the unit's top text strings scored by
  agreement with its top examples' classes), which every unit got.

Goal: ours >= 0.8 x ceiling on the units we label, random well below. Ends with one JSON line.

    .venv/bin/python benchmarks/label_fidelity.py [--photos DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from contracts.jobs import DEFAULT_CONCEPTS
from workers.ml.demo_data import assemble_demo_dataset
from workers.ml.images import list_images, load_rgb
from workers.ml.layers import enumerate_layers
from workers.ml.mining import Miner
from workers.ml.models import load_model
from workers.ml.preprocess import to_batch
from workers.ml.text import descriptors
from workers.ml.text.evidence import collect_evidence, concept_match, concept_vocabulary
from workers.ml.text.fidelity import unit_fidelity
from workers.ml.text.heads import make_text_head
from workers.ml.text.index import unit_text_vectors
from workers.ml.text.labels import auto_labels, label_layers
from workers.ml.text.textfv import build_vocabulary, dictionary_words, top_strings

DEMO = Path("/tmp/up1/datasets/demo")
BATCH = 32
EARLY = 3  # the first default layers, where a class name needs the most evidence


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", default="", help="an image folder (default: the demo photos)")
    ap.add_argument("--vocab-words", type=int, default=5000, help="earlier labels' vocabulary")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.photos:
        root = Path(args.photos)
    else:
        root = DEMO if DEMO.is_dir() else Path(tempfile.gettempdir()) / "microscope-demo"
        if root != DEMO:
            assemble_demo_dataset(root)
    files = list_images(root)
    loaded = load_model("default")
    cfg = loaded.preprocess
    head = make_text_head(loaded)
    infos = enumerate_layers(loaded)
    layouts = {i.module_path: i.layout for i in infos}
    names = {i.module_path: i.name for i in infos}
    tensors = [to_batch([load_rgb(f)], cfg)[0] for f in files]  # each (3, S, S)
    batches = [
        (torch.stack(tensors[i : i + BATCH]), torch.arange(i, min(i + BATCH, len(files))))
        for i in range(0, len(files), BATCH)
    ]

    t0 = time.perf_counter()
    ev = collect_evidence(loaded, layouts, batches, head)
    t_evidence = time.perf_counter() - t0
    assert ev.outputs is not None and ev.desc is not None
    concepts = concept_vocabulary(loaded, DEFAULT_CONCEPTS)
    match = concept_match(head, ev.outputs, concepts)  # (N, T)
    t0 = time.perf_counter()
    run = label_layers(ev, match, concepts)
    t_labels = time.perf_counter() - t0
    held = run.heldout
    vocab = [*descriptors.WORDS, *concepts]

    # The earlier labels, from each unit's top 8 examples and its top strings.
    miner = Miner(layouts, k=8, sketch_size=16)
    top_ids = {p: r.finalize().top_ids for p, r in miner.run(loaded.image_model, batches).items()}
    ids_t = torch.from_numpy(ev.ids)
    text = unit_text_vectors(head, ids_t, torch.from_numpy(ev.outputs), top_ids)
    strings = build_vocabulary(loaded.class_names or [], dictionary_words(args.vocab_words))
    strings_emb = head.encode(strings).float()  # (V, D)
    predicted = ev.outputs.argmax(1)  # (N,) ids are row numbers here
    classes = loaded.class_names or []

    ours: list[float] = []
    ours_all: list[float] = []
    random_l: list[float] = []
    ceiling_l: list[float] = []
    random_all: list[float] = []
    ceiling_all: list[float] = []
    before: list[float] = []
    per_layer = {}
    for p, units in run.units.items():
        f_out = unit_fidelity(ev.acts[p][held], ev.desc[p][held], match[held])  # (U, K)
        exp_random, best = f_out.mean(1), f_out.max(1)  # (U,)
        labelled = [i for i, u in enumerate(units) if u.labels]
        ours += [units[i].labels[0].score for i in labelled]
        ours_all += [x.score for i in labelled for x in units[i].labels]
        random_l += exp_random[labelled].tolist()
        ceiling_l += best[labelled].tolist()
        random_all += exp_random.tolist()
        ceiling_all += best.tolist()
        tops = top_strings(text[p], strings_emb, strings, k=16)
        examples = [[classes[predicted[i]] for i in r.tolist() if i >= 0] for r in top_ids[p]]
        old = [label for label, _ in auto_labels(tops, examples, head.encode)]
        old_match = concept_match(head, ev.outputs, old)  # (N, U) unit u's own label in column u
        scores = unit_fidelity(ev.acts[p][held], None, old_match[held])  # (U, U)
        before += np.diag(scores).tolist()
        kinds = Counter(x.kind for u in units for x in u.labels[:1])
        per_layer[names[p]] = {
            "units": len(units),
            "labelled": len(labelled),
            "ours": round(float(np.mean([units[i].labels[0].score for i in labelled])), 3)
            if labelled
            else None,
            "ceiling_on_labelled": round(float(best[labelled].mean()), 3) if labelled else None,
            "first_label_kinds": dict(kinds),
            "before": round(float(np.mean(np.diag(scores))), 3),
        }
    early = list(run.units)[:EARLY]
    early_class_names = sum(
        1 for p in early for u in run.units[p] for x in u.labels if x.kind == "concept"
    )
    n_units = sum(len(u) for u in run.units.values())

    def mean(v: list[float]) -> float | None:
        return round(float(np.mean(v)), 3) if v else None

    result = {
        "bench": "label_fidelity",
        "model": loaded.spec,
        "images": len(files),
        "heldout_images": int(held.sum()),
        "units": n_units,
        "vocabulary": len(vocab),
        "threshold": round(run.threshold, 3),
        "null_units": run.null_units,
        "share_labelled": round(sum(per_layer[n]["labelled"] for n in per_layer) / n_units, 3),
        "ours": mean(ours),
        "ours_every_label": mean(ours_all),
        "random_on_labelled": mean(random_l),
        "ceiling_on_labelled": mean(ceiling_l),
        "ours_over_ceiling": round(float(np.mean(ours) / np.mean(ceiling_l)), 3) if ours else None,
        "random_all_units": mean(random_all),
        "ceiling_all_units": mean(ceiling_all),
        "before_all_units": mean(before),
        "early_layer_class_names": early_class_names,
        "per_layer": per_layer,
        "evidence_s": round(t_evidence, 1),
        "labels_s": round(t_labels, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
