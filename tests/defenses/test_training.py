"""The training loop: learns on real digits, is seeded without touching the global RNG, checkpoints
atomically and resumes bit for bit, refuses bad set-ups before the first step; the adversary
registry and the ``robustlab train`` command."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import robustlab as rl
from robustlab.training import Adversary, GaussianNoise, Standard, train
from robustlab.training.adversaries import ADVERSARIES, Param, from_args, register_adversary
from robustlab.training.loop import OPTIMIZERS, lr_factor, load_optimizer_state, optimizer_state


def _state(m: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _strip_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


class DropoutNet(nn.Module):
    """A user module (not from the registry) with dropout: global-RNG draws inside the model."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3),
                                  nn.Linear(8 * 8 * 8, 10))

    def forward(self, x):
        return self.body(x)


def test_standard_training_learns_digits(digits_train, digits_test):
    m = rl.models.create("small-cnn", "digits", seed=0)
    rng = torch.get_rng_state()
    res = train(m, digits_train, epochs=8, batch_size=32, lr=3e-3, val_data=digits_test, test_data=digits_test,
                progress=False)
    assert res.metrics["test_accuracy"] > 0.9 and res.metrics["val_accuracy"] > 0.9
    assert [h["epoch"] for h in res.history] == list(range(1, 9))
    assert {"train_loss", "train_accuracy", "val_accuracy", "lr", "seconds"} <= set(res.history[-1])
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.history[-1]["train_accuracy"] > 0.9
    assert not m.training and all(p.grad is None for p in m.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's global RNG is untouched
    assert res.config["adversary"] == {"name": "none"} and res.config["optimizer"] == "adam"
    assert m.metadata["metrics"] == res.metrics and m.metadata["dataset"] == "digits"


def test_same_seed_same_weights_even_with_dropout(digits_train):
    def run(seed, global_seed):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            m = DropoutNet()
            torch.manual_seed(global_seed)  # the caller's global RNG state must not matter
            train(m, digits_train.subset(300), epochs=2, batch_size=50, seed=seed, progress=False,
                  adversary=GaussianNoise(0.2))
        return _state(m)

    a, b, c = run(0, 1), run(0, 2), run(1, 1)
    assert _equal(a, b) and not _equal(a, c)


@pytest.mark.parametrize("optimizer, adversary, select_best", [("sgd", None, False), ("adam", GaussianNoise(0.3), True)])
def test_resume_equals_an_uninterrupted_run(digits_train, digits_test, tmp_path, optimizer, adversary, select_best):
    kwargs = dict(epochs=3, batch_size=128, val_data=digits_test, progress=False, seed=5, optimizer=optimizer,
                  adversary=adversary, select_best=select_best)
    full = train(rl.models.create("small-cnn", "digits", seed=0), digits_train, out=tmp_path / "full", **kwargs)

    def killed_after_first_epoch(record):
        raise KeyboardInterrupt  # as if the process died right after epoch 1 was checkpointed

    with pytest.raises(KeyboardInterrupt):
        train(rl.models.create("small-cnn", "digits", seed=0), digits_train, out=tmp_path / "part",
              log=killed_after_first_epoch, **kwargs)
    state = json.loads((tmp_path / "part" / "checkpoint" / "train_state.json").read_text())
    assert state["epoch"] == 1 and len(state["history"]) == 1 and state["step"] == 12
    # Resume into a model with different initial weights: everything comes from the checkpoint.
    resumed = train(rl.models.create("small-cnn", "digits", seed=9), digits_train, out=tmp_path / "part",
                    resume=True, **kwargs)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert _strip_times(resumed.history) == _strip_times(full.history) and resumed.best_epoch == full.best_epoch
    assert _equal(_state(resumed.model), _state(full.model))
    for sub in ("checkpoint", "."):
        a = rl.models.load(tmp_path / "full" / sub)
        b = rl.models.load(tmp_path / "part" / sub)
        assert _equal(_state(a), _state(b))
    opt_a = load_file(str(tmp_path / "full" / "checkpoint" / "train_state.safetensors"))
    opt_b = load_file(str(tmp_path / "part" / "checkpoint" / "train_state.safetensors"))
    assert opt_a.keys() == opt_b.keys() and len(opt_a) > 0 and all(torch.equal(opt_a[k], opt_b[k]) for k in opt_a)


def test_checkpoint_layout_is_complete_and_atomic(digits_train, digits_test, tmp_path):
    out = tmp_path / "run"
    train(rl.models.create("mlp", "digits", seed=0), digits_train, epochs=2, val_data=digits_test, out=out,
          progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["best", "checkpoint", "metadata.json", "model.safetensors"]
    ck = out / "checkpoint"
    assert sorted(p.name for p in ck.iterdir()) == ["metadata.json", "model.safetensors", "train_state.json",
                                                   "train_state.safetensors"]
    assert not list(tmp_path.rglob(".*")) and not list(tmp_path.rglob("*.tmp"))  # nothing temporary left
    state = json.loads((ck / "train_state.json").read_text())
    assert {"epoch", "step", "history", "best_epoch", "best_score", "config", "optimizer", "rng"} <= set(state)
    assert (ck / "train_state.safetensors").read_bytes()[8:9] == b"{"  # safetensors, not a pickle
    # A fresh run into the same folder without best-epoch selection leaves no stale best/.
    train(rl.models.create("mlp", "digits", seed=0), digits_train.subset(100), epochs=1, out=out, progress=False,
          select_best=False)
    assert not (out / "best").exists()
    # A crash in the middle of the swap leaves the previous checkpoint as .checkpoint.old: still resumable.
    ck.rename(out / ".checkpoint.old")
    res = train(rl.models.create("mlp", "digits", seed=0), digits_train.subset(100), epochs=3, out=out,
                resume=True, progress=False, select_best=False)
    assert [h["epoch"] for h in res.history] == [1, 2, 3] and not (out / ".checkpoint.old").exists()


def test_resume_refuses_a_different_configuration(digits_train, tmp_path):
    out = tmp_path / "run"
    small = digits_train.subset(200)
    train(rl.models.create("mlp", "digits", seed=0), small, epochs=2, out=out, progress=False, lr=1e-3)
    with pytest.raises(ValueError, match=r"cannot resume .*lr: saved 0.001, now 0.002"):
        train(rl.models.create("mlp", "digits", seed=0), small, epochs=3, out=out, resume=True, progress=False, lr=2e-3)
    with pytest.raises(ValueError, match="already finished 2"):
        train(rl.models.create("mlp", "digits", seed=0), small, epochs=1, out=out, resume=True, progress=False, lr=1e-3)
    # A finished run resumed with the same epochs trains nothing more and returns the same model.
    again = train(rl.models.create("mlp", "digits", seed=3), small, epochs=2, out=out, resume=True, progress=False,
                  lr=1e-3)
    assert len(again.history) == 2 and _equal(_state(again.model), _state(rl.models.load(out)))
    # Nothing to resume: a warning, then a fresh run.
    fresh = train(rl.models.create("mlp", "digits", seed=0), small, epochs=1, out=tmp_path / "new", resume=True,
                  progress=False)
    assert len(fresh.history) == 1


def test_final_metadata_records_the_run(digits_train, digits_test, tmp_path):
    m = rl.models.create("mlp", "digits", seed=0)
    records = []
    train(m, digits_train, epochs=2, val_data=digits_test, test_data=digits_test, out=tmp_path / "m", progress=False,
          adversary=GaussianNoise(0.3), log=records.append, metadata={"purpose": "test"})
    meta = rl.models.load_metadata(tmp_path / "m")
    assert meta["training"]["adversary"] == {"name": "noise", "sigma": 0.3}
    assert meta["training"]["weight_decay"] == OPTIMIZERS["adam"][1] and meta["training"]["lr"] == OPTIMIZERS["adam"][0]
    assert meta["dataset"] == "digits" and meta["purpose"] == "test" and len(meta["history"]) == 2
    assert {"val_accuracy", "test_accuracy", "train_seconds", "wall_seconds"} <= set(meta["metrics"])
    assert [r["epoch"] for r in records] == [1, 2] and records[1]["val_accuracy"] == meta["history"][1]["val_accuracy"]
    assert rl.models.load(tmp_path / "m").metadata["metrics"]["test_accuracy"] == meta["metrics"]["test_accuracy"]


def test_non_main_ranks_write_nothing(digits_train, tmp_path):
    m = rl.models.create("mlp", "digits", seed=0)
    res = train(m, digits_train.subset(100), epochs=1, out=tmp_path / "rank1", is_main=False, progress=False,
                log=lambda r: pytest.fail("rank 1 must not log"))
    assert len(res.history) == 1 and not (tmp_path / "rank1").exists()


class _Recorder(Adversary):
    """Records what the loop passes to the adversary; trains on the clean loss."""

    name = "recorder"

    def __init__(self) -> None:
        self.scales, self.devices, self.draws, self.modes = [], [], [], []

    def loss(self, model, x, y, *, generator, eps_scale=1.0):
        self.scales.append(eps_scale)
        self.draws.append(float(torch.rand((), generator=generator)))
        self.modes.append(model.training)
        return F.cross_entropy(model(x), y)


def test_eps_warmup_generator_and_train_mode_reach_the_adversary(digits_train):
    data = digits_train.subset(400)  # 4 batches of 100 per epoch
    rec = _Recorder()
    res = train(rl.models.create("mlp", "digits", seed=0), data, adversary=rec, epochs=3, batch_size=100,
                eps_warmup_epochs=2, progress=False)
    assert rec.scales == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.0, 1.0, 1.0])
    assert all(rec.modes) and len(set(rec.draws)) == 12
    assert "train_accuracy" not in res.history[0]  # this adversary exposes no logits
    rec2 = _Recorder()
    train(rl.models.create("mlp", "digits", seed=0), data, adversary=rec2, epochs=3, batch_size=100, progress=False)
    assert rec2.draws == rec.draws and rec2.scales == [1.0] * 12


