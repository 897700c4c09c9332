"""Writes tests/report/data/two_models.json: the fixed two-model report the report tests render
(an honest digits model and a saturated copy, transfer between them, a smoothing certificate).

The report tests never run an evaluation; after a schema change, regenerate the file with
``python tests/report/make_fixture.py`` (about a minute on a CPU).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

import robustlab as rl

OUT = Path(__file__).parent / "data" / "two_models.json"


class Saturated(nn.Module):
    """Logits x 1e4: a saturated softmax, zero cross-entropy gradients (a masked model)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * 1e4


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import DigitsNet, _train  # the digits_model fixture's recipe

    train, test = rl.data.load("digits", split="train"), rl.data.load("digits", split="test")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        honest = _train(DigitsNet(), train.images, train.labels, epochs=15, seed=0)
    masked = Saturated(honest).eval()
    base = rl.evaluate.Suite(
        "tiny", (rl.evaluate.Threat("linf", (0.05, 0.1, 0.2)),), ("fgsm", "pgd"), {"pgd": {"steps": 8}},
        checks=rl.evaluate.Checks(n=16, path_steps=4), exemplars=3, transfer_eps=(0.1,))
    honest_suite = dataclasses.replace(base, transfer={"masked": masked}, certifiers=(
        rl.evaluate.CertifierSpec("smoothing", {"sigma": 0.25, "n0": 10, "n": 100}),))
    masked_suite = dataclasses.replace(base, transfer={"honest": honest})
    a = rl.evaluate.run(honest, test, honest_suite, n=32, batch_size=16, progress=False, name="honest")
    b = rl.evaluate.run(masked, test, masked_suite, n=32, batch_size=16, progress=False, name="masked")
    report = rl.report.report([a.models[0], b.models[0]], "test report", notes=["A tiny test report."])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    report.save(OUT.parent, html=False)
    (OUT.parent / "report.json").rename(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
