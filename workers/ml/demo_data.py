"""The offline demo dataset: real photographs that ship inside installed registry packages.

Sources (nothing here is ever committed to git): scikit-image's and scikit-learn's sample
photos, Debian ``tuxpaint-stamps-default`` (photo cut-outs), and the photographic wallpapers of
Debian ``plasma-workspace-wallpapers`` and ``mate-backgrounds``, cut into square crops.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from workers.ml.images import BadImage, load_rgb

TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")
PLASMA_WALLPAPERS = Path("/usr/share/wallpapers")
MATE_NATURE = Path("/usr/share/backgrounds/mate/nature")
DEBIAN_PACKAGES = {
    "tuxpaint-stamps-default": TUXPAINT_STAMPS,
    "plasma-workspace-wallpapers": PLASMA_WALLPAPERS,
    "mate-backgrounds": MATE_NATURE,
}
# scikit-image's colour photographs (all stored inside the wheel: no download):
# (output name, skimage.data function, index into its tuple result or None).
SKIMAGE_PHOTOS: tuple[tuple[str, str, int | None], ...] = (
    ("astronaut", "astronaut", None),
    ("chelsea", "chelsea", None),
    ("coffee", "coffee", None),
    ("hubble_deep_field", "hubble_deep_field", None),
    ("immunohistochemistry", "immunohistochemistry", None),
    ("motorcycle_left", "stereo_motorcycle", 0),
    ("motorcycle_right", "stereo_motorcycle", 1),
    ("retina", "retina", None),
    ("rocket", "rocket", None),
)
# The Plasma wallpapers that are photographs; the others are vector or painted art.
PLASMA_PHOTOS = (
    "BytheWater",
    "ColdRipple",
    "ColorfulCups",
    "DarkestHour",
    "EveningGlow",
    "FallenLeaf",
    "Grey",
    "Kite",
    "OneStandsOut",
    "Path",
    "summer_1am",
    "Volna",
)
JPEG_QUALITY = 90
CROP_OUTPUT_SIDE = 512  # crops and full views of wallpapers are stored at this size
MIN_CROP_SIDE = 512
# Tux Paint stamps: photos have few runs of identical neighbouring pixels; drawings have many.
MAX_FLAT_SHARE = 0.05
MIN_OPAQUE_PIXELS = 2000
MANIFEST = ".demo-manifest.json"
MANIFEST_VERSION = 1


class DemoDataError(RuntimeError):
    """Too few photographs could be assembled."""


@dataclass
class DemoManifest:
    """The assembled dataset: file paths (sorted), a content checksum, images per source."""

    images: list[Path]
    checksum: str
    sources: dict[str, int]


@dataclass(frozen=True)
class _Item:
    name: str  # output file name, source-prefixed
    source: str
    load: Callable[[], Image.Image]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _skimage_items() -> list[_Item]:
    try:
        from skimage import data
    except ImportError:
        return []

    def loader(fn: str, index: int | None) -> Callable[[], Image.Image]:
        def load() -> Image.Image:
            out = getattr(data, fn)()
            arr = out if index is None else out[index]  # (H, W, 3) uint8
            return Image.fromarray(np.asarray(arr)).convert("RGB")

        return load

    return [
        _Item(f"skimage-{_slug(name)}.jpg", "skimage", loader(fn, index))
        for name, fn, index in SKIMAGE_PHOTOS
        if hasattr(data, fn)
    ]


def _sklearn_items() -> list[_Item]:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        return []
    bunch = load_sample_images()
    items = []
    for fname, arr in zip(bunch.filenames, bunch.images, strict=True):
        stem = Path(fname).stem

        def load(a: np.ndarray = arr) -> Image.Image:
            return Image.fromarray(np.asarray(a, dtype=np.uint8)).convert("RGB")

        items.append(_Item(f"sklearn-{_slug(stem)}.jpg", "sklearn", load))
    return items


def is_photo_stamp(path: Path) -> bool:
    """Whether a Tux Paint stamp PNG is a photo cut-out (not clip-art or a glyph)."""
    if path.with_suffix(".svg").exists():
        return False  # a raster fallback of vector art
    try:
        with Image.open(path) as img:
            if img.mode in ("L", "LA", "1", "I", "I;16"):
                return False  # the gray stamps are letters and silhouettes
            rgba = np.asarray(img.convert("RGBA")).astype(np.int16)  # (H, W, 4)
    except (OSError, ValueError):
        return False
    opaque = rgba[..., 3] > 250  # (H, W)
    if opaque.sum() < MIN_OPAQUE_PIXELS:
        return False
    pairs = opaque[:, 1:] & opaque[:, :-1]  # (H, W-1) horizontally adjacent opaque pairs
    same = (np.abs(rgba[:, 1:, :3] - rgba[:, :-1, :3]).sum(-1) == 0) & pairs  # (H, W-1)
    return float(same.sum()) / max(int(pairs.sum()), 1) < MAX_FLAT_SHARE


def _tuxpaint_items() -> list[_Item]:
    if not TUXPAINT_STAMPS.is_dir():
        return []
    items = []
    for path in sorted(TUXPAINT_STAMPS.rglob("*.png")):
        if not is_photo_stamp(path):
            continue
        rel = path.relative_to(TUXPAINT_STAMPS).with_suffix("").as_posix()
        # load_rgb composites the transparent surround onto neutral mid-gray.
        items.append(_Item(f"tuxpaint-{_slug(rel)}.jpg", "tuxpaint", partial(load_rgb, path)))
    return items


def _crop_grid(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Square tiles covering the middle of a large photo, row by row."""
    side = max(MIN_CROP_SIDE, min(width, height) // 2)
    cols, rows = width // side, height // side
    if cols == 0 or rows == 0:
        return []
    x0, y0 = (width - cols * side) // 2, (height - rows * side) // 2
    return [
        (x0 + c * side, y0 + r * side, x0 + (c + 1) * side, y0 + (r + 1) * side)
        for r in range(rows)
        for c in range(cols)
    ]


def _shrink(img: Image.Image) -> Image.Image:
    img = img.copy()
    img.thumbnail((CROP_OUTPUT_SIDE, CROP_OUTPUT_SIDE), Image.Resampling.LANCZOS)
    return img


class _LastDecoded:
    """Keeps only the most recently decoded wallpaper: its crops are loaded one after another."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.img: Image.Image | None = None

    def get(self, path: Path, pixels: int) -> Image.Image:
        if self.path != path or self.img is None:
            self.img, self.path = load_rgb(path, max_pixels=pixels), path
        return self.img


def _wallpaper_items(path: Path, prefix: str, slot: _LastDecoded) -> list[_Item]:
    """The whole photo (downscaled) plus a grid of square crops from it."""
    with Image.open(path) as probe:
        width, height = probe.size
    source = prefix.split("-")[0]

    def full() -> Image.Image:
        return _shrink(slot.get(path, width * height))

    def crop(box: tuple[int, int, int, int]) -> Image.Image:
        return _shrink(slot.get(path, width * height).crop(box))

    items = [_Item(f"{prefix}-full.jpg", source, full)]
    for i, box in enumerate(_crop_grid(width, height)):
        items.append(_Item(f"{prefix}-crop{i:02d}.jpg", source, partial(crop, box)))
    return items


def _plasma_items(slot: _LastDecoded) -> list[_Item]:
    items = []
    for name in PLASMA_PHOTOS:
        images = PLASMA_WALLPAPERS / name / "contents" / "images"
        files = sorted(images.glob("*.jpg")) if images.is_dir() else []
        if not files:
            continue
        # The largest rendition: wallpapers ship one photo at many sizes.
        largest = max(files, key=lambda p: (p.stat().st_size, p.name))
        items += _wallpaper_items(largest, f"plasma-{_slug(name)}", slot)
    return items


def _mate_items(slot: _LastDecoded) -> list[_Item]:
    if not MATE_NATURE.is_dir():
        return []
    items = []
    for path in sorted(MATE_NATURE.glob("*.jpg")):
        items += _wallpaper_items(path, f"mate-{_slug(path.stem)}", slot)
    return items


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _checksum(digests: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(f"{name}\t{digests[name]}\n".encode())
    return h.hexdigest()


def _read_manifest(dest: Path) -> dict | None:
    try:
        meta = json.loads((dest / MANIFEST).read_text())
        if meta.get("version") != MANIFEST_VERSION or not isinstance(meta.get("files"), dict):
            return None
        return meta
    except (OSError, ValueError):
        return None


def _read_complete(dest: Path) -> DemoManifest | None:
    """The manifest of an earlier complete run, if every file it lists is intact."""
    meta = _read_manifest(dest)
    if meta is None:
        return None
    digests: dict[str, str] = meta["files"]
    try:
        if any(_file_sha256(dest / n) != d for n, d in digests.items()):
            return None
    except OSError:
        return None
    return DemoManifest(
        images=[dest / n for n in sorted(digests)],
        checksum=_checksum(digests),
        sources=dict(meta["sources"]),
    )


def _write_jpeg(img: Image.Image, path: Path) -> None:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)  # published whole: a crash never leaves a half-written image


def assemble_demo_dataset(
    dest: Path,
    *,
    min_images: int = 300,
    progress: Callable[[int, int], None] | None = None,
) -> DemoManifest:
    """Write the demo photos into ``dest`` (idempotent) and return their manifest."""
    dest = Path(dest)
    done = _read_complete(dest)
    if done is not None and len(done.images) >= min_images:
        return done

    slot = _LastDecoded()
    items = [
        *_skimage_items(),
        *_sklearn_items(),
        *_tuxpaint_items(),
        *_plasma_items(slot),
        *_mate_items(slot),
    ]
    if len(items) < min_images:
        missing = [pkg for pkg, path in DEBIAN_PACKAGES.items() if not path.exists()]
        hint = (
            f"install the missing Debian packages: apt-get install {' '.join(missing)}"
            if missing
            else "apt-get install tuxpaint-stamps-default plasma-workspace-wallpapers "
            "mate-backgrounds"
        )
        raise DemoDataError(
            f"only {len(items)} demo photographs are available, {min_images} needed; {hint} "
            "(and pip install scikit-image scikit-learn)"
        )

    dest.mkdir(parents=True, exist_ok=True)
    # Files an earlier run wrote are reused only if they still have the bytes it recorded.
    previous: dict[str, str] = (_read_manifest(dest) or {}).get("files", {})
    digests: dict[str, str] = {}
    sources: dict[str, int] = {}
    for i, item in enumerate(items):
        path = dest / item.name
        try:
            intact = path.exists() and (
                item.name not in previous or _file_sha256(path) == previous[item.name]
            )
            if not intact:
                _write_jpeg(item.load(), path)
        except BadImage:
            continue  # a damaged file in a system package: skip it, the count is checked below
        digests[item.name] = _file_sha256(path)
        sources[item.source] = sources.get(item.source, 0) + 1
        if progress is not None:
            progress(i + 1, len(items))
    if len(digests) < min_images:
        raise DemoDataError(f"only {len(digests)} demo photographs could be decoded")

    meta = {"version": MANIFEST_VERSION, "files": digests, "sources": sources}
    (dest / MANIFEST).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return DemoManifest(
        images=[dest / n for n in sorted(digests)],
        checksum=_checksum(digests),
        sources=sources,
    )
