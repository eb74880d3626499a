"""One preprocessing path: mining, its example sheets and facet probes see the same pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from contracts.layout import Layout
from workers.ml.featvis.facets import pooled_activations
from workers.ml.mining import Miner
from workers.ml.models import PreprocessConfig
from workers.ml.preprocess import from_pil, model_view, normalize, to_batch
from workers.ml.sheets import example_views, kept_unit_maps
from workers.tasks.runtime import DatasetImages

IMAGE_ID = 7


@pytest.fixture
def photo(tmp_path) -> tuple[Image.Image, DatasetImages]:  # type: ignore[no-untyped-def]
    """A landscape photo with detail everywhere (a crop or resampling change shows), on disk
    as a one-image dataset."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (180, 290, 3), dtype=np.uint8)
    arr[::3, :, 0] = 255  # stripes: a different filter or scale moves these pixels
    img = Image.fromarray(arr)
    img.save(tmp_path / "photo.png")
    return img, DatasetImages(tmp_path, [IMAGE_ID], {IMAGE_ID: "photo.png"})


@pytest.mark.parametrize(
    "cfg",
    [
        PreprocessConfig(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", 0.875),
        PreprocessConfig(48, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), "bilinear", 1.0),
    ],
)
def test_mining_sheets_and_facets_see_the_same_pixels(photo, cfg) -> None:
    img, images = photo
    # The model's input as mining loads it (a dataset image by id).
    mined = images.loader([IMAGE_ID], cfg)(IMAGE_ID)  # (3, S, S)
    assert mined.shape == (3, cfg.input_size, cfg.input_size)
    # A model whose one layer is its flattened input: each "unit" is one input value.
    net = nn.Sequential(nn.Flatten()).eval()
    flat = Layout("nc")
    # The sheets: the image the crops are cut from, and the maps (kept while mining) their
    # heatmaps draw.
    miner = Miner({"0": flat}, k=1, sketch_size=1, maps=1)
    miner.update(net, mined[None], torch.tensor([IMAGE_ID]))
    maps = kept_unit_maps({"0": miner.reducers["0"].finalize()}, [("0", 0)])
    views = example_views([([IMAGE_ID], [img])], cfg)
    assert views[IMAGE_ID].size == (cfg.input_size, cfg.input_size)
    torch.testing.assert_close(normalize(from_pil([views[IMAGE_ID]]), cfg)[0], mined)
    assert float(maps[("0", 0, IMAGE_ID)]) == float(mined.reshape(-1)[0].half())
    # Facet probes: what the probe is trained on.
    pooled = pooled_activations(net, "0", flat, [img], cfg)  # (1, 3 * S * S)
    torch.testing.assert_close(pooled[0], mined.reshape(-1))
    # And all of them are the one function's output.
    torch.testing.assert_close(to_batch([img], cfg)[0], mined)
    assert np.array_equal(np.asarray(views[IMAGE_ID]), np.asarray(model_view(img, cfg)))


def test_model_view_is_the_centre_crop_at_the_models_scale() -> None:
    # 300 x 200 at crop 0.875, S = 70: the short side goes to 80, the long one to 120, and the
    # centre 70 x 70 is kept, 25 px in from the left and 5 from the top.
    arr = np.zeros((200, 300, 3), dtype=np.uint8)
    arr[:, 150:] = 255  # right half white: the view's vertical edge sits at its centre
    cfg = PreprocessConfig(70, (0.5,) * 3, (0.5,) * 3, "bilinear", 0.875)
    view = np.asarray(model_view(Image.fromarray(arr), cfg))
    assert view.shape == (70, 70, 3)
    assert (view[:, :33] == 0).all() and (view[:, 37:] == 255).all()