def test_gaussian_noise_is_seeded_unclipped_and_changes_the_loss(digits_train):
    m = rl.models.create("mlp", "digits", seed=0).train()
    x, y = digits_train.images[:32], digits_train.labels[:32]
    noise = GaussianNoise(0.5)
    a = noise.loss(m, x, y, generator=torch.Generator().manual_seed(1))
    b = noise.loss(m, x, y, generator=torch.Generator().manual_seed(1))
    c = noise.loss(m, x, y, generator=torch.Generator().manual_seed(2))
    clean = Standard().loss(m, x, y, generator=torch.Generator())
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, clean)
    assert torch.equal(clean, F.cross_entropy(m(x), y))
    seen = []
    spy = nn.Sequential()
    spy.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
    GaussianNoise(0.5).loss(nn.Sequential(spy, m), x, y, generator=torch.Generator().manual_seed(1))
    assert float(seen[0].min()) < 0.0 and float(seen[0].max()) > 1.0  # not clipped to [0, 1]
    assert noise.config() == {"name": "noise", "sigma": 0.5}
    with pytest.raises(ValueError, match="sigma must be > 0"):
        GaussianNoise(0.0)


def test_best_epoch_selection_and_stop_hook(digits_train, digits_test, tmp_path):
    scores = iter([0.5, 0.9, 0.1])
    weights = []

    def evaluate_fn(model, data):
        weights.append(_state(model))
        s = next(scores)
        return {"robust_accuracy": s, "stop": s < 0.2, "reason": "robust accuracy collapsed"}

    m = rl.models.create("mlp", "digits", seed=0)
    res = train(m, digits_train, epochs=5, val_data=digits_test, evaluate_fn=evaluate_fn, progress=False,
                out=tmp_path / "r")
    assert res.stopped_early and len(res.history) == 3 and res.best_epoch == 2
    assert res.metrics["robust_accuracy"] == 0.9 and _equal(_state(m), weights[1])
    assert _equal(_state(rl.models.load(tmp_path / "r")), weights[1])
    assert _equal(_state(rl.models.load(tmp_path / "r" / "best")), weights[1])
    assert rl.models.load_metadata(tmp_path / "r")["best_epoch"] == 2
    # An explicit "score" wins over accuracies; bad return values are refused.
    falling = iter([3.0, 2.0, 1.0])
    res = train(rl.models.create("mlp", "digits", seed=0), digits_train.subset(200), epochs=3, progress=False,
                val_data=digits_test, evaluate_fn=lambda model, data: {"score": next(falling)})
    assert res.best_epoch == 1 and "score" not in res.history[0] and "val_accuracy" in res.history[0]
    with pytest.raises(TypeError, match="evaluate_fn must return a dict"):
        train(rl.models.create("mlp", "digits", seed=0), digits_train.subset(100), progress=False,
              evaluate_fn=lambda model, data: 0.5)


