"""``robustlab demo --quick`` end to end on real MNIST (slow: about 40 s; needs MNIST offline)."""

from __future__ import annotations

import json

import pytest

import robustlab as rl


@pytest.mark.slow
def test_quick_demo_trains_evaluates_and_writes_a_trusted_report(tmp_path, capsys):
    from robustlab.cli import main

    try:
        rl.data.load("mnist", "test")
    except (OSError, ValueError) as exc:  # no offline copy on this machine
        pytest.skip(f"MNIST not available offline: {exc}")
    out, models = tmp_path / "demo", tmp_path / "models"
    assert main(["demo", "--quick", "--n", "60", "--out", str(out), "--models", str(models), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    names = [m["name"] for m in report["models"]]
    assert names == ["mnist-standard", "mnist-robust", "mnist-noise"]
    (out / "index.html").read_text().index("mnist-robust")
    by = {m["name"]: m for m in report["models"]}
    worst = {n: by[n]["threats"][0]["rows"][-1]["worst_case"]["value"] for n in names}  # linf eps 0.3
    assert worst["mnist-robust"] > worst["mnist-standard"] + 0.3  # adversarial training works
    assert by["mnist-noise"]["certificates"], "the noise model is certified"
    # a second run reuses the cached models
    assert main(["demo", "--quick", "--n", "60", "--out", str(out), "--models", str(models), "--no-progress"]) == 0
    assert "reusing" in capsys.readouterr().out
