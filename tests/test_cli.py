"""The command line end to end on digits: train, evaluate, certify; user errors are one clear line."""

from __future__ import annotations

import json

import pytest
import torch

from robustlab.cli import main


def test_train_evaluate_certify_on_digits(tmp_path, capsys):
    model = tmp_path / "digits-mlp"
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--epochs", "3", "--out", str(model), "--no-progress"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(model), "--attack", "fgsm,pgd", "--eps", "0.05,0.3", "--n", "40",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    threat = report["models"][0]["threats"][0]
    assert report["models"][0]["data"]["n"] == 40 and [r["eps"] for r in threat["rows"]] == [0.05, 0.3]
    pgd_03 = {a["attack"]: a for a in threat["rows"][1]["attacks"]}["pgd"]["robust"]["value"]
    assert pgd_03 <= 0.1 and f"{100 * pgd_03:.1f}" in printed
    assert (out / "index.html").exists()
    # Resume reuses the finished batches and gives the same numbers.
    assert main(["evaluate", "--model", str(model), "--attack", "fgsm,pgd", "--eps", "0.05,0.3", "--n", "40",
                 "--out", str(out), "--resume", "--no-progress"]) == 0
    assert json.loads((out / "report.json").read_text())["models"][0]["threats"] == report["models"][0]["threats"]
    cert_file = tmp_path / "cert.json"
    assert main(["certify", "--model", str(model), "--sigma", "0.25", "--n0", "20", "--samples", "200", "--n-images", "5",
                 "--radii", "0,0.1", "--out", str(cert_file)]) == 0
    cert = json.loads(cert_file.read_text())
    assert len(cert["certificate"]["radius"]) == 5 and cert["certified_accuracy"][0] >= cert["certified_accuracy"][1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--dataset", "imagenet", "--arch", "mlp", "--out", "x"], "unknown dataset 'imagenet'"),
        (["train", "--dataset", "digits", "--arch", "vgg", "--out", "x"], "unknown architecture 'vgg'"),
        (["train", "--dataset", "digits", "--arch", "mlp", "--out", "x", "--adversary", "pgd"], "needs --eps"),
        (["evaluate", "--model", "does-not-exist"], "no model at does-not-exist"),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_eps_for_the_norm_is_refused_before_any_attack(tmp_path, capsys):
    model = tmp_path / "m"
    main(["train", "--dataset", "digits", "--arch", "mlp", "--epochs", "1", "--out", str(model), "--no-progress"])
    assert main(["evaluate", "--model", str(model), "--eps", "1.5", "--out", str(tmp_path / "e")]) == 2
    assert "larger than the input range" in capsys.readouterr().err
    assert not (tmp_path / "e" / "report.json").exists()


def test_evaluate_a_defended_model_adaptively(tmp_path, capsys):
    import robustlab as rl
    from robustlab.defenses.transforms import Threshold

    model_dir = tmp_path / "digits-mlp"
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--epochs", "3", "--out", str(model_dir),
                 "--no-progress"]) == 0
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(model_dir), "--defense", "threshold:0.5", "--attack", "pgd", "--eps", "0.3",
                 "--n", "60", "--no-checks", "--out", str(out), "--no-progress", "--no-html"]) == 0
    report = json.loads((out / "report.json").read_text())["models"][0]
    assert report["name"] == "digits-mlp+threshold:0.5"
    # Clean accuracy is the defended model's own; PGD through BPDA beats PGD on the raw gradient (zero).
    test = rl.data.load("digits", "test")
    x, y = test.images[:60], test.labels[:60]
    guarded = Threshold(rl.models.load(model_dir), 0.5).eval()
    with torch.no_grad():
        clean = float((guarded(x).argmax(1) == y).float().mean())
    assert report["clean"]["value"] == pytest.approx(clean)
    plain = rl.attacks.PGD(rl.ThreatModel("linf", 0.3), steps=40).attack(guarded, x, y).robust_accuracy
    bpda = report["threats"][0]["rows"][0]["attacks"][0]["robust"]["value"]
    assert plain > clean - 0.1 and bpda < plain - 0.2  # plain PGD: only its random start moves anything
    for spec, message in [("gamma:2", "unknown defense 'gamma'; expected one of bit-depth, threshold"),
                          ("median:x", "defense median: k must be an integer, got 'x'"),
                          ("threshold:1.5", "t must be a threshold in (0, 1)")]:
        assert main(["evaluate", "--model", str(model_dir), "--defense", spec, "--out", str(tmp_path / "e")]) == 2
        assert message in capsys.readouterr().err