class _NotLogits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x.mean(dim=(1, 2, 3)) * self.w


class _RGBNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.LazyLinear(10)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


@pytest.mark.parametrize(
    "make, kwargs, match",
    [
        (lambda: rl.models.create("mlp", "cifar10"), {}, "train_data has 1 channels .* but the model expects 3"),
        (lambda: _RGBNet(), {}, "train_data has 1 channels .* but the model expects 3"),
        (lambda: _NotLogits(), {}, r"logits of shape \(2, K\)"),
        (lambda: rl.models.create("mlp", "digits", num_classes=5), {}, "labels go up to 9 but the model has 5 outputs"),
        (lambda: rl.models.create("mlp", "mnist"), {}, "cannot process training images of shape"),
        (lambda: rl.models.create("mlp", "digits"), {"epochs": 0}, "epochs must be > 0"),
        (lambda: rl.models.create("mlp", "digits"), {"batch_size": 0}, "batch_size must be > 0"),
        (lambda: rl.models.create("mlp", "digits"), {"optimizer": "lbfgs"}, "optimizer must be one of adam, sgd"),
        (lambda: rl.models.create("mlp", "digits"), {"schedule": "linear"}, "schedule must be one of"),
        (lambda: rl.models.create("mlp", "digits"), {"lr": -1.0}, "lr must be > 0"),
        (lambda: rl.models.create("mlp", "digits"), {"resume": True}, "resume=True needs the out"),
        (lambda: rl.models.create("mlp", "digits"), {"adversary": "pgd"}, "adversary must be a robustlab.training.Adversary"),
        (lambda: rl.models.create("mlp", "digits"), {"val_data": (torch.rand(4, 1, 9, 9), torch.zeros(4, dtype=torch.long))},
         r"val_data images have shape \(1, 9, 9\)"),
    ],
)
def test_bad_setups_fail_before_training(digits_train, make, kwargs, match):
    model = make()
    before = _state(model) if not any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()) else None
    with pytest.raises((ValueError, TypeError), match=match):
        train(model, digits_train, progress=False, **kwargs)
    if before is not None:
        assert _equal(before, _state(model))  # nothing was trained


