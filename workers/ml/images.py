"""Decode any image file to 8-bit RGB, or refuse it with a short reason; encode images."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"})
# Bytes a dataset image may take (file or tar member), read at most; larger is "too large".
# The import passes the MAX_IMAGE_MB setting; this is the same default.
DEFAULT_MAX_BYTES = 64 * 2**20
# Pillow's own default limit (Image.MAX_IMAGE_PIXELS), applied per call instead of globally.
DEFAULT_MAX_PIXELS = 89_478_485
# Transparent pixels become mid-gray: it sits near every model's normalisation mean (0.5 for
# timm's Lite0, ~0.46 for CLIP, ~0.45 for ImageNet), so cut-outs feed the model ~zero input
# around the object instead of white, which would add strong artificial edges.
ALPHA_BACKGROUND = (128, 128, 128)


class BadImage(Exception):
    """A file that cannot be used as an image; ``reason`` is short and user-facing."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        # corrupt | truncated | not an image | decompression bomb | empty | too large
        self.reason = reason


def too_large(size: int, max_bytes: int) -> BadImage:
    return BadImage("too large", f"{size} bytes > {max_bytes}")


def read_capped(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """A file's bytes, or BadImage("too large") without reading more than ``max_bytes``."""
    size = path.stat().st_size
    if size > max_bytes:
        raise too_large(size, max_bytes)
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)  # a file that grew since stat still stops here
    if len(data) > max_bytes:
        raise too_large(len(data), max_bytes)
    return data


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive), sorted by relative path."""
    root = Path(root)
    found = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _scale_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Map a high-bit-depth single-channel array onto 0..255 without clipping."""
    if mode.startswith("I;16") or (mode == "I" and a.size and a.min() >= 0 and a.max() <= 65535):
        # Full 16-bit range onto 8 bits: 65535 -> 255, rounded (x * 255 / 65535).
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    f = a.astype(np.float64)
    if mode == "F" and f.size and f.min() >= 0.0 and f.max() <= 1.0:
        return np.round(f * 255.0).astype(np.uint8)
    lo, hi = (float(f.min()), float(f.max())) if f.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(f.shape, dtype=np.uint8)
    return np.round((f - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _composite(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    bg = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
    bg.alpha_composite(rgba)
    return bg.convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        return _composite(img)
    if mode.startswith("I") or mode == "F":
        gray = _scale_to_uint8(np.asarray(img), mode)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "CMYK" and img.info.get("icc_profile"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
            dst = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(img, src, dst, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            converted = None  # a broken profile: fall back to Pillow's plain conversion
        if converted is not None:
            return converted
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def load_rgb(
    path_or_bytes: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Fully decode an image (first frame) to RGB; BadImage for anything unusable."""
    data = path_or_bytes
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) == 0:
            raise BadImage("empty")
        source: io.BytesIO | Path = io.BytesIO(bytes(data))
    else:
        source = Path(data)
        if source.stat().st_size == 0:
            raise BadImage("empty", str(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise BadImage("decompression bomb", f"{w}x{h} pixels > {max_pixels}")
                if w == 0 or h == 0:
                    raise BadImage("empty", "zero-sized image")
                img.seek(0)  # animated GIF/WebP: the first frame
                img.load()
                return _to_rgb(img).copy()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage("decompression bomb", str(e)) from e
    except UnidentifiedImageError as e:
        raise BadImage("not an image", str(e)) from e
    except OSError as e:
        if "truncated" in str(e).lower():
            raise BadImage("truncated", str(e)) from e
        if isinstance(e, FileNotFoundError | PermissionError):
            raise
        raise BadImage("corrupt", str(e)) from e
    except Exception as e:  # Pillow plugins raise ValueError, SyntaxError, struct.error, ...
        raise BadImage("corrupt", f"{type(e).__name__}: {e}") from e


def thumbnail_jpeg(img: Image.Image, max_side: int = 256, quality: int = 85) -> bytes:
    """A JPEG no larger than ``max_side`` on its longer side."""
    thumb = _to_rgb(img).copy()
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, quality: int = 85) -> bytes:
    """JPEG bytes: several times quicker to encode than WebP (measured); sheets are photos."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def webp_bytes(img: Image.Image, quality: int = 80) -> bytes:
    """Lossy WebP bytes (feature visualizations: smooth colour fields compress well)."""
    buf = io.BytesIO()
    img.save(buf, format="WEBP", quality=quality, method=4)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    """PNG bytes: lossless, for images of few colours and hard edges (weight kernels)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
