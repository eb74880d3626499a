"""Neuron cards: the previous PNG encoding (compress_level=1) against JPEG, on real photos.

Every unit gets a card while its dataset examples are mined, so on a CPU the card's cost is
paid thousands of times a model. Each card shows one demo photo as its feature visualization
and six others as its examples, drawn once by the product's ``draw_card`` and encoded both
ways. Ends with one JSON line.

    .venv/bin/python benchmarks/cards.py [--cards 100]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

from PIL import Image

from workers.ml.cards import CARD_FORMAT, JPEG_QUALITY, draw_card, neuron_card
from workers.ml.demo_data import assemble_demo_dataset
from workers.ml.images import list_images, load_rgb

DEMO = Path("/tmp/up1/datasets/demo")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cards", type=int, default=100)
    args = ap.parse_args()
    root = DEMO if DEMO.is_dir() else Path(tempfile.mkdtemp())
    if root != DEMO:
        assemble_demo_dataset(root)
    photos = [load_rgb(f) for f in list_images(root)[: args.cards + 6]]
    fvs = [p.resize((224, 224)) for p in photos]
    tiles = [p.resize((112, 112)) for p in photos]

    def inputs(i: int) -> tuple[Image.Image, list[Image.Image]]:
        return fvs[i % len(fvs)], [tiles[(i + j + 1) % len(tiles)] for j in range(6)]

    def png(i: int) -> bytes:  # the encoding cards used before
        buf = io.BytesIO()
        draw_card(f"Unit {i}", "demo · layer", "label", *inputs(i)).save(
            buf, format="PNG", compress_level=1
        )
        return buf.getvalue()

    def ours(i: int) -> bytes:
        return neuron_card(f"Unit {i}", "demo · layer", "label", *inputs(i))

    figures: dict[str, float] = {}
    for name, fn in (("png", png), ("jpeg", ours)):
        fn(0)  # fonts loaded, codecs warm
        sizes = []
        t0 = time.perf_counter()
        for i in range(args.cards):
            sizes.append(len(fn(i)))
        figures[f"{name}_ms_per_card"] = round((time.perf_counter() - t0) * 1000 / args.cards, 2)
        figures[f"{name}_kb_per_card"] = round(sum(sizes) / len(sizes) / 1024, 1)
    print(
        json.dumps(
            {
                "bench": "cards",
                "cards": args.cards,
                "format": CARD_FORMAT,
                "quality": JPEG_QUALITY,
                **figures,
                "speedup": round(figures["png_ms_per_card"] / figures["jpeg_ms_per_card"], 2),
                "size_ratio": round(figures["png_kb_per_card"] / figures["jpeg_kb_per_card"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
