"""Where a dataset's images come from: an image folder, and/or WebDataset-style tar shards.

A tar shard (``*.tar`` anywhere under the dataset root) holds samples as members
``<key>.<ext>``; its images are named ``<tar path>::<member>`` and are read shard by shard,
in the order the tar stores them, which is how large image collections ship.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path, PurePosixPath

from workers.ml.images import (
    DEFAULT_MAX_BYTES,
    IMAGE_EXTENSIONS,
    BadImage,
    list_images,
    read_capped,
    too_large,
)

SEP = "::"
# Reads one image's bytes; raises BadImage("too large") for one over the size cap.
Reader = Callable[[], bytes]


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def list_tars(root: Path) -> list[Path]:
    """Tar shards under ``root``, sorted."""
    return sorted(p for p in root.rglob("*.tar") if p.is_file() and not p.name.startswith("."))


def _refuse(error: BadImage) -> bytes:
    raise error


def iter_tar_members(
    root: Path, tar_rel: str, max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[tuple[str, Reader]]:
    """(image name, reader) for each image member of one shard, in stored order. A member
    over ``max_bytes`` is never read: its reader raises BadImage("too large")."""
    with tarfile.open(root / tar_rel, mode="r|") as tf:  # streaming: one pass, no seeks
        for m in tf:
            if not (m.isfile() and _is_image(m.name)):
                continue
            name = f"{tar_rel}{SEP}{m.name}"
            if m.size > max_bytes:  # the stream skips its data unread
                yield name, partial(_refuse, too_large(m.size, max_bytes))
                continue
            f = tf.extractfile(m)
            if f is not None:
                data = f.read()  # must be read now: the stream moves on
                yield name, partial(bytes, data)


def iter_tar(
    root: Path, tar_rel: str, max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[tuple[str, bytes]]:
    """(image name, bytes) for each image member of one shard, in stored order; members over
    ``max_bytes`` are left out (the import skipped them as too large)."""
    for name, read in iter_tar_members(root, tar_rel, max_bytes):
        try:
            yield name, read()
        except BadImage:
            continue


def iter_sources(root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[tuple[str, Reader]]:
    """Every image of the dataset, as (name, reader): loose files, then each tar shard's
    members. No reader returns more than ``max_bytes``."""
    for p in list_images(root):
        yield p.relative_to(root).as_posix(), partial(read_capped, p, max_bytes)
    for tar in list_tars(root):
        yield from iter_tar_members(root, tar.relative_to(root).as_posix(), max_bytes)


def count_sources(root: Path) -> int:
    """How many images ``iter_sources`` yields (reads tar headers only)."""
    n = len(list_images(root))
    for tar in list_tars(root):
        with tarfile.open(tar, mode="r|") as tf:
            n += sum(1 for m in tf if m.isfile() and _is_image(m.name))
    return n


def shard_of(name: str) -> str | None:
    """The tar shard an image name belongs to, or None for a loose file."""
    return name.split(SEP, 1)[0] if SEP in name else None


def read_image_bytes(root: Path, name: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """One image's bytes by name (a tar member costs a scan of its shard: prefer iter_tar);
    BadImage("too large") past ``max_bytes``."""
    tar = shard_of(name)
    if tar is None:
        return read_capped(root / name, max_bytes)
    member = name.split(SEP, 1)[1]
    with tarfile.open(root / tar) as tf:
        info = tf.getmember(member)
        if info.size > max_bytes:
            raise too_large(info.size, max_bytes)
        f = tf.extractfile(info)
        if f is None:
            raise FileNotFoundError(name)
        return f.read()
