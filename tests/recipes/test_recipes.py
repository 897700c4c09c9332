"""The published training recipes: they parse, say what their papers say, and train for a couple of steps on
colour images through ``robustlab train --recipe`` (CLI options win over the recipe); the crop-flip augmentation
is a seeded batched crop of the zero-padded image and a flip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robustlab as rl
from robustlab import recipes
from robustlab.cli import main
from robustlab.training.augment import crop_flip


def test_the_shipped_recipes_hold_the_papers_hyperparameters():
    assert recipes.names() == ("fgsm-rs-preact-resnet18", "pgd-at-preact-resnet18", "trades-wrn-34-10")
    pgd = recipes.load("pgd-at-preact-resnet18")
    assert (pgd["arch"], pgd["epochs"], pgd["lr"], pgd["weight_decay"], pgd["schedule"]) == \
        ("preact-resnet18", 200, 0.1, 5e-4, "step")
    assert recipes.adversary_settings(pgd) == ("pgd", {"norm": "linf", "eps": pytest.approx(8 / 255), "steps": 10,
                                                       "step_size": pytest.approx(2 / 255)})
    trades = recipes.load("trades-wrn-34-10")
    assert trades["arch"] == "wrn-34-10" and trades["weight_decay"] == 2e-4 and trades["epochs"] == 76
    assert recipes.adversary_settings(trades)[1] == {"norm": "linf", "eps": 0.031, "beta": 6.0, "steps": 10,
                                                     "step_size": 0.007}
    fast = recipes.load("fgsm-rs-preact-resnet18")
    assert (fast["epochs"], fast["lr"], fast["schedule"]) == (15, 0.2, "onecycle")
    assert recipes.adversary_settings(fast)[1]["step_size"] == pytest.approx(10 / 255)
    for name in recipes.names():
        r = recipes.load(name)
        assert r["arch"] in rl.models.architectures() and r["augment"] == "crop-flip" and r["dataset"] == "cifar10"
        adv, params = recipes.adversary_settings(r)
        rl.training.adversaries.from_args(adv, params)  # every parameter is one the adversary takes


def test_bad_recipes_are_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('arch = "cnn"\nlearning_rate = 0.1\n')
    with pytest.raises(ValueError, match="unknown setting.*learning_rate"):
        recipes.load(bad)
    bad.write_text('arch = "cnn"\n[adversary]\neps = 0.1\n')
    with pytest.raises(ValueError, match="must be a table with a name"):
        recipes.load(bad)
    with pytest.raises(FileNotFoundError, match="neither a shipped recipe"):
        recipes.load("no-such-recipe")


def test_crop_flip_is_a_padded_crop_and_a_flip():
    x = torch.rand(64, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    y = crop_flip(x, g, pad=2)
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(64):  # each output is one of the 25 crops of the padded image, flipped or not
        crops = [padded[i, :, a:a + 8, b:b + 8] for a in range(5) for b in range(5)]
        assert any(torch.equal(y[i], c) or torch.equal(y[i], c.flip(2)) for c in crops)
    flipped = sum(any(torch.equal(y[i], padded[i, :, a:a + 8, b:b + 8].flip(2)) for a in range(5) for b in range(5))
                  for i in range(64))
    assert 16 < flipped < 48
    assert torch.equal(crop_flip(x, torch.Generator().manual_seed(0), pad=2), y)  # seeded


def _colour_npz(tmp_path):
    """20 colour 32x32 images per split: the CIFAR-10 sample where the cache has it, else random images."""
    try:
        d = rl.data.load("cifar10-sample", download=False)
        x, y = (d.images * 255).round().to(torch.uint8).numpy(), d.labels.numpy()
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8), np.arange(20) % 10
    path = tmp_path / "c10.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y, classes=np.array([str(i) for i in range(10)]))
    return path


@pytest.mark.parametrize("recipe", [pytest.param("pgd-at-preact-resnet18", marks=pytest.mark.slow),  # PGD-10: ~1 min
                                    "fgsm-rs-preact-resnet18"])
def test_a_recipe_trains_two_steps_on_colour_images(recipe, tmp_path, capsys):
    data = _colour_npz(tmp_path)
    out = tmp_path / "run"
    # the recipe's settings, with the run shortened on the command line: 1 epoch of 2 batches of 8
    assert main(["train", "--recipe", recipe, "--dataset", str(data), "--epochs", "1", "--batch-size", "8",
                 "--val-n", "4", "--robust-val", "4", "--robust-val-steps", "1", "--out", str(out),
                 "--no-progress"]) == 0
    m = rl.models.load(out)
    meta = m.metadata
    cfg = meta["training"] if "training" in meta else meta.get("train_config", meta)
    text = str(cfg)
    assert meta["architecture"]["name"] == "preact-resnet18" and meta["recipe"] == recipe
    assert "'optimizer': 'sgd'" in text and "'augment': 'crop-flip'" in text and "'epochs': 1" in text
    assert ("'name': 'pgd'" in text) == (recipe.startswith("pgd"))


def test_cli_options_win_and_bare_train_still_needs_arch(tmp_path, capsys):
    data = _colour_npz(tmp_path)
    assert main(["train", "--dataset", str(data), "--out", str(tmp_path / "x")]) == 2
    assert "--dataset and --arch are required" in capsys.readouterr().err
    assert main(["train", "--recipe", "trades-wrn-34-10", "--arch", "small-cnn", "--adversary", "none", "--dataset",
                 str(data), "--epochs", "1", "--batch-size", "10", "--out", str(tmp_path / "y"), "--no-progress"]) == 0
    meta = rl.models.load(tmp_path / "y").metadata
    assert meta["architecture"]["name"] == "small-cnn" and "'name': 'none'" in str(meta)
    assert "'weight_decay': 0.0002" in str(meta)  # the recipe's, where the command line said nothing
