"""A small two-model report on digits (an honest model and a masked copy, with transfer between
them and a smoothing certificate), shared by the report and browser tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustlab as rl


class Saturated(nn.Module):
    """Logits x 1e4: a saturated softmax, zero cross-entropy gradients (a masked model)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * 1e4


@pytest.fixture(scope="session")
def two_model_report(digits_model, digits_test, tmp_path_factory):
    masked = Saturated(digits_model).eval()
    base = rl.evaluate.Suite(
        "tiny", (rl.evaluate.Threat("linf", (0.05, 0.1, 0.2)),), ("fgsm", "pgd"), {"pgd": {"steps": 8}},
        checks=rl.evaluate.Checks(n=16, path_steps=4), exemplars=3, transfer_eps=(0.1,))
    import dataclasses

    honest_suite = dataclasses.replace(base, transfer={"masked": masked}, certifiers=(
        rl.evaluate.CertifierSpec("smoothing", {"sigma": 0.25, "n0": 10, "n": 100}),))
    masked_suite = dataclasses.replace(base, transfer={"honest": digits_model})
    a = rl.evaluate.run(digits_model, digits_test, honest_suite, n=32, batch_size=16, progress=False, name="honest")
    b = rl.evaluate.run(masked, digits_test, masked_suite, n=32, batch_size=16, progress=False, name="masked")
    report = rl.report.report([a.models[0], b.models[0]], "test report", notes=["A tiny test report."])
    out = tmp_path_factory.mktemp("report")
    report.save(out)
    return report, out
