"""Feature visualization engine on tiny random-init networks: behaviour, not golden images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from contracts.layout import Layout
from workers.ml.featvis import objectives as O
from workers.ml.featvis import render_units, train_facet_probe
from workers.ml.featvis.facets import FacetProbe
from workers.ml.featvis.param import FourierImage
from workers.ml.featvis.render import element_seeds, evaluate_units, optimise
from workers.ml.featvis.transforms import TransformConfig, frozen, sample_theta, warp
from workers.ml.hooks import capture
from workers.ml.models import PreprocessConfig

NCHW = Layout("nchw")
PRE = PreprocessConfig(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear", 1.0)


class TinyNet(nn.Module):
    """A small conv net with a head, so a truncated forward has layers to skip."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def net() -> TinyNet:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = TinyNet()
    # Non-trivial BatchNorm statistics so eval mode matters.
    model.features[1].running_mean.uniform_(-0.2, 0.2)
    model.features[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def _hooks_left(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def _arrays(results) -> list[np.ndarray]:
    return [np.asarray(im, dtype=np.int16) for r in results for im in r.images]


def test_objective_rises_over_steps(net: TinyNet) -> None:
    units = [0, 5]
    with frozen(net):
        states = list(
            optimise(
                net,
                O.channel("features.3"),
                units=units,
                seeds=[(0, 0)] * 2,
                preprocess=PRE,
                steps=40,
                size=32,
                lr=0.2,  # a 32-px image of a random net moves slowly at the default 0.05
            )
        )
        first = states[0].scores
        final_images = states[-1].images()
    start = FourierImage([element_seeds(0, u)[0] for u in units], 32)().detach()
    _, start_mean = evaluate_units(net, "features.3", NCHW, units, start, PRE)
    _, final_mean = evaluate_units(net, "features.3", NCHW, units, final_images, PRE)
    assert (states[-1].scores > first + 0.1).all()
    # Also without transforms, the quantity the result reports.
    assert (final_mean > start_mean + 0.05).all()


def test_render_units_reports_activation_of_stored_image(net: TinyNet) -> None:
    (res,) = render_units(
        net, "features.3", NCHW, [3], preprocess=PRE, steps=20, size=32, objective="channel"
    )
    assert res.images[0].size == (32, 32)
    x = torch.from_numpy(np.asarray(res.images[0], dtype=np.float32) / 255).permute(2, 0, 1)
    a_max, a_mean = evaluate_units(net, "features.3", NCHW, [3], x[None], PRE)
    assert res.act_max == pytest.approx(a_max.item(), rel=1e-5)
    assert res.act_mean == pytest.approx(a_mean.item(), rel=1e-5)
    assert res.act_max >= res.act_mean
    assert res.params["steps"] == 20
    assert res.params["objective"] == "channel"


def test_batch_matches_separate_runs(net: TinyNet) -> None:
    units = [1, 4, 7]
    kw = {"preprocess": PRE, "steps": 15, "size": 32, "seed": 3}
    batched = render_units(net, "features.3", NCHW, units, batch_size=3, **kw)
    single = [render_units(net, "features.3", NCHW, [u], batch_size=1, **kw)[0] for u in units]
    for b, s in zip(batched, single, strict=True):
        diff = np.abs(_arrays([b])[0] - _arrays([s])[0])
        assert diff.max() <= 2  # 8-bit rounding of float noise at most
        assert b.act_mean == pytest.approx(s.act_mean, rel=1e-3, abs=1e-4)


def test_truncated_forward_matches_full_forward(net: TinyNet) -> None:
    images = torch.rand(4, 3, 32, 32)
    units = [0, 3, 9, 15]
    ran_head = []
    handle = net.head.register_forward_hook(lambda *_: ran_head.append(1))
    try:
        a_max, a_mean = evaluate_units(net, "features.3", NCHW, units, images, PRE)
        assert ran_head == []  # the forward stopped at features.3
        with capture(net, ["features.3"]) as store, torch.no_grad():
            net((images - 0.5) / 0.25)
    finally:
        handle.remove()
    assert ran_head == [1]
    own = store["features.3"][torch.arange(4), torch.tensor(units)]  # (4, H, W)
    torch.testing.assert_close(a_max, own.flatten(1).amax(1))
    torch.testing.assert_close(a_mean, own.mean(dim=(1, 2)))


def test_same_seed_same_image_other_seed_other_image(net: TinyNet) -> None:
    kw = {"preprocess": PRE, "steps": 8, "size": 32}
    a = render_units(net, "features.5", NCHW, [2], seed=11, **kw)
    b = render_units(net, "features.5", NCHW, [2], seed=11, **kw)
    c = render_units(net, "features.5", NCHW, [2], seed=12, **kw)
    assert np.array_equal(_arrays(a)[0], _arrays(b)[0])
    assert np.abs(_arrays(a)[0] - _arrays(c)[0]).mean() > 1


def test_diversity_gives_four_different_images(net: TinyNet) -> None:
    (res,) = render_units(
        net, "features.3", NCHW, [6], objective="diversity", preprocess=PRE, steps=20, size=32
    )
    arrays = _arrays([res])
    assert len(arrays) == 4 and len(res.acts_max) == 4
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(arrays[i] - arrays[j]).mean() > 2


def test_objectives_compose(net: TinyNet) -> None:
    x = torch.rand(3, 3, 32, 32)
    a, b = O.channel("features.3"), O.neuron("features.5", 2)
    combo = 2 * a - b / 4 + 1.0
    assert set(combo.layers) == {"features.3", "features.5"}
    with capture(net, list(combo.layers)) as raw, torch.no_grad():
        net(x)
    ctx = O.Context(raw, combo.layers, torch.tensor([0, 1, 2]), torch.arange(3), x)
    torch.testing.assert_close(combo(ctx), 2 * a(ctx) - b(ctx) / 4 + 1.0)
    torch.testing.assert_close((-a)(ctx), O.negative("features.3")(ctx))
    # Element i reads its own unit.
    torch.testing.assert_close(a(ctx), raw["features.3"][[0, 1, 2], [0, 1, 2]].mean(dim=(1, 2)))


def test_top_positions_objectives_average_the_strongest_positions(net: TinyNet) -> None:
    x = torch.rand(3, 3, 32, 32)
    with capture(net, ["features.3"]) as raw, torch.no_grad():
        net(x)
    own = raw["features.3"][[0, 1, 2], [0, 1, 2]].flatten(1).numpy()  # (3, H*W)
    layers = {"features.3": O.NCHW}
    ctx = O.Context(raw, layers, torch.tensor([0, 1, 2]), torch.arange(3), x)
    top = np.sort(own, axis=1)[:, ::-1][:, :5].mean(axis=1)
    bottom = np.sort(own, axis=1)[:, :5].mean(axis=1)
    np.testing.assert_allclose(O.channel("features.3", top=5)(ctx).numpy(), top, rtol=1e-5)
    np.testing.assert_allclose(O.negative("features.3", top=5)(ctx).numpy(), -bottom, rtol=1e-5)
    # Between the mean and the max; more positions than the map has is the plain mean.
    assert (own.mean(axis=1) <= top + 1e-6).all()
    assert (top <= own.max(axis=1) + 1e-6).all()
    np.testing.assert_allclose(
        O.channel("features.3", top=10_000)(ctx).numpy(), own.mean(axis=1), rtol=1e-5
    )


def test_render_records_its_reducer_and_the_top_objective_rises(net: TinyNet) -> None:
    units = [1, 4]
    rendered = render_units(net, "features.3", NCHW, units, preprocess=PRE, steps=24, size=32)
    start = render_units(net, "features.3", NCHW, units, preprocess=PRE, steps=0, size=32)
    # Lucid's channel objective: the plain spatial mean, no top positions.
    (mean,) = render_units(
        net, "features.3", NCHW, [1], preprocess=PRE, steps=0, objective="channel"
    )
    assert rendered[0].params["top_positions"] == 16  # the default
    assert mean.params["top_positions"] is None
    # Rendering with the default reducer raises each unit's strongest positions.
    for after, before in zip(rendered, start, strict=True):
        assert after.act_max > before.act_max


def test_identity_transform_is_exact() -> None:
    cfg = TransformConfig(pad=0, jitter=0, scales=(1.0,), angles=(0.0,), jitter2=0)
    images = torch.rand(2, 3, 32, 32)
    rngs = [np.random.default_rng(i) for i in range(2)]
    out = warp(images, sample_theta(rngs, cfg, 32), (32, 32))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)
    # Padding only: the image shrinks into the centre, the border is the fill value.
    padded = warp(images, sample_theta(rngs, TransformConfig(pad=8, jitter=0, scales=(1.0,),
                  angles=(0.0,), jitter2=0, ref_size=32), 32), (48, 48))  # fmt: skip
    assert torch.allclose(padded[:, :, :6], torch.full_like(padded[:, :, :6], 0.5))
    torch.testing.assert_close(padded[:, :, 8:40, 8:40], images, atol=1e-5, rtol=0)


def _tinted(rgb: tuple[float, float, float], n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        noise = rng.uniform(0, 0.5, size=(40, 40, 3)) + 0.5 * np.array(rgb)
        out.append(Image.fromarray((noise.clip(0, 1) * 255).astype(np.uint8)))
    return out


def test_facet_probe_separates_training_sets_and_round_trips(net: TinyNet, tmp_path) -> None:
    reds = _tinted((0.9, 0.2, 0.1), 12, seed=0)
    blues = _tinted((0.1, 0.2, 0.9), 12, seed=1)
    probe = train_facet_probe(net, "features.2", NCHW, reds, blues, PRE)
    assert probe.accuracy > 0.9
    assert probe.weights.shape == (8,)
    probe.save(tmp_path / "probe.safetensors")
    back = FacetProbe.load(tmp_path / "probe.safetensors")
    torch.testing.assert_close(back.weights, probe.weights)
    assert (back.bias, back.accuracy, back.layer, back.layout) == (
        probe.bias,
        probe.accuracy,
        probe.layer,
        probe.layout,
    )


def test_facet_render_changes_the_image_and_leaves_no_hooks(net: TinyNet) -> None:
    probe = train_facet_probe(
        net, "features.2", NCHW, _tinted((0.9, 0.2, 0.1), 8, 0), _tinted((0.1, 0.2, 0.9), 8, 1),
        PRE,
    )  # fmt: skip
    kw = {"preprocess": PRE, "steps": 15, "size": 32}
    plain = render_units(net, "features.5", NCHW, [4], **kw)
    faceted = render_units(net, "features.5", NCHW, [4], facet=probe, facet_strength=5.0, **kw)
    assert np.abs(_arrays(plain)[0] - _arrays(faceted)[0]).mean() > 1
    assert faceted[0].params["facet"]["layer"] == "features.2"
    assert _hooks_left(net) == 0


def test_model_state_restored_and_no_hooks_left(net: TinyNet) -> None:
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    render_units(net, "features.3", NCHW, [0, 1], objective="diversity", preprocess=PRE,
                 steps=3, size=32)  # fmt: skip
    render_units(net, "features.3", NCHW, [0], objective="neuron", preprocess=PRE, steps=3,
                 size=32)  # fmt: skip
    assert _hooks_left(net) == 0
    assert net.training
    assert all(p.requires_grad for p in net.parameters())
    assert all(p.is_contiguous() for p in net.parameters())
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_hooks_removed_when_objective_raises(net: TinyNet) -> None:
    def boom(_ctx: O.Context) -> torch.Tensor:
        raise RuntimeError("boom")

    bad = O.Objective(boom, {"features.3": NCHW}, "boom")
    with pytest.raises(RuntimeError, match="boom"), frozen(net):
        list(optimise(net, bad, units=[0], seeds=[(0, 0)], preprocess=PRE, steps=2, size=32))
    assert _hooks_left(net) == 0


def test_timm_vit_token_layout_objective_rises() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2
    ).eval()
    layout = Layout("nlc", prefix_tokens=1)
    pre = PreprocessConfig(32, (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
    with frozen(vit):
        states = list(
            optimise(
                vit,
                O.channel("blocks.0.mlp.fc1", layout=layout),
                units=[3, 10],
                seeds=[(0, 0)] * 2,
                preprocess=pre,
                steps=25,
                size=32,
            )
        )
    assert (states[-1].scores > states[0].scores + 0.2).all()
    assert _hooks_left(vit) == 0


def test_channel_is_the_spatial_mean_and_channel_top16_the_default(net: TinyNet) -> None:
    """Lucid's channel objective keeps its name; the top-16 objective has its own."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    from workers.ml.featvis.render import build_objective
    from workers.ml.hooks import run_to

    raw = run_to(net, x, ["features.3"], detach=False)
    ctx = O.Context(raw, {"features.3": NCHW}, torch.tensor([1, 2]), torch.tensor([0, 1]), x)
    maps = raw["features.3"][torch.arange(2), torch.tensor([1, 2])].flatten(1)  # (2, HW)
    mean = build_objective("channel", "features.3", NCHW)(ctx)
    top = build_objective("channel_top16", "features.3", NCHW)(ctx)
    torch.testing.assert_close(mean, maps.mean(1))
    torch.testing.assert_close(top, maps.topk(16, dim=1).values.mean(1))
    (res,) = render_units(net, "features.3", NCHW, [1], preprocess=PRE, steps=0, size=32)
    assert res.params["objective"] == "channel_top16" and res.params["top_positions"] == 16
