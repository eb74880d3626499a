"""Where a dataset's images come from (an image folder, and/or WebDataset-style tar shards),
how they are split into shards, and how they are batched for the model.

A tar shard (``*.tar`` anywhere under the dataset root) holds samples as members
``<key>.<ext>``; its images are named ``<tar path>::<member>`` and are read shard by shard,
in the order the tar stores them, which is how large image collections ship.
"""

from __future__ import annotations

import tarfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

import torch
from torch.utils.data import DataLoader, Dataset

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


def iter_images(
    root: Path, names: Sequence[str], max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of many images: loose files in the order asked, then each tar shard's
    wanted members in stored order, each shard read once, front to back, and only as far as
    its last wanted member. Holds one image's bytes at a time; none over ``max_bytes``
    (BadImage("too large")); FileNotFoundError at the end if any is gone."""
    by_tar: dict[str, set[str]] = defaultdict(set)
    for n in dict.fromkeys(names):
        tar = shard_of(n)
        if tar is None:
            yield n, read_capped(root / n, max_bytes)
        else:
            by_tar[tar].add(n)
    for tar, wanted in by_tar.items():
        for name, data in iter_tar(root, tar, max_bytes):
            if name in wanted:
                wanted.discard(name)
                yield name, data
                if not wanted:
                    break  # the rest of the shard holds nothing asked for
    missing = [n for wanted in by_tar.values() for n in wanted]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images are gone from their shards: {missing[0]}")


def read_images(
    root: Path, names: list[str], max_bytes: int = DEFAULT_MAX_BYTES
) -> dict[str, bytes]:
    """Bytes of many images by name, reading each tar shard once, in one streaming pass
    (none over ``max_bytes``: BadImage("too large"))."""
    return dict(iter_images(root, names, max_bytes))


def split_shards(n_items: int, shard_size: int) -> list[range]:
    """Consecutive index ranges of at most ``shard_size`` items covering ``range(n_items)``."""
    if shard_size < 1:
        raise ValueError("shard_size must be positive")
    return [range(s, min(s + shard_size, n_items)) for s in range(0, n_items, shard_size)]


@dataclass(frozen=True)
class ShardSpan:
    """One shard of a dataset: its images lie at dataset positions [start, stop)."""

    start: int
    stop: int
    count: int  # images in it (positions of skipped files are gaps)


def plan_shards(rows: Iterable[tuple[int, str]], size: int) -> list[ShardSpan]:
    """Shards to mine as separate jobs, from a dataset's (position, name) rows in position
    order, streamed (memory O(shards), not O(images)): loose files split by listing into
    shards of ``size``, and each tar shard's images (contiguous) as one shard, so a job reads
    its tar once, front to back."""
    if size < 1:
        raise ValueError("size must be positive")
    spans: list[ShardSpan] = []
    start = stop = count = 0
    tar: str | None = None
    for pos, name in rows:
        this = shard_of(name)
        if count and (this != tar or (this is None and count == size)):
            spans.append(ShardSpan(start, stop, count))
            count = 0
        if not count:
            start, tar = pos, this
        stop, count = pos + 1, count + 1
    if count:
        spans.append(ShardSpan(start, stop, count))
    return spans


class IdDataset(Dataset):
    """A DataLoader-friendly dataset of (image tensor (3, S, S), id) from a loader function."""

    def __init__(self, ids: Sequence[int], load: Callable[[int], torch.Tensor]) -> None:
        self.ids = list(ids)
        self.load = load

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image_id = self.ids[i]
        return self.load(image_id), image_id


def make_loader(
    ids: Sequence[int],
    load: Callable[[int], torch.Tensor],
    batch_size: int = 32,
    num_workers: int = 0,
) -> DataLoader:
    """Batches of (images (N, 3, S, S), ids (N,) int64) in id-list order, for
    :meth:`workers.ml.mining.Miner.run`."""
    return DataLoader(
        IdDataset(ids, load),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )
