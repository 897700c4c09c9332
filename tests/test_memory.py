"""Batch sizes from a memory budget (robustlab.memory): sizes parse, the measured cost of an image grows with
its pixels, the cap holds, the model is left as it was, and the CLI's --max-memory lowers the batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustlab as rl
from robustlab import memory


def test_parse_size():
    assert memory.parse_size("4G") == 4 << 30 and memory.parse_size("512M") == 512 << 20
    assert memory.parse_size("1.5GiB") == int(1.5 * (1 << 30)) and memory.parse_size("2e3") == 2000
    assert memory.parse_size(1024) == 1024 and memory.describe(3 << 30) == "3 GiB"
    for bad in ("", "4X", "-1G", "0", "lots"):
        with pytest.raises(ValueError, match="memory size"):
            memory.parse_size(bad)


def test_cost_grows_with_the_image_and_gradients_cost_more():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    small = memory.per_image_bytes(m, (3, 32, 32))
    big = memory.per_image_bytes(m, (3, 64, 64))
    assert 3.0 < big / small < 5.0  # activations scale with the pixels (4x)
    assert memory.per_image_bytes(m, (3, 64, 64), grad=False) < big
    # The floor: the attack's own copies of the image.
    assert small >= memory.COPIES * 3 * 32 * 32 * 4


def test_fit_caps_the_batch_and_leaves_the_model_alone():
    m = rl.models.create("resnet18", num_classes=10, in_channels=3, input_size=32, seed=0).train()
    p = next(m.parameters())
    p.grad = torch.ones_like(p)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    per = memory.per_image_bytes(m, (3, 32, 32))
    assert memory.fit_batch_size(m, (3, 32, 32), 256, 10 * per) == 10
    assert memory.fit_batch_size(m, (3, 32, 32), 4, 10 * per) == 4
    assert memory.fit_batch_size(m, (3, 32, 32), 256, 1) == 1  # never below one image
    assert m.training and torch.equal(p.grad, torch.ones_like(p))
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())  # BatchNorm statistics untouched
    size, note = memory.optional_fit(m, (3, 32, 32), 256, str(10 * per))
    assert size == 10 and "batch size 256 -> 10" in note
    with pytest.raises(TypeError, match="torch.nn.Module"):
        memory.per_image_bytes(lambda x: x, (3, 8, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        memory.per_image_bytes(nn.Identity(), (3, 8))


def test_cli_max_memory_lowers_the_batch(tmp_path, capsys):
    from robustlab.cli import main

    m = rl.models.create("small-cnn", "digits", seed=0)
    rl.models.save(m, tmp_path / "m")
    per = memory.per_image_bytes(m, (1, 8, 8))
    assert main(["attack", "--model", str(tmp_path / "m"), "--attack", "fgsm", "--eps", "0.1", "--n", "6",
                 "--max-memory", str(3 * per), "--out", str(tmp_path / "a.safetensors"), "--no-progress"]) == 0
    assert "batch size 250 -> 3" in capsys.readouterr().err
    assert main(["attack", "--model", str(tmp_path / "m"), "--attack", "fgsm", "--eps", "0.1", "--n", "6",
                 "--max-memory", "lots", "--out", str(tmp_path / "b.safetensors")]) == 2
    assert "memory size 'lots'" in capsys.readouterr().err
