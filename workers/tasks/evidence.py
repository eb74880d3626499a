"""One pass over a fixed sample of a plan's images: what labels, conditional probability
plots and attacks measure units against (``workers.ml.text.evidence``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from workers.tasks.jobrun import Progress
from workers.tasks.mining import BATCH, Plan


def sample_ids(ids: list[int], limit: int) -> list[int]:
    """At most ``limit`` of ``ids``: the same ones on every run, spread over the dataset."""
    if len(ids) <= limit:
        return list(ids)
    from workers.ml.mining import splitmix64

    order = torch.argsort(splitmix64(torch.tensor(ids, dtype=torch.int64)))[:limit]
    return sorted(ids[i] for i in order.tolist())


def evidence_for(
    plan: Plan, loaded: Any, head: Any, limit: int, progress: Progress, *, measure: bool = True
) -> Any:
    """``collect_evidence`` over a fixed sample of at most ``limit`` of the plan's images, for
    its layers, reporting progress per batch."""
    from contracts.layout import Layout
    from workers.ml.sources import make_loader
    from workers.ml.text.evidence import collect_evidence

    ids = sample_ids(plan.images.ids, limit)
    layouts = {x.module_path: Layout.from_dict(x.layout) for x in plan.layers}
    loader = make_loader(ids, plan.images.loader(ids, loaded.preprocess), BATCH)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        done = 0
        for images, batch_ids in loader:
            yield images, batch_ids
            done += len(batch_ids)
            progress(done, len(ids), f"{done}/{len(ids)} images measured")

    return collect_evidence(loaded, layouts, batches(), head, measure=measure)