def test_bad_data_values_fail_before_training(digits_train):
    m = rl.models.create("mlp", "digits", seed=0)
    x, y = digits_train.images[:64], digits_train.labels[:64]
    with pytest.raises(ValueError, match=r"train_data images has values in .* expected images in \[0.0, 1.0\]"):
        train(m, (x * 16, y), progress=False)
    with pytest.raises(TypeError, match="train_data labels must hold integer class indices"):
        train(m, (x, y.float()), progress=False)
    with pytest.raises(TypeError, match="Dataset or an \\(images, labels\\) pair"):
        train(m, x, progress=False)


def test_diverging_training_raises_and_keeps_the_last_good_checkpoint(digits_train, tmp_path):
    m = rl.models.create("mlp", "digits", seed=0)
    with pytest.raises(FloatingPointError, match="training loss became nan in epoch 1"):
        train(m, digits_train.subset(200), optimizer="sgd", lr=1e30, schedule="constant", out=tmp_path / "r",
              progress=False)
    assert not (tmp_path / "r" / "checkpoint").exists()


def test_lr_schedules():
    assert lr_factor("cosine", 0, 10) == 1.0 and lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("step", 4, 10) == 1.0 and lr_factor("step", 6, 10) == 0.1 and lr_factor("step", 8, 10) == 0.01
    ramp = [lr_factor("onecycle", s, 10) for s in range(10)]
    assert ramp[0] == pytest.approx(0.25) and ramp[3] == 1.0 and max(ramp) == 1.0 and ramp[-1] == pytest.approx(1 / 6)
    assert all(a <= b for a, b in zip(ramp[:4], ramp[1:4])) and all(a >= b for a, b in zip(ramp[4:], ramp[5:]))
    assert lr_factor("constant", 7, 10) == 1.0
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_factor("warm", 0, 10)


