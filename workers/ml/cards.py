"""Neuron cards: the image a shared unit link previews with (feature vis, top examples, label)."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from workers.ml.sheets import fit

WIDTH, HEIGHT = 1200, 630  # Open Graph's recommended size
BG = (20, 22, 26)
FG = (236, 237, 240)
MUTED = (150, 156, 166)
FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))
# JPEG, not PNG: a card is mostly photographs and feature visualizations, which PNG compresses
# badly and slowly; every unit gets one while its examples are mined (benchmarks/cards.py).
CARD_FORMAT, CARD_EXT, CARD_TYPE = "JPEG", "jpg", "image/jpeg"
JPEG_QUALITY = 88


@lru_cache(maxsize=8)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for d in FONT_DIRS:
        if (d / name).exists():
            return ImageFont.truetype(str(d / name), size)
    return ImageFont.load_default(size)


@lru_cache(maxsize=1)
def _blank() -> Image.Image:
    """The background and brand every card shares, drawn once (copied per card)."""
    card = Image.new("RGB", (WIDTH, HEIGHT), BG)
    ImageDraw.Draw(card).text((40, 24), "Open Microscope", font=_font(28, bold=True), fill=MUTED)
    return card


def sheet_tiles(sheet: Image.Image, cell: int, n: int) -> list[Image.Image]:
    """The first ``n`` tiles (row-major) of a grid of cell x cell tiles."""
    cols = max(1, sheet.width // cell)
    tiles = []
    for i in range(n):
        x, y = (i % cols) * cell, (i // cols) * cell
        if y + cell > sheet.height:
            break
        tiles.append(sheet.crop((x, y, x + cell, y + cell)))
    return tiles


def _fit(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> str:
    while text and font.getlength(text) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def neuron_card(
    title: str,
    subtitle: str,
    label: str | None,
    featvis: Image.Image | None,
    examples: list[Image.Image],
) -> bytes:
    """A 1200 x 630 JPEG: the feature visualization (or top example) left, examples right."""
    buf = io.BytesIO()
    draw_card(title, subtitle, label, featvis, examples).save(
        buf, format=CARD_FORMAT, quality=JPEG_QUALITY
    )
    return buf.getvalue()


def draw_card(
    title: str,
    subtitle: str,
    label: str | None,
    featvis: Image.Image | None,
    examples: list[Image.Image],
) -> Image.Image:
    """The card as an image, before encoding."""
    card = _blank().copy()
    draw = ImageDraw.Draw(card)
    if featvis is not None:
        card.paste(featvis.convert("RGB").resize((510, 510), Image.Resampling.BICUBIC), (40, 80))
    elif examples:
        card.paste(fit(examples[0].convert("RGB"), 510), (40, 80))
    x0 = 590
    draw.text(
        (x0, 80), _fit(title, _font(48, True), WIDTH - x0 - 40), font=_font(48, True), fill=FG
    )
    draw.text((x0, 140), _fit(subtitle, _font(28), WIDTH - x0 - 40), font=_font(28), fill=MUTED)
    if label:
        draw.text((x0, 185), _fit(label, _font(34), WIDTH - x0 - 40), font=_font(34), fill=FG)
    tile, gap = 180, 10
    for i, ex in enumerate(examples[:6]):
        x = x0 + (i % 3) * (tile + gap)
        y = 240 + (i // 3) * (tile + gap)
        # Example crops are enlarged as on their sheets: hard-edged (and quicker than bicubic,
        # which was most of drawing a card).
        card.paste(fit(ex.convert("RGB"), tile), (x, y))
    return card
