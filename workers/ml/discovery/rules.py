"""Default layers, chosen by rule for the kind of architecture (never by model name).

In order, the first that fits:

1. ``clip-resnet`` (a residual net read by an attention pool, CLIP's ResNets): each stage's
   output, every block of the last stage, and the attention pool's input.
2. ``transformer`` (blocks with attention and MLPs: ViT, Swin, CLIP's ViTs): the MLP hidden
   units of every block.
3. ``inception`` (modules concatenating parallel branches: GoogLeNet, Inception v3/v4,
   SqueezeNet): each such module's output, with its branches.
4. ``inverted-residual`` (blocks built around depthwise convolutions: EfficientNet, MobileNet,
   ConvNeXt): each stage's output and the convolutions after the last stage.
5. ``residual`` (repeated blocks: ResNet, ResNeXt, DenseNet): every block's output.
6. ``plain`` (a chain of convolutions: AlexNet, VGG): every convolution after its ReLU.
7. ``stages`` (anything else): the stages the model declares (timm's ``feature_info``), or the
   outputs of its top-level modules; never no layer at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.ml.discovery.structure import Candidate, Structure

# Which candidate names an output several share; blocks outrank their stage unless the rule
# shows stages.
_PRIORITY = {
    "attnpool_input": 7,
    "mlp": 6,
    "mixed": 5,
    "block": 4,
    "stage": 3,
    "conv": 2,
    "linear": 1,
    "head": 1,
}


@dataclass
class Choice:
    """The rule that fits, the layers (one per output, execution order) and the defaults."""

    rule: str
    layers: list[Candidate]
    defaults: set[int]  # ops of the default layers


def _dedupe(candidates: list[Candidate], prefer_stage: bool) -> list[Candidate]:
    rank = dict(_PRIORITY, stage=_PRIORITY["block"] + 1) if prefer_stage else _PRIORITY
    best: dict[int, Candidate] = {}
    for c in candidates:
        other = best.get(c.op)
        if other is None or rank[c.kind] > rank[other.kind]:
            best[c.op] = c
    return [best[i] for i in sorted(best)]


def _rule(s: Structure) -> str:
    kinds = {c.kind for c in s.candidates}
    if "attnpool_input" in kinds and s.stages:
        return "clip-resnet"
    if s.attention and "mlp" in kinds:
        return "transformer"
    if any(c.kind == "mixed" and c.parallel for c in s.candidates):
        return "inception"
    if s.stages:
        return "inverted-residual" if s.depthwise_blocks else "residual"
    if "conv" in kinds:
        return "plain"
    return "stages"


def _defaults(rule: str, s: Structure) -> set[int]:
    """The rule's default outputs, from every candidate (before one name is kept per output:
    a DenseNet block is also a concatenation, and still a block)."""
    cands = s.candidates

    def ops(*kinds: str) -> set[int]:
        return {c.op for c in cands if c.kind in kinds}

    if rule == "clip-resnet":
        keep = {g[-1] for g in s.stages} | set(s.stages[-1])
        return ops("attnpool_input") | {c.op for c in cands if c.kind == "block" and c.path in keep}
    if rule == "transformer":
        return ops("mlp")
    if rule == "inception":
        mixed = [c for c in cands if c.kind == "mixed" and c.parallel]
        return {
            c.op for c in mixed if not any(c.path.startswith(o.path + ".") for o in mixed if o.path)
        }
    if rule == "inverted-residual":
        # Stage outputs, then the convolutions between the last block and the pooling (the
        # 1x1 head convolution of EfficientNet and MobileNet).
        last_block = max(ops("block", "stage"))
        pooled = min(ops("linear", "head"), default=None)
        head = {
            c.op
            for c in cands
            if c.kind == "conv"
            and c.op > last_block
            and (pooled is None or c.op < pooled)
            and c.shape[-1] * c.shape[-2] > 1
        }
        return ops("stage") | head
    if rule == "residual":
        return ops("block")
    if rule == "plain":
        return ops("conv")
    return set()


def choose(s: Structure, declared: list[str]) -> Choice:
    """Apply the first rule that fits; ``declared``: module paths of the stages the model
    declares (timm's feature_info), used when no rule fits."""
    rule = _rule(s)
    defaults = _defaults(rule, s)
    layers = _dedupe(s.candidates, prefer_stage=rule == "inverted-residual")
    if not defaults:
        rule, defaults = "stages", _fallback(layers, declared)
    trunk = [c for c in layers if c.kind in ("block", "stage", "mixed", "mlp")]
    if rule != "plain" and trunk:
        # Convolutions before the first block: the stem.
        for c in layers:
            if c.kind == "conv" and c.op < trunk[0].op and not _within(c, trunk):
                c.kind = "stem"
    return Choice(rule, layers, defaults)


def _within(c: Candidate, trunk: list[Candidate]) -> bool:
    return any(c.path.startswith(t.path + ".") for t in trunk if t.path)


def _fallback(layers: list[Candidate], declared: list[str]) -> set[int]:
    """Declared stages, else top-level module outputs, else all but the output, else all."""
    picks = {c.op for c in layers if c.path in declared}
    if not picks:
        picks = {c.op for c in layers if c.path and "." not in c.path and c.kind != "head"}
    if not picks:
        picks = {c.op for c in layers if c.kind not in ("head", "linear")}
    return picks or {c.op for c in layers}