def test_optimizer_state_round_trips_without_pickle(digits_train):
    m = rl.models.create("mlp", "digits", seed=0)
    for name in ("adam", "sgd"):
        opt = torch.optim.Adam(m.parameters(), lr=1e-3) if name == "adam" else torch.optim.SGD(m.parameters(), 0.1, momentum=0.9)
        F.cross_entropy(m(digits_train.images[:16]), digits_train.labels[:16]).backward()
        opt.step()
        tensors, meta = optimizer_state(opt)
        meta = json.loads(json.dumps(meta))  # through JSON, as on disk
        opt2 = torch.optim.Adam(m.parameters(), lr=5.0) if name == "adam" else torch.optim.SGD(m.parameters(), 5.0, momentum=0.1)
        load_optimizer_state(opt2, tensors, meta)
        a, b = opt.state_dict(), opt2.state_dict()
        assert a["param_groups"] == b["param_groups"]
        for pid in a["state"]:
            for key, val in a["state"][pid].items():
                assert torch.equal(val, b["state"][pid][key])
        m.zero_grad(set_to_none=True)


# ---- the adversary registry and the CLI ------------------------------------------------------


def test_registry_builds_adversaries_from_arguments():
    assert isinstance(from_args("none"), Standard)
    assert from_args("noise", {"sigma": 0.5}).config() == {"name": "noise", "sigma": 0.5}
    assert from_args("noise", {}).sigma == 0.25  # the registered default
    pgd = from_args("pgd", {"eps": 0.1, "steps": 3})
    assert pgd.config()["threat"]["eps"] == 0.1 and pgd.steps == 3
    with pytest.raises(ValueError, match="adversary 'pgd' needs --eps"):
        from_args("pgd", {"steps": 3})
    with pytest.raises(ValueError, match="unknown adversary 'free'; expected one of none, noise"):
        from_args("free")
    with pytest.raises(ValueError, match="already registered"):
        register_adversary("noise", GaussianNoise)


