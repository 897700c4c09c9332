"""``robustlab attack`` end to end on a tiny digits model: adversarial examples and a JSON summary."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from robustlab.cli import main


@pytest.fixture(scope="module")
def digits_mlp(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-attack") / "digits-mlp"
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--epochs", "2", "--out", str(path), "--no-progress"]) == 0
    return path


def test_attack_writes_safetensors_and_summary(digits_mlp, tmp_path, capsys):
    out = tmp_path / "adv.safetensors"
    argv = ["attack", "--model", str(digits_mlp), "--attack", "cw-l2", "--n", "50", "--out", str(out),
            "-o", "steps=30", "-o", "binary_search_steps=3", "-o", "initial_const=1.0", "-o", "step_size=0.05",
            "--batch-size", "32", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    tensors = load_file(str(out))
    assert tensors["x_adv"].shape == (50, 1, 8, 8) and tensors["labels"].shape == (50,)
    assert torch.equal(tensors["indices"], torch.arange(50))
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["attack"] == "cw-l2" and f.metadata()["norm"] == "l2"
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["attack"] == "cw-l2" and summary["n"] == 50 and summary["norm"] == "l2"
    assert summary["config"]["steps"] == 30 and summary["config"]["binary_search_steps"] == 3
    assert summary["success_rate_on_correct"] >= 0.9
    dist = summary["distance"]
    assert dist["p10"] <= dist["median"] <= dist["p90"] and dist["median"] > 0
    assert summary["seconds"] > 0 and summary["iterations"]["max"] >= 1
    # The summary agrees with the saved tensors.
    found = tensors["success"] & tensors["clean_correct"]
    assert summary["success_rate"] == pytest.approx(float(tensors["success"].float().mean()))
    assert dist["median"] == pytest.approx(float(torch.quantile(tensors["distance"][found].double(), 0.5)), rel=1e-6)
    import robustlab as rl

    clean = rl.data.load("digits", "test").images[:50]
    assert torch.allclose(tensors["distance"], (tensors["x_adv"] - clean).flatten(1).norm(dim=1), atol=1e-5)
    assert "median" in printed and str(out) in printed


def test_fixed_budget_attack_with_eps(digits_mlp, tmp_path):
    out = tmp_path / "pgd.safetensors"
    assert main(["attack", "--model", str(digits_mlp), "--attack", "pgd", "--eps", "0.3", "--n", "20",
                 "-o", "steps=10", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["threat"] == {"norm": "linf", "eps": 0.3, "lower": 0.0, "upper": 1.0}
    x_adv = load_file(str(out))["x_adv"]
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert summary["robust_accuracy"] <= 0.2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--attack", "nope"], "unknown attack 'nope'"),
        (["--attack", "pgd"], "has a fixed budget: pass --eps"),
        (["--attack", "deepfool", "--out", "adv.npz"], "--out must name a .safetensors file"),
        (["--attack", "cw-l2", "--norm", "l7"], "norm must be one of"),
        (["--attack", "deepfool", "--norm", "l1"], "DeepFool supports the norms l2, linf"),
        (["--attack", "cw-l2", "-o", "stepz=3"], "attack 'cw-l2'"),
        (["--attack", "pgd", "--eps", "2.0"], "larger than the input range"),
    ],
)
def test_bad_arguments_are_one_clear_line(digits_mlp, tmp_path, capsys, extra, message):
    # bad numbers (--n 0, --eps nan) are argparse errors naming the option: tests/test_cli_options.py
    argv = ["attack", "--model", str(digits_mlp), "--out", str(tmp_path / "a.safetensors"), "--n", "5", "--no-progress"]
    # later flags win in argparse, so the case's own --out / --n replace the defaults above
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "a.safetensors").exists()


def test_missing_model_and_malformed_option(tmp_path, capsys):
    assert main(["attack", "--model", str(tmp_path / "none"), "--attack", "deepfool", "--out", str(tmp_path / "a.safetensors")]) == 2
    assert "no model at" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["attack", "--model", "m", "--attack", "deepfool", "--out", "a.safetensors", "-o", "steps"])
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_attack_without_out_writes_under_out_attack(digits_mlp, tmp_path, monkeypatch, capsys):
    """As certify and verify: without --out the examples go to out/attack/<model>-<attack>.safetensors
    (relative to the working directory) and the report into the folder of the same name."""
    monkeypatch.chdir(tmp_path)
    assert main(["attack", "--model", str(digits_mlp), "--attack", "fgsm", "--eps", "0.1", "--n", "20",
                 "--no-progress"]) == 0
    out = tmp_path / "out" / "attack" / "digits-mlp-fgsm.safetensors"
    assert out.is_file() and str(out.relative_to(tmp_path)) in capsys.readouterr().out
    assert load_file(str(out))["x_adv"].shape == (20, 1, 8, 8)
    assert (out.parent / "digits-mlp-fgsm" / "report.json").is_file()
