"""The training loop: learns on real digits, checkpoints atomically, resumes bit for bit,
refuses bad set-ups before the first epoch."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import robustlab as rl
from robustlab.defenses import GaussianNoise, Standard, train


def _weights(m):
    return [p.detach().clone() for p in m.state_dict().values()]


def test_standard_training_learns_digits(digits_train, digits_test):
    m = rl.models.create("mlp", "digits", seed=0)
    res = train(m, digits_train, epochs=6, batch_size=64, val_data=digits_test, progress=False)
    assert res.metrics["val_accuracy"] > 0.9
    assert len(res.history) == 6 and not m.training
    assert all(p.grad is None for p in m.parameters())


def test_resume_equals_an_uninterrupted_run(digits_train, digits_test, tmp_path):
    kwargs = dict(epochs=3, batch_size=128, val_data=digits_test, progress=False, seed=5, optimizer="sgd", lr=0.05)
    full = train(rl.models.create("small-cnn", "digits", seed=0), digits_train, out=tmp_path / "full", **kwargs)
    # "Interrupted" run: stopped after epoch 1 (as if killed), then resumed to 3 from its checkpoint.
    part_model = rl.models.create("small-cnn", "digits", seed=0)
    stop_now = lambda model, data: {"stop": True}  # noqa: E731
    train(part_model, digits_train, out=tmp_path / "part", evaluate_fn=stop_now, **dict(kwargs, select_best=False))
    state = json.loads((tmp_path / "part" / "checkpoint" / "train_state.json").read_text())
    assert state["epoch"] == 0
    resumed = train(rl.models.create("small-cnn", "digits", seed=9), digits_train, out=tmp_path / "part", resume=True,
                    **dict(kwargs, select_best=False))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    full_last = rl.models.load(tmp_path / "full" / "checkpoint")
    assert all(torch.equal(a, b) for a, b in zip(_weights(full_last), _weights(resumed.model)))
    assert not list((tmp_path / "part").glob(".*"))  # no temporary checkpoint folders left


def test_final_metadata_records_the_run(digits_train, digits_test, tmp_path):
    m = rl.models.create("mlp", "digits", seed=0)
    train(m, digits_train, epochs=2, val_data=digits_test, out=tmp_path / "m", progress=False, adversary=GaussianNoise(0.3))
    meta = rl.models.load_metadata(tmp_path / "m")
    assert meta["training"]["adversary"] == {"name": "noise", "sigma": 0.3}
    assert meta["dataset"] == "digits" and len(meta["history"]) == 2 and "val_accuracy" in meta["metrics"]


def test_gaussian_noise_is_seeded_and_changes_the_loss(digits_train):
    m = rl.models.create("mlp", "digits", seed=0).train()
    x, y = digits_train.images[:32], digits_train.labels[:32]
    noise = GaussianNoise(0.5)
    a = noise.loss(m, x, y, generator=torch.Generator().manual_seed(1))
    b = noise.loss(m, x, y, generator=torch.Generator().manual_seed(1))
    clean = Standard().loss(m, x, y, generator=torch.Generator())
    assert torch.equal(a, b) and not torch.equal(a, clean)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        GaussianNoise(0.0)


def test_best_epoch_selection_and_stop_hook(digits_train, digits_test):
    scores = iter([0.5, 0.9, 0.1])

    def evaluate_fn(model, data):
        s = next(scores)
        return {"robust_accuracy": s, "stop": s < 0.2, "reason": "robust accuracy collapsed"}

    m = rl.models.create("mlp", "digits", seed=0)
    res = train(m, digits_train, epochs=5, val_data=digits_test, evaluate_fn=evaluate_fn, progress=False)
    assert res.stopped_early and len(res.history) == 3 and res.best_epoch == 2
    assert res.metrics["robust_accuracy"] == 0.9


class _NotLogits(nn.Module):
    def forward(self, x):
        return x.mean(dim=(1, 2, 3))


@pytest.mark.parametrize(
    "make, kwargs, match",
    [
        (lambda: rl.models.create("mlp", "cifar10"), {}, "data has 1 channels but the model was built for 3"),
        (lambda: _NotLogits(), {}, "logits of shape"),
        (lambda: rl.models.create("mlp", "digits"), {"epochs": 0}, "epochs must be > 0"),
        (lambda: rl.models.create("mlp", "digits"), {"optimizer": "lbfgs"}, "optimizer must be one of"),
        (lambda: rl.models.create("mlp", "digits"), {"resume": True}, "resume=True needs the out"),
    ],
)
def test_bad_setups_fail_before_training(digits_train, make, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        train(make(), digits_train, progress=False, **kwargs)


def test_lr_schedules():
    from robustlab.defenses.training import lr_factor

    assert lr_factor("cosine", 0, 10) == 1.0 and abs(lr_factor("cosine", 10, 10)) < 1e-12
    assert lr_factor("step", 6, 10) == 0.1 and lr_factor("step", 8, 10) == 0.01
    assert lr_factor("onecycle", 4, 10) == 1.0 and lr_factor("onecycle", 10, 10) == 0.0
