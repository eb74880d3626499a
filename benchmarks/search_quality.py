"""Zero-shot neuron search quality on the default model and the demo photos.

For the classes the classifier predicts most often on the demo dataset, the class name is the
query; a hit is a unit among the top 10 whose top dataset examples the classifier mostly (at
least half) assigns to that class. Two ways of giving units text vectors run side by side:
example vectors (the head's mean output over a unit's top examples, what the product uses)
and readout attribution; `precision_ceiling` is the best any ranking could score on these
images. Ends with one JSON line.

    .venv/bin/python benchmarks/search_quality.py --queries 20 [--photos DIR]
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

from workers.ml.demo_data import assemble_demo_dataset
from workers.ml.images import list_images, load_rgb
from workers.ml.layers import enumerate_layers
from workers.ml.mining import Miner
from workers.ml.models import load_model
from workers.ml.preprocess import to_batch
from workers.ml.text.heads import make_text_head
from workers.ml.text.search import SearchIndex
from workers.ml.text.unit_vectors import compute_unit_vectors, example_vectors, head_outputs

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
        preds = torch.cat([loaded.image_model(x).argmax(-1) for x, _ in batches])  # (N,)
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
    ids, outputs = head_outputs(loaded, head, batches)
    data_vectors = example_vectors(ids, outputs, {p: top_ids[p] for p in layers})
    names = loaded.class_names or []
    classes = [c for c, _ in Counter(preds.tolist()).most_common(args.queries)]
    queries = head.logit_direction([names[c] for c in classes])  # (Q, S)

    def evaluate(vecs: dict[str, torch.Tensor]) -> dict[str, object]:
        index = SearchIndex(vecs)
        hits, relaxed, times, by_layer = [], [], [], Counter()
        for c, q in zip(classes, queries, strict=True):
            t0 = time.perf_counter()
            found = index.query(q, top=10)
            times.append((time.perf_counter() - t0) * 1000)
            for layer, unit, _ in found:
                ex = top_ids[layer][unit]
                ex = ex[ex >= 0]
                share = float((preds[ex] == c).float().mean()) if len(ex) else 0.0
                hits.append(share >= 0.5)
                relaxed.append(share >= 0.25)
                by_layer[layer] += 1
        return {
            "precision_at_10": round(float(np.mean(hits)), 3),
            "precision_at_10_quarter": round(float(np.mean(relaxed)), 3),
            "median_query_ms": round(float(np.median(times)), 3),
            "units": len(index),
            "by_layer": dict(by_layer),
        }

    # The best any ranking can do: units whose top examples meet the bar, at most 10 a query.
    ceiling = []
    for c in classes:
        n = sum(
            int(((preds[ids_[ids_ >= 0]] == c).float().mean() >= 0.5).item())
            for p in layers
            for ids_ in top_ids[p]
        )
        ceiling.append(min(n, 10) / 10)
    t0 = time.perf_counter()
    head.logit_direction([names[classes[0]]])
    encode_ms = (time.perf_counter() - t0) * 1000
    attr = evaluate(vectors)
    data = evaluate(data_vectors)
    result = {
        "bench": "search_quality",
        "model": loaded.spec,
        "images": len(files),
        "queries": len(classes),
        # Headline: example vectors, the method the product's text_views task uses; the
        # readout-attribution method is the comparison.
        "precision_at_10": data["precision_at_10"],
        "median_query_ms": data["median_query_ms"],
        "method": "example_vectors",
        "precision_ceiling": round(float(np.mean(ceiling)), 3),
        "attribution": attr,
        "examples": data,
        "query_encode_ms": round(encode_ms, 1),
        "unit_vectors_s": round(t_vec, 1),
        "mining_s": round(t_mine, 1),
        "rank": args.rank,
        "attr_images": len(chosen),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
