"""robustlab verify: prints verified accuracy with its interval and writes per-image JSON."""

from __future__ import annotations

import json

import pytest

import robustlab as rl
from robustlab.cli import main


@pytest.fixture()
def saved_mlp(tmp_path):
    path = tmp_path / "mlp"
    rl.models.save(rl.models.create("mlp", dataset="digits", seed=0), path, metadata={"dataset": "digits"})
    return path


@pytest.mark.parametrize("method", ["crown", "milp"])
def test_verify_at_zero_eps_verifies_exactly_the_correct_images(saved_mlp, tmp_path, capsys, method) -> None:
    out = tmp_path / "v.json"
    rc = main(["verify", "--model", str(saved_mlp), "--eps", "0", "--method", method, "--n", "12", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "verified accuracy" in text and "95% CI" in text
    payload = json.loads(out.read_text())
    assert payload["n"] == 12 and len(payload["per_image"]) == 12
    assert all(r["verified"] == r["correct"] for r in payload["per_image"])
    lo, hi = payload["verified_accuracy_ci95"]
    assert lo <= payload["verified_accuracy"] <= hi


def test_verify_refuses_milp_with_l2(saved_mlp, capsys) -> None:
    rc = main(["verify", "--model", str(saved_mlp), "--eps", "0.1", "--method", "milp", "--norm", "l2"])
    assert rc == 2 and "linf" in capsys.readouterr().err
