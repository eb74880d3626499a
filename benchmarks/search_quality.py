"""Zero-shot neuron search quality on the default model and the demo photos.

For the classes the classifier predicts most often on the dataset, the class name is the query,
answered the way the web process answers it (``backend.textsearch.TextIndex`` over the arrays the
``text_views`` task publishes). A top-10 unit is a hit when the classifier assigns its top
dataset examples to the queried class:

- ``precision_at_10`` (headline): more of its top examples go to the queried class than to any
  other class (the class the classifier gives the unit's examples, ties not counted);
- ``precision_at_10_majority``: at least half of them go to it. With 4-13 photos in most of
  the demo set's classes few units can meet this at all; ``*_ceiling`` is the best any ranking
  could score under each reading on the images given.

Side by side in one run: the product's unit vectors (what the classifier predicts for a unit's
top examples: mean class probabilities), the previous ones (mean centred logits) and readout
attribution. Ends with one JSON line.

    .venv/bin/python benchmarks/search_quality.py --queries 20 [--photos DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from backend.textsearch import TextIndex
from workers.ml.demo_data import assemble_demo_dataset
from workers.ml.images import list_images, load_rgb
from workers.ml.layers import enumerate_layers
from workers.ml.mining import Miner
from workers.ml.models import load_model
from workers.ml.preprocess import to_batch
from workers.ml.text.heads import make_text_head
from workers.ml.text.index import search_index_arrays, unit_text_vectors
from workers.ml.text.textfv import build_vocabulary, dictionary_words
from workers.ml.text.unit_vectors import compute_unit_vectors, head_outputs

DEMO = Path("/tmp/up1/datasets/demo")
BATCH = 32


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--top-examples", type=int, default=8)
    ap.add_argument("--attr-images", type=int, default=16, help="images for earlier layers")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--last-layer-only", action="store_true")
    ap.add_argument("--photos", default="", help="an image folder (default: the demo photos)")
    ap.add_argument("--vocab-words", type=int, default=5000, help="as the text_views task")
    args = ap.parse_args()
    torch.set_num_threads(2)

    if args.photos:
        root = Path(args.photos)
    else:
        root = DEMO if DEMO.is_dir() else Path(tempfile.mkdtemp())
        if root != DEMO:
            assemble_demo_dataset(root)
    files = list_images(root)
    loaded = load_model("default")
    cfg = loaded.preprocess
    t0 = time.perf_counter()
    tensors = [to_batch([load_rgb(f)], cfg)[0] for f in files]  # each (3, S, S)
    batches = [
        (torch.stack(tensors[i : i + BATCH]), torch.arange(i, min(i + BATCH, len(files))))
        for i in range(0, len(files), BATCH)
    ]
    infos = enumerate_layers(loaded)
    layers = {i.module_path: i.layout for i in infos}
    miner = Miner(layers, k=args.top_examples, sketch_size=16)
    reducers = miner.run(loaded.image_model, batches)
    top_ids = {p: r.finalize().top_ids for p, r in reducers.items()}  # (U, k)
    with torch.inference_mode():
        logits = torch.cat([loaded.image_model(x) for x, _ in batches])  # (N, C)
    preds = logits.argmax(-1)  # (N,)
    t_mine = time.perf_counter() - t0

    head = make_text_head(loaded)
    if args.last_layer_only:
        layers = {head.last_layer_path: layers[head.last_layer_path]}
    # Earlier layers attribute over the images that are top examples of the most units.
    counts = Counter(
        int(i) for p, ids in top_ids.items() if p != head.last_layer_path for i in ids.flatten()
    )
    chosen = sorted(i for i, _ in counts.most_common(args.attr_images))
    attr_batches = [(torch.stack([tensors[i] for i in chosen]), torch.tensor(chosen))]
    t0 = time.perf_counter()
    vectors = compute_unit_vectors(loaded, head, layers, attr_batches, top_ids, rank=args.rank)
    t_vec = time.perf_counter() - t0
    ids, described = head_outputs(loaded, head, batches)  # (N,), (N, S) class probabilities
    names = loaded.class_names or []
    classes = [c for c, _ in Counter(preds.tolist()).most_common(args.queries)]
    # The product's vocabulary: the query (a class name) is one of its phrases.
    vocab = build_vocabulary(names, dictionary_words(limit=args.vocab_words))
    vocab_emb = head.encode(vocab).float()  # (V, D)

    def make_index(text: dict[str, torch.Tensor]) -> TextIndex:
        return TextIndex(search_index_arrays(list(text.items()), vocab, vocab_emb))

    def plurality(ex: torch.Tensor, c: int) -> bool:
        """More of the unit's top examples go to class c than to any other class."""
        counts = Counter(preds[ex[ex >= 0]].tolist())
        best = max(counts.values(), default=0)
        return counts[c] == best > 0 and sum(n == best for n in counts.values()) == 1

    def majority(ex: torch.Tensor, c: int) -> bool:
        """At least half of the unit's top examples go to class c."""
        counts = Counter(preds[ex[ex >= 0]].tolist())
        return bool(counts) and counts[c] * 2 >= sum(counts.values())

    rules: dict[str, Callable[[torch.Tensor, int], bool]] = {
        "": plurality,
        "_majority": majority,
    }

    def evaluate(index: TextIndex) -> dict[str, object]:
        hits: dict[str, list[bool]] = {r: [] for r in rules}
        times, by_layer = [], Counter[str]()
        for c in classes:
            t0 = time.perf_counter()
            found, used = index.search(names[c], top=10)
            times.append((time.perf_counter() - t0) * 1000)
            assert used == [names[c]], (names[c], used)  # the class name is a known phrase
            for h in found:
                by_layer[h.layer] += 1
                for r, rule in rules.items():
                    hits[r].append(rule(top_ids[h.layer][h.unit], c))
        return {
            **{f"precision_at_10{r}": round(float(np.mean(v)), 3) for r, v in hits.items()},
            "median_query_ms": round(float(np.median(times)), 3),
            "units": len(index.unit_vecs),
            "by_layer": dict(by_layer),
        }

    ours = evaluate(make_index(unit_text_vectors(head, ids, described, top_ids)))
    centred = logits - logits.mean(-1, keepdim=True)  # the previous data-side output
    before = evaluate(make_index(unit_text_vectors(head, ids, centred, top_ids)))
    attr = evaluate(make_index({p: head.to_text(v).float() for p, v in vectors.items()}))

    def ceiling(rule: Callable[[torch.Tensor, int], bool]) -> float:
        """The best any ranking can do: units meeting the rule, at most 10 a query."""
        met = [sum(rule(t, c) for p in layers for t in top_ids[p]) for c in classes]
        return round(float(np.mean([min(n, 10) / 10 for n in met])), 3)

    ceilings = {r: ceiling(rule) for r, rule in rules.items()}
    # Query time at the scale: 20k units of the same dimension.
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((20_000, vocab_emb.shape[1])).astype(np.float32)  # (20k, D)
    big = make_index({"synthetic": torch.from_numpy(noise)})
    times_20k = []
    for c in classes:
        t0 = time.perf_counter()
        big.search(names[c], top=10)
        times_20k.append((time.perf_counter() - t0) * 1000)
    result = {
        "bench": "search_quality",
        "model": loaded.spec,
        "images": len(files),
        "queries": len(classes),
        "precision_at_10": ours["precision_at_10"],
        "median_query_ms": ours["median_query_ms"],
        "precision_at_10_majority": ours["precision_at_10_majority"],
        "precision_ceiling": ceilings[""],
        "precision_ceiling_majority": ceilings["_majority"],
        "baseline_centred_logits": before,
        "baseline_attribution": attr,
        "ours": ours,
        "median_query_ms_20k_units": round(float(np.median(times_20k)), 3),
        "unit_vectors_s": round(t_vec, 1),
        "mining_s": round(t_mine, 1),
        "top_examples": args.top_examples,
        "rank": args.rank,
        "attr_images": len(chosen),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
