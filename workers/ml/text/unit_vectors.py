"""Per-unit vectors in a model's text-aligned output space, computed ahead of any query.

The last layer's vectors are the columns of the head's linearised readout. An earlier unit's
vector is its attribution to the output: the gradient of each output coordinate with respect to
the unit's map, times the activation, summed over positions, averaged over the unit's top
dataset examples (or over every image given). Attribution is linear in the output coordinate, so
only the ``rank`` leading singular directions of the readout are back-propagated (one backward
pass each, for all layers at once) and the result is mapped back to the full space.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from contracts.layout import Layout
from workers.ml.hooks import capture
from workers.ml.models import LoadedModel
from workers.ml.text.heads import TextHead


def unit_sums(t: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(N, U): a raw layer output summed over every position of each unit (tokens included)."""
    if layout.kind == "nchw":
        return t.sum(dim=(2, 3))  # (N, C, H, W) -> (N, C)
    if layout.kind == "nhwc":
        return t.sum(dim=(1, 2))  # (N, H, W, C) -> (N, C)
    if layout.kind == "nlc":
        # Class tokens count: in a ViT's last block only the class token reaches the output.
        return t.sum(dim=1)  # (N, L, C) -> (N, C)
    if layout.kind == "lnc":
        return t.sum(dim=0)  # (L, N, C) -> (N, C)
    if layout.kind == "nc":
        return t.reshape(t.shape[0], -1)  # (N, U)
    raise ValueError(f"unknown layout kind {layout.kind!r}")


def output_basis(head: TextHead, rank: int) -> torch.Tensor:
    """(S, r): orthonormal leading directions of the readout's column space."""
    u, _, _ = torch.linalg.svd(head.readout.double(), full_matrices=False)  # (S, min(S, U))
    return u[:, : min(rank, u.shape[1])].float()


def attribution(
    loaded: LoadedModel,
    head: TextHead,
    layers: Mapping[str, Layout],
    images: torch.Tensor,
    basis: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Per image, unit and basis direction: grad x activation summed over positions, (N, U, r)."""
    model = loaded.image_model
    param = next(model.parameters())
    x = images.to(param.device, param.dtype)  # (N, 3, S, S)
    paths = list(layers)
    b = basis.to(param.device, param.dtype)  # (S, r)
    with torch.enable_grad(), capture(model, paths, detach=False) as store:
        out = model(x)  # (N, S) raw output (logits or image embedding)
        acts = [store[p] for p in paths]
        z = head.output(out) @ b  # (N, S) @ (S, r) -> (N, r)
        cols: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
        r = z.shape[1]
        for k in range(r):
            # Images are independent, so one backward of the batch sum gives every image's
            # gradient of its own output coordinate k.
            grads = torch.autograd.grad(z[:, k].sum(), acts, retain_graph=k < r - 1)
            for p, a, g in zip(paths, acts, grads, strict=True):
                cols[p].append(unit_sums((g * a).detach(), layers[p]).float().cpu())  # (N, U)
    return {p: torch.stack(cols[p], dim=-1) for p in paths}  # each (N, U, r)


def compute_unit_vectors(
    loaded: LoadedModel,
    head: TextHead,
    layers: Mapping[str, Layout],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = (),
    top_ids: Mapping[str, torch.Tensor] | None = None,
    rank: int = 64,
) -> dict[str, torch.Tensor]:
    """Unit vectors (U, S) per layer, S = the head's output space.

    batches: (images (N, 3, S, S), image ids (N,)); only needed for layers before the head's.
    top_ids: per layer (U, k) dataset-example ids; a unit averages its attribution over those of
    its top examples that appear in the batches (over every image when it has none there).
    """
    out: dict[str, torch.Tensor] = {}
    earlier = {p: lay for p, lay in layers.items() if p != head.last_layer_path}
    if head.last_layer_path in layers:
        out[head.last_layer_path] = head.readout.T.contiguous().clone()  # (U_last, S)
    if not earlier:
        return out
    basis = output_basis(head, rank)  # (S, r)
    r = basis.shape[1]
    own: dict[str, torch.Tensor] = {}  # (U, r) sums over each unit's top examples
    own_n: dict[str, torch.Tensor] = {}  # (U,)
    every: dict[str, torch.Tensor] = {}  # (U, r) sums over all images
    seen = 0
    for images, ids in batches:
        per = attribution(loaded, head, earlier, images, basis)
        seen += images.shape[0]
        for p, a in per.items():  # a (N, U, r)
            units = a.shape[1]
            if p not in every:
                every[p] = torch.zeros(units, r, dtype=torch.float64)
                own[p] = torch.zeros(units, r, dtype=torch.float64)
                own_n[p] = torch.zeros(units, dtype=torch.float64)
            every[p] += a.sum(0).double()
            if top_ids is not None and p in top_ids:
                tops = top_ids[p].to(torch.int64)  # (U, k)
                mask = (tops[:, :, None] == ids.to(torch.int64)[None, None, :]).any(1)  # (U, N)
                m = mask.double()
                own[p] += torch.einsum("un,nur->ur", m, a.double())  # (U, r)
                own_n[p] += m.sum(1)
    if seen == 0:
        raise ValueError("layers before the head's need images to attribute over")
    for p in earlier:
        mean_all = every[p] / seen  # (U, r)
        has = own_n[p] > 0  # (U,)
        mean_own = own[p] / own_n[p].clamp(min=1)[:, None]  # (U, r)
        coeffs = torch.where(has[:, None], mean_own, mean_all)  # (U, r)
        out[p] = (coeffs.float() @ basis.T).contiguous()  # (U, r) @ (r, S) -> (U, S)
    return {p: out[p] for p in layers}


def head_outputs(
    loaded: LoadedModel, head: TextHead, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (N,), outputs (N, S)): what the head says about every image (``head.describe``)."""
    model = loaded.image_model
    param = next(model.parameters())
    all_ids, outs = [], []
    with torch.inference_mode():
        for images, ids in batches:
            out = model(images.to(param.device, param.dtype))  # (B, S)
            outs.append(head.describe(out).float().cpu())
            all_ids.append(ids.to(torch.int64))
    return torch.cat(all_ids), torch.cat(outs)


def example_vectors(
    ids: torch.Tensor, outputs: torch.Tensor, top_ids: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per layer (U, S): the mean output over each unit's top examples (data-side vectors).

    What the model says when the unit fires: unlike attribution this does not say the unit
    causes the output, but it matches what its dataset examples show.
    """
    row = {int(i): r for r, i in enumerate(ids.tolist())}
    out: dict[str, torch.Tensor] = {}
    for p, tops in top_ids.items():
        flat = tops.reshape(-1).tolist()
        rows = torch.tensor([row.get(int(i), -1) for i in flat]).reshape(tops.shape)  # (U, k)
        valid = rows >= 0  # (U, k) padding and unseen ids drop out
        gathered = outputs[rows.clamp(min=0)] * valid[..., None]  # (U, k, S)
        out[p] = gathered.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)  # (U, S)
    return out
