"""Groups of units by the spatial shape of their weights (Weight Banding's k-means, 4..19).

A unit's shape is how strongly each kernel position is used: the norm of its weights over
input channels there, scaled to unit length, so units group by where they look, not by how
strongly. k-means (scikit-learn) runs for every k in the range; the k whose clustering has
the best silhouette (on a fixed sample of units when the layer is large) is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

K_RANGE = range(4, 20)
SILHOUETTE_SAMPLE = 1000  # units the silhouette is measured on (it is quadratic in units)


def spatial_shapes(weight: np.ndarray) -> np.ndarray:
    """(N, C_in, kh, kw) kernels -> (N, kh*kw) unit-length maps of their norm over inputs."""
    shape = np.sqrt((weight.astype(np.float64) ** 2).sum(axis=1)).reshape(len(weight), -1)
    norms = np.linalg.norm(shape, axis=1, keepdims=True)
    return shape / np.where(norms > 0, norms, 1.0)


@dataclass
class Clusters:
    """The chosen clustering and how every k scored."""

    k: int
    labels: np.ndarray  # (N,) group of each unit, groups numbered by size, largest first
    centroids: np.ndarray  # (k, D) in the same order
    silhouettes: dict[int, float]  # k -> silhouette score


def kmeans_groups(x: np.ndarray, ks: Sequence[int] = K_RANGE, seed: int = 0) -> Clusters:
    """k-means of the rows of ``x`` for each k in ``ks`` (those below the row count), keeping
    the k with the best silhouette."""
    n = len(x)
    ks = [k for k in ks if 2 <= k < n]
    if not ks:
        raise ValueError(f"{n} units are too few to group")
    sample = min(n, SILHOUETTE_SAMPLE)
    best: tuple[float, int, KMeans] | None = None
    scores: dict[int, float] = {}
    # The data are small (units x kernel positions): OpenMP threads only contend here, and
    # on a shared 2-core machine they made one layer 25x slower (measured), so one thread.
    with threadpool_limits(1):
        for k in ks:
            km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x)
            if len(set(km.labels_)) < 2:
                continue  # identical rows: no clustering to score
            s = float(silhouette_score(x, km.labels_, sample_size=sample, random_state=seed))
            scores[k] = s
            if best is None or s > best[0]:
                best = (s, k, km)
    if best is None:
        raise ValueError("the units' weights are all alike: no groups")
    _, k, km = best
    sizes = np.bincount(km.labels_, minlength=k)
    rank = np.argsort(-sizes, kind="stable")  # old label of the largest group first
    relabel = np.empty(k, dtype=int)
    relabel[rank] = np.arange(k)
    return Clusters(k, relabel[km.labels_], km.cluster_centers_[rank], scores)
