"""Hooks: removed after use, early stop, and safe when threads share one model."""

from __future__ import annotations

import threading

import torch
from torch import nn

from contracts.layout import Layout
from workers.ml.hooks import producing_conv, run_to, to_unit_maps


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 5),
    ).eval()


def test_run_to_stops_early_and_removes_its_hooks() -> None:
    model = net()
    ran = []
    model[6].register_forward_hook(lambda *_: ran.append("head"))
    out = run_to(model, torch.rand(2, 3, 16, 16), ["1", "3"])
    assert set(out) == {"1", "3"} and out["3"].shape == (2, 8, 16, 16)
    assert ran == []  # the head after the deepest requested layer never ran
    assert all(not m._forward_hooks for m in list(model)[:6])
    assert to_unit_maps(torch.rand(2, 5), Layout("nc")).shape == (2, 5, 1, 1)


def test_threads_sharing_a_model_do_not_stop_each_other() -> None:
    model = net()
    errors: list[BaseException] = []

    def work(path: str, batch: int) -> None:
        try:
            for _ in range(60):
                out = run_to(model, torch.rand(batch, 3, 16, 16), [path])
                assert out[path].shape[0] == batch
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(p, b)) for p, b in (("1", 1), ("4", 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_post_activation_layer_is_read_through_the_convolution_that_makes_it() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    assert producing_conv(net, "2", 8) == "0"  # the ReLU after conv 0
    assert producing_conv(net, "1", 8) == "0"  # its BatchNorm
    assert producing_conv(net, "3", 4) == "3"  # a convolution is its own
    assert producing_conv(net, "2", 5) == "2"  # no convolution with one channel per unit
    assert producing_conv(net, "9.branch", 8) == "9.branch"  # not a module: the caller reports