def test_a_registered_adversary_appears_in_the_cli(digits_train, tmp_path, capsys):
    from robustlab.cli import main

    class Scaled(Adversary):
        name = "scaled-test"

        def __init__(self, factor):
            self.factor = factor

        def loss(self, model, x, y, *, generator, eps_scale=1.0):
            return self.factor * F.cross_entropy(model(x), y)

        def config(self):
            return {"name": self.name, "factor": self.factor}

    register_adversary("scaled-test", lambda factor: Scaled(factor), (Param("factor", float, "loss factor", 1.0),))
    try:
        out = tmp_path / "m"
        assert main(["train", "--dataset", "digits", "--arch", "mlp", "--epochs", "1", "--out", str(out),
                     "--adversary", "scaled-test", "--factor", "0.5", "--train-n", "300", "--no-progress"]) == 0
        assert rl.models.load_metadata(out)["training"]["adversary"] == {"name": "scaled-test", "factor": 0.5}
    finally:
        ADVERSARIES.pop("scaled-test", None)


def test_cli_train_with_a_held_out_validation_split_and_resume(tmp_path, capsys):
    from robustlab.cli import main

    out = tmp_path / "digits-noise"
    argv = ["train", "--dataset", "digits", "--arch", "small-cnn", "--epochs", "4", "--lr", "3e-3", "--batch-size", "32",
            "--out", str(out), "--adversary", "noise", "--sigma", "0.1", "--val-n", "200", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    meta = rl.models.load_metadata(out)
    assert f"test accuracy {meta['metrics']['test_accuracy']:.4f}" in printed
    assert meta["metrics"]["test_accuracy"] > 0.85 and meta["training"]["train_size"] == 1437 - 200
    assert meta["training"]["val_size"] == 200 and meta["validation"] == "held-out training images"
    assert meta["training"]["adversary"] == {"name": "noise", "sigma": 0.1}
    # Resuming a finished run changes nothing.
    assert main(argv + ["--resume"]) == 0
    assert rl.models.load_metadata(out)["history"] == meta["history"]
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--out", str(out), "--val-split", "1.5"]) == 2
    assert "--val-split must be in (0, 1)" in capsys.readouterr().err


# ---- bad input before any epoch, mixed precision and channels_last ---------------------------


@pytest.mark.parametrize(
    "make_adversary, match",
    [
        (lambda: rl.training.PGDAdversary(rl.ThreatModel("linf", 0.1), steps=0), "steps must be > 0"),
        (lambda: rl.training.PGDAdversary(rl.ThreatModel("linf", 0.1), steps=2, step_size=0.0), "step_size must be > 0"),
        (lambda: rl.training.PGDAdversary(rl.ThreatModel("linf", 0.1), step_size=0.3), "step_size=0.3 is more than twice"),
        (lambda: rl.training.FGSMRS(rl.ThreatModel("linf", 0.1), step=0.25), "step=0.25 is more than twice eps=0.1"),
        (lambda: rl.training.FGSMRS(rl.ThreatModel("linf", 0.1), step=-1.0), "step must be > 0"),
        (lambda: rl.training.TRADES(rl.ThreatModel("linf", 0.1), step_size=0.5), "step_size=0.5 is more than twice"),
        (lambda: rl.training.MART(rl.ThreatModel("l2", 1.0), steps=-3), "steps must be > 0"),
        (lambda: rl.training.PGDAdversary(rl.ThreatModel("linf", 1.5)), "eps=1.5 is larger than the input range"),
        (lambda: rl.training.PGDAdversary(rl.ThreatModel("l0", 3.0)), "supports the linf, l2 and l1"),
    ],
)
def test_incompatible_adversary_settings_are_refused(make_adversary, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make_adversary()


def test_threat_and_model_must_fit_the_data_before_the_first_epoch(digits_train):
    m = rl.models.create("mlp", "digits", seed=0)
    before = _state(m)
    # 8x8 digits: the l2 diameter of the image box is sqrt(64) = 8.
    with pytest.raises(ValueError, match=r"eps=9.0 for norm l2 exceeds the diameter 8 of the image box"):
        train(m, digits_train, adversary=rl.training.PGDAdversary(rl.ThreatModel("l2", 9.0)), progress=False)
    with pytest.raises(ValueError, match="the dataset has 10 classes but the model has 12 outputs"):
        train(rl.models.create("mlp", "digits", num_classes=12), digits_train, progress=False)
    with pytest.raises(ValueError, match=r"amp must be None or 'bf16', got 'fp16' \(float16 needs loss scaling"):
        train(m, digits_train, amp="fp16", progress=False)
    assert _equal(before, _state(m))


def test_bf16_autocast_and_channels_last_train_on_the_cpu(digits_train, digits_test):
    small = digits_train.subset(256)
    res = train(rl.models.create("small-cnn", "digits", seed=0), small, epochs=2, batch_size=64, lr=3e-3, amp="bf16",
                channels_last=True, val_data=digits_test, progress=False,
                adversary=rl.training.PGDAdversary(rl.ThreatModel("linf", 0.1), steps=2))
    assert all(math.isfinite(h["train_loss"]) for h in res.history)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert all(p.dtype == torch.float32 and p.grad is None for p in res.model.parameters())  # weights stay fp32
    assert res.config["amp"] == "bf16" and res.config["channels_last"] is True and res.config["world_size"] == 1
    ref = train(rl.models.create("small-cnn", "digits", seed=0), small, epochs=2, batch_size=64, lr=3e-3,
                val_data=digits_test, progress=False,
                adversary=rl.training.PGDAdversary(rl.ThreatModel("linf", 0.1), steps=2))
    assert res.history[-1]["train_loss"] == pytest.approx(ref.history[-1]["train_loss"], rel=0.05)  # bf16 rounding
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sync_batchnorm needs CUDA devices .* got device cpu"):
            train(rl.models.create("mlp", "digits"), small, sync_batchnorm=True, progress=False)


def test_cli_refuses_bad_adversary_settings_in_one_line(tmp_path, capsys):
    from robustlab.cli import main

    base = ["train", "--dataset", "digits", "--arch", "mlp", "--out", str(tmp_path / "m"), "--adversary", "pgd"]
    for extra, message in [(["--eps", "1.5"], "eps=1.5 is larger than the input range"),
                           (["--eps", "0.1", "--steps", "0"], "steps must be > 0"),
                           (["--eps", "0.1", "--step-size", "-0.01"], "step_size must be > 0"),
                           (["--eps", "0.1", "--norm", "l3"], "norm must be one of"),
                           (["--eps", "0.1", "--fast", "fp16"], "fast must be one of 'off', 'on', 'bf16'"),
                           (["--eps", "0.1", "--sigma", "0.5"],
                            "--sigma does not apply to --adversary pgd (it is an option of noise)"),
                           (["--eps", "0.1", "--amp", "bf16", "--device", "cuda:7"], "CUDA")]:
        if extra[-1] == "cuda:7" and torch.cuda.is_available():
            continue
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and err.startswith("robustlab train: error:")
    assert not (tmp_path / "m").exists()  # nothing was trained or written


def test_cli_records_the_adversary_and_clean_and_robust_accuracy_per_epoch(tmp_path, capsys):
    from robustlab.cli import main

    out = tmp_path / "pgd"
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--epochs", "2", "--train-n", "300", "--val-n", "60",
                 "--adversary", "pgd", "--eps", "0.1", "--steps", "2", "--robust-val", "40", "--robust-val-steps", "2",
                 "--amp", "bf16", "--channels-last", "--out", str(out), "--no-progress"]) == 0
    meta = rl.models.load_metadata(out)
    adv = meta["training"]["adversary"]
    assert adv["name"] == "pgd" and adv["steps"] == 2 and adv["threat"]["eps"] == 0.1 and adv["threat"]["norm"] == "linf"
    assert adv["step_size"] == pytest.approx(0.125) and meta["training"]["amp"] == "bf16"
    assert meta["training"]["evaluate_fn"] == {"name": "robust_validation", "attack": "PGD", "threat": adv["threat"],
                                               "n": 40, "steps": 2, "restarts": 1, "collapse": 0.2, "seed": 0}
    assert [h["epoch"] for h in meta["history"]] == [1, 2]
    assert all(0.0 <= h["val_accuracy"] <= 1.0 and 0.0 <= h["robust_accuracy"] <= 1.0 for h in meta["history"])
    assert meta["metrics"]["robust_accuracy"] == meta["history"][meta["best_epoch"] - 1]["robust_accuracy"]


