"""Bound-based certifiers in evaluation suites: both ends of the robustness interval."""

from __future__ import annotations

import pytest
import torch

import robustlab as rl


@pytest.mark.slow
def test_crown_certifier_gives_the_lower_end_of_the_robustness_interval(digits_train, digits_test, tmp_path) -> None:
    model = rl.models.create("mlp", dataset="digits", seed=0)
    rl.training.train(model, digits_train, epochs=3, batch_size=64, lr=3e-3, progress=False, seed=0)
    model.eval()
    suite = rl.evaluate.Suite(
        "verify", (rl.evaluate.Threat("linf", (0.05, 0.1)),), ("fgsm",), minimal=("deepfool",),
        certifiers=(rl.evaluate.CertifierSpec("crown", {"eps": 0.2, "search_steps": 6}),), checks=False, exemplars=0)
    report = rl.evaluate.run(model, digits_test, suite, n=24, progress=False, out=tmp_path, html=False)
    threat = report.models[0].threats[0] if hasattr(report, "models") else report.threats[0]
    lower = torch.tensor(threat.per_sample_lower, dtype=torch.float64)
    upper = torch.tensor([float("inf") if v is None else v for v in threat.per_sample_upper], dtype=torch.float64)
    assert bool((lower <= upper + 1e-6).all())
    assert bool((lower > 0).any()) and "crown" in " ".join(threat.lower_from)


@pytest.mark.parametrize("options, message", [({"eps": 2.0}, "larger than the input range"),
                                              ({"search_steps": -1}, "search_steps")])
def test_bad_certifier_options_are_refused(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        rl.evaluate.Suite("s", certifiers=(rl.evaluate.CertifierSpec("crown", options),))
