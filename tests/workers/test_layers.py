"""Layer enumeration: default sets per family, unit counts, layouts, execution order."""

from __future__ import annotations

import pytest
import torch

from workers.ml.hooks import run_to, to_unit_maps
from workers.ml.layers import enumerate_layers, inspect_model
from workers.ml.models import load_model


def _check_order(layers):
    orders = [layer.order for layer in layers]
    assert orders == sorted(orders)
    assert len(set(orders)) == len(orders)


def test_efficientnet_default_layers(default_model):
    layers = enumerate_layers(default_model)
    names = [layer.name for layer in layers]
    assert names == [f"blocks.{i}" for i in range(7)] + ["conv_head"]
    units = {layer.name: layer.unit_count for layer in layers}
    assert units["blocks.0"] == 16
    assert units["blocks.6"] == 320
    assert units["conv_head"] == 1280
    assert all(layer.layout.kind == "nchw" and layer.default for layer in layers)
    assert layers[-1].output_shape == [1280, 7, 7]
    _check_order(layers)


def test_all_layers_adds_stem_blocks_and_head(default_model):
    every = enumerate_layers(default_model, all_layers=True)
    kinds = {layer.name: layer.kind for layer in every}
    assert kinds["conv_stem"] == "stem"
    assert kinds["blocks.3.1"] == "block"
    assert kinds["classifier"] == "head"
    assert kinds["global_pool"] == "linear"
    head = next(layer for layer in every if layer.name == "classifier")
    assert head.unit_count == 1000
    assert head.layout.kind == "nc"
    assert {layer.name for layer in every if layer.default} == {
        layer.name for layer in enumerate_layers(default_model)
    }
    _check_order(every)


@pytest.mark.parametrize("spec", ["timm:resnet18", "torchvision:resnet18"])
def test_resnet_default_layers_are_blocks(spec):
    layers = enumerate_layers(load_model(spec))
    assert [layer.name for layer in layers] == [
        f"layer{s}.{b}" for s in range(1, 5) for b in (0, 1)
    ]
    assert [layer.unit_count for layer in layers] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert layers[-1].output_shape == [512, 7, 7]
    _check_order(layers)


def test_layer_shapes_match_a_real_forward(default_model):
    layers = enumerate_layers(default_model)
    x = torch.randn(2, 3, 224, 224)  # (2, 3, 224, 224)
    outs = run_to(default_model.image_model, x, [layer.module_path for layer in layers])
    for layer in layers:
        maps = to_unit_maps(outs[layer.module_path], layer.layout)  # (2, U, H, W)
        assert maps.shape[:2] == (2, layer.unit_count)


def test_inspect_model_is_json_able():
    import json

    summary = inspect_model("timm:resnet18")
    assert summary["family"] == "resnet"
    assert summary["pretrained"] is False
    assert summary["total_units"] == sum(layer["unit_count"] for layer in summary["layers"])
    assert json.loads(json.dumps(summary)) == summary


@pytest.mark.slow
def test_clip_resnet_layers_include_attnpool_input():
    loaded = load_model("open_clip:RN50")
    layers = enumerate_layers(loaded)
    by_name = {layer.name: layer for layer in layers}
    assert list(by_name) == [
        "visual.layer1.2",
        "visual.layer2.3",
        "visual.layer3.5",
        "visual.layer4.0",
        "visual.layer4.1",
        "visual.attnpool_input",
    ]
    attn = by_name["visual.attnpool_input"]
    assert (attn.kind, attn.module_path, attn.unit_count) == ("attnpool_input", "layer4", 2048)
    assert attn.output_shape == [2048, 7, 7]
    _check_order(layers)


@pytest.mark.slow
def test_clip_vit_layers_are_mlp_hidden_units():
    loaded = load_model("open_clip:ViT-B-32")
    layers = enumerate_layers(loaded)
    assert len(layers) == 12
    assert layers[5].name == "visual.transformer.resblocks.5.mlp"
    assert all(layer.kind == "mlp" and layer.unit_count == 3072 for layer in layers)
    assert layers[0].layout.prefix_tokens == 1
    x = torch.zeros(1, 3, 224, 224)  # (1, 3, 224, 224)
    out = run_to(loaded.image_model, x, [layers[3].module_path])[layers[3].module_path]
    assert to_unit_maps(out, layers[3].layout).shape == (1, 3072, 7, 7)
    _check_order(layers)


def test_timm_vit_layers():
    loaded = load_model("timm:vit_tiny_patch16_224")
    layers = enumerate_layers(loaded)
    assert loaded.family == "vit"
    assert [layer.name for layer in layers] == [f"blocks.{i}.mlp" for i in range(12)]
    assert layers[0].unit_count == 768
    assert layers[0].output_shape == [197, 768]
    x = torch.zeros(1, 3, 224, 224)  # (1, 3, 224, 224)
    out = run_to(loaded.image_model, x, [layers[0].module_path])[layers[0].module_path]
    assert to_unit_maps(out, layers[0].layout).shape == (1, 768, 14, 14)