def test_a_train_config_is_the_same_call_as_keywords(digits_train):
    from robustlab.training import TrainConfig

    data = (digits_train.images[:96], digits_train.labels[:96])
    a = rl.models.create("mlp", "digits", seed=0)
    b = rl.models.create("mlp", "digits", seed=0)
    ra = train(a, data, epochs=2, batch_size=32, optimizer="sgd", seed=3, progress=False)
    rb = train(b, data, config=TrainConfig(epochs=2, batch_size=32, optimizer="sgd", seed=3, progress=False))
    assert _equal(_state(a), _state(b))
    assert ra.config == rb.config and ra.config["lr"] == OPTIMIZERS["sgd"][0]
    with pytest.raises(ValueError, match="either in config= or as keywords, not both; got config and epochs"):
        train(a, data, config=TrainConfig(progress=False), epochs=2)
    with pytest.raises(TypeError, match="unexpected keyword argument.*epoch; settings are adversary, epochs"):
        train(a, data, epoch=2, progress=False)
    with pytest.raises(TypeError, match="config must be a robustlab.training.TrainConfig, got dict"):
        train(a, data, config={"epochs": 2})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs must be > 0"),
        ({"optimizer": "lbfgs"}, "optimizer must be one of adam, sgd"),
        ({"lr": -1.0}, "lr must be > 0"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"amp": "fp16"}, "amp must be None or 'bf16'"),
        ({"adversary": "pgd"}, "adversary must be a robustlab.training.Adversary"),
        ({"select_best": "yes"}, "select_best must be a bool"),
    ],
)
def test_train_config_validates_on_construction(kwargs, match):
    from robustlab.training import TrainConfig

    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig(**kwargs)


