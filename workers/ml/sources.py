"""Where a dataset's images come from: an image folder, and/or WebDataset-style tar shards.

A tar shard (``*.tar`` anywhere under the dataset root) holds samples as members
``<key>.<ext>``; its images are named ``<tar path>::<member>`` and are read shard by shard,
in the order the tar stores them, which is how large image collections ship.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from workers.ml.images import IMAGE_EXTENSIONS, list_images

SEP = "::"


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def list_tars(root: Path) -> list[Path]:
    """Tar shards under ``root``, sorted."""
    return sorted(p for p in root.rglob("*.tar") if p.is_file() and not p.name.startswith("."))


def iter_tar(root: Path, tar_rel: str) -> Iterator[tuple[str, bytes]]:
    """(image name, bytes) for each image member of one shard, in stored order."""
    with tarfile.open(root / tar_rel, mode="r|") as tf:  # streaming: one pass, no seeks
        for m in tf:
            if m.isfile() and _is_image(m.name):
                f = tf.extractfile(m)
                if f is not None:
                    yield f"{tar_rel}{SEP}{m.name}", f.read()


def iter_sources(root: Path) -> Iterator[tuple[str, bytes | Path]]:
    """Every image of the dataset: loose files (as paths) then each tar shard's members."""
    for p in list_images(root):
        yield p.relative_to(root).as_posix(), p
    for tar in list_tars(root):
        yield from iter_tar(root, tar.relative_to(root).as_posix())


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


def read_image_bytes(root: Path, name: str) -> bytes:
    """One image's bytes by name (a tar member costs a scan of its shard: prefer iter_tar)."""
    tar = shard_of(name)
    if tar is None:
        return (root / name).read_bytes()
    member = name.split(SEP, 1)[1]
    with tarfile.open(root / tar) as tf:
        f = tf.extractfile(member)
        if f is None:
            raise FileNotFoundError(name)
        return f.read()
