"""The gradient-masking checks flag deliberately masked models and pass an honest one."""

from __future__ import annotations

import dataclasses

import pytest

import robustlab as rl
from robustlab.evaluate import checks
from robustlab.evaluate.metrics import rate_counts


def _statuses(report) -> dict[str, str]:
    return {f.name: f.status for f in report.models[0].checks}


@pytest.fixture(scope="module")
def honest(digits_model, digits_test, small_suite):
    return rl.evaluate.run(digits_model, digits_test, small_suite, n=32, progress=False, name="honest")


def test_honest_model_is_trusted(honest):
    m = honest.models[0]
    st = _statuses(honest)
    assert m.verdict.trusted, m.verdict.summary
    assert "warn" not in st.values()
    for name in ("unbounded", "more-steps", "noise-vs-attack", "loss-path", "zero-gradients", "deterministic"):
        assert st[name] == "pass", (name, [f.evidence for f in m.checks if f.name == name])
    assert st["transfer-vs-white-box"] == "skip"  # no transfer source in this suite
    assert all(f.doc == f"#check-{f.name}" and f.name in checks.CHECKS for f in m.checks)


@pytest.mark.parametrize("masked", ["saturated", "quantized"])
def test_masked_models_are_flagged(masked, request, digits_test, small_suite):
    model = request.getfixturevalue(masked)
    report = rl.evaluate.run(model, digits_test, small_suite, n=32, progress=False, name=masked)
    m, st = report.models[0], _statuses(report)
    assert not m.verdict.trusted
    assert st["zero-gradients"] == "warn" and st["loss-path"] == "warn"
    assert {"zero-gradients", "loss-path"} <= set(m.verdict.warnings)
    # The attacks are fooled: PGD "robust accuracy" far above the honest model's at the largest eps.
    pgd = m.threats[0].rows[-1].attacks[1]
    assert pgd.attack == "pgd" and pgd.robust.value > 0.3


def test_transfer_from_an_honest_model_exposes_a_masked_one(saturated, digits_model, digits_test, small_suite):
    suite = dataclasses.replace(small_suite, transfer={"honest": digits_model}, transfer_eps=(0.2,),
                                checks=dataclasses.replace(small_suite.checks, n=16))
    report = rl.evaluate.run(saturated, digits_test, suite, n=32, progress=False, name="masked")
    m = report.models[0]
    finding = next(f for f in m.checks if f.name == "transfer-vs-white-box")
    assert finding.status == "warn" and "eps 0.2" in finding.evidence
    row = m.threats[0].rows[-1]
    assert row.transfer["honest"].value < row.white_box.value  # transfer is stronger than white-box here
    assert row.worst_case.value <= row.transfer["honest"].value  # and it enters the worst case
    assert "transfer" not in m.threats[0].rows[0].__dict__["transfer"]  # only at the eps asked for


def _rates(values, n=100):
    return [rate_counts(round(v * n), n) for v in values]


def test_monotone_check_warn_note_and_pass():
    eps = [0.1, 0.2, 0.3]
    ok = checks.check_monotone(eps, {"pgd": _rates([0.8, 0.5, 0.1])}, "linf", _rates([0.8, 0.5, 0.1]))
    assert ok.status == "pass"
    fgsm_up = {"fgsm": _rates([0.8, 0.6, 0.7]), "pgd": _rates([0.7, 0.4, 0.05])}
    note = checks.check_monotone(eps, fgsm_up, "linf", _rates([0.7, 0.4, 0.05]))
    assert note.status == "note" and "fgsm" in note.evidence and note.passed
    warn = checks.check_monotone(eps, fgsm_up, "linf", _rates([0.7, 0.4, 0.5]))
    assert warn.status == "warn" and not warn.passed
    assert checks.check_monotone([0.1], {"pgd": _rates([0.5])}, "linf").status == "skip"
    # one image of noise is tolerated
    assert checks.check_monotone(eps, {"pgd": _rates([0.5, 0.51, 0.1])}, "linf").status == "pass"


def test_black_box_threshold_and_verdict():
    assert checks.check_black_box("noise-vs-attack", "random noise", [(0.1, 1, 1000)]).status == "pass"
    assert checks.check_black_box("noise-vs-attack", "random noise", [(0.1, 2, 100)]).status == "warn"
    assert checks.check_black_box("transfer-vs-white-box", "transfer", []).status == "skip"
    found = [checks.check_black_box("noise-vs-attack", "random noise", [(0.1, 0, 100)])]
    assert checks.verdict(found).trusted
    found.append(checks.check_gradients({"n": 10, "zero": 10, "zero_fraction": 1.0, "zero_entries": 1.0}))
    v = checks.verdict(found)
    assert not v.trusted and v.warnings == ["zero-gradients"]
    assert not checks.verdict([]).trusted