def test_adversaries_get_the_training_progress_before_every_batch(digits_train):
    """``set_progress(t / epochs, t)`` with ``t`` the fractional epochs done: what certified
    training's eps / kappa schedules are written against."""

    class Spy(Standard):
        def __init__(self) -> None:
            self.calls: list[tuple[float, float]] = []

        def set_progress(self, progress: float, epoch: float) -> None:
            super().set_progress(progress, epoch)
            self.calls.append((progress, epoch))

    spy = Spy()
    data = (digits_train.images[:64], digits_train.labels[:64])
    train(rl.models.create("mlp", "digits", seed=0), data, adversary=spy, epochs=2, batch_size=32, progress=False)
    assert spy.calls == [(0.0, 0.0), (0.25, 0.5), (0.5, 1.0), (0.75, 1.5)]
    assert (spy.progress, spy.epoch) == (0.75, 1.5)


def test_cli_trains_through_the_fast_path(tmp_path):
    from robustlab.cli import main

    out = tmp_path / "fast"
    assert main(["train", "--dataset", "digits", "--arch", "small-cnn", "--epochs", "1", "--train-n", "256",
                 "--val-n", "64", "--adversary", "pgd", "--eps", "0.1", "--steps", "2", "--fast", "bf16",
                 "--robust-val", "32", "--robust-val-steps", "2", "--out", str(out), "--no-progress"]) == 0
    adv = rl.models.load_metadata(out)["training"]["adversary"]
    assert adv["name"] == "pgd" and adv["fast"]["precision"] == "bf16" and adv["fast"]["channels_last"] is True
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--adversary", "noise", "--fast", "bf16",
                 "--out", str(tmp_path / "n")]) == 2  # the noise adversary crafts nothing to speed up
