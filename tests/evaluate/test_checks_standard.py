"""Every gradient-masking check can fire on the `standard` suite: for each check, a model built to fool
it must make it warn, and the honest digits model must pass it (issue 20).

Before issue 20, `standard`'s Square member counted as white box, so the black-box check compared a
200-query Square against a union that already held a 1,000-query Square and could not warn (the
shattered model below came out with the check passing); the "more steps" probe strengthened PGD, not
the attacks the number rests on; the loss path traced the cross-entropy, which is exactly 0 in float32
for a confident image; determinism used an absolute tolerance.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import robustlab as rl
from robustlab.evaluate import checks
from robustlab.losses import cross_entropy

from masked_models import Annulus, Jittery, Noisy, Scaled, Shattered

EPS = (0.05, 0.1, 0.2)
N = 24


def _standard(eps=EPS, **kw) -> rl.evaluate.Suite:
    return dataclasses.replace(rl.evaluate.preset("standard", eps=eps), exemplars=0, **kw)


def _run(model, data, n: int = N, eps=EPS, **kw):
    return rl.evaluate.run(model.eval(), data, _standard(eps, **kw), n=n, progress=False).models[0]


def _findings(m) -> dict:
    return {f.name: f for f in m.checks}


@pytest.fixture(scope="module")
def honest_standard(digits_model, digits_test):
    return _run(digits_model, digits_test, transfer={"itself": digits_model}, transfer_eps=(0.1,))


@pytest.fixture(scope="module")
def shattered_standard(digits_model, digits_test):
    # The probes (standard x2 above all) on 8 images only: the black-box and transfer checks read the records
    # of all 16, and the probes' own checks are not what this model is built to fool.
    return _run(Shattered(digits_model), digits_test, n=16, eps=(0.1, 0.2), transfer={"honest": digits_model},
                transfer_eps=(0.1,), checks=rl.evaluate.Checks(n=8, path_steps=8))


@pytest.mark.slow
def test_the_honest_model_passes_every_check_on_standard(honest_standard):
    m = honest_standard
    f = _findings(m)
    assert m.verdict.trusted, m.verdict.summary
    for name in ("monotone-eps", "unbounded", "single-step", "noise-vs-attack", "transfer-vs-white-box", "loss-path",
                 "zero-gradients", "deterministic"):
        assert f[name].status == "pass", (name, f[name].evidence)
    # more steps: it probes the attack the number rests on, standard itself, strengthened
    assert f["more-steps"].status == "pass", f["more-steps"].evidence
    assert f["more-steps"].values["attack"] == "standard" and f["more-steps"].values["probe"] == "standard x2"
    assert "APGDT 200 steps x 2 restart(s) over every other class" in f["more-steps"].evidence
    assert "Square 2000 queries" in f["more-steps"].evidence
    assert m.threats[0].black_box_members == ["standard: Square"]
    assert m.verdict.uninformative == []


def test_a_shattered_gradient_is_caught_by_the_black_box_check(shattered_standard):
    m = shattered_standard
    f = _findings(m)
    assert not m.verdict.trusted and "noise-vs-attack" in m.verdict.warnings, m.verdict.summary
    bb = f["noise-vs-attack"]
    assert bb.status == "warn" and "standard: Square" in bb.evidence and "(images " in bb.evidence, bb.evidence
    assert m.threats[0].black_box_members == ["standard: Square"]
    # The white-box row leaves Square out: the gradient members alone leave images robust that the
    # worst case (with Square) breaks.
    assert any(row.white_box.value > row.worst_case.value for row in m.threats[0].rows)
    # Transfer from the honest model beats the gradient attacks too.
    assert f["transfer-vs-white-box"].status == "warn", f["transfer-vs-white-box"].evidence


@pytest.mark.slow
def test_the_white_box_row_of_an_honest_model_is_its_worst_case(honest_standard):
    assert all(row.white_box.value == row.worst_case.value for row in honest_standard.threats[0].rows)


@pytest.mark.slow
def test_a_model_robust_only_to_large_perturbations_fails_monotone(digits_model, digits_test):
    m = _run(Annulus(digits_model, digits_test.images[:N]), digits_test)
    f = _findings(m)
    assert f["monotone-eps"].status == "warn" and "union of all attacks rises" in f["monotone-eps"].evidence
    assert "monotone-eps" in m.verdict.warnings


@pytest.mark.slow
def test_more_steps_catches_an_unconverged_standard(digits_model, digits_test):
    # In l1, `standard` has no Square (linf and l2 only): against a shattered gradient its gradient members
    # are a random search, and twice the steps and restarts (standard x2) break images it left robust.
    l1 = dataclasses.replace(rl.evaluate.preset("standard", norm="l1", eps=(1.0, 2.0, 4.0)), exemplars=0)
    shattered = rl.evaluate.run(Shattered(digits_model).eval(), digits_test, l1, n=32, progress=False).models[0]
    f = _findings(shattered)["more-steps"]
    assert f.status == "warn" and f.values["probe"] == "standard x2" and f.values["newly_broken"] >= 3, f.evidence
    honest = rl.evaluate.run(digits_model, digits_test, l1, n=32, progress=False).models[0]
    g = _findings(honest)["more-steps"]
    assert g.status == "pass" and g.values["newly_broken"] <= 1, g.evidence


@pytest.mark.slow
@pytest.mark.parametrize("masked, warned", [("saturated", {"zero-gradients", "unbounded"}),
                                            ("quantized", {"zero-gradients", "loss-path"}),
                                            ("misleading", {"single-step"})])
def test_masked_models_warn_on_standard(masked, warned, request, digits_test):
    m = _run(request.getfixturevalue(masked), digits_test, n=16)
    f = _findings(m)
    assert not m.verdict.trusted
    assert {name for name in warned if f[name].status == "warn"} == warned, {n: f[n].evidence for n in warned}


# The loss path and determinism probes do not depend on the suite's attacks (only the traced eps does),
# so these run with the cheap `quick` suite; the slow tests above run them on `standard` too.
def _quick(model, data, n: int):
    suite = dataclasses.replace(rl.evaluate.preset("quick", eps=EPS), exemplars=0)
    return rl.evaluate.run(model.eval(), data, suite, n=n, progress=False).models[0]


def test_the_loss_path_of_a_confident_honest_model_rises(digits_model, digits_test):
    # Logit gaps of hundreds: the float32 cross-entropy is exactly 0 at the clean images (and its trace
    # would be flat) while the gradient is not; the CW margin rises along the path.
    confident = Scaled(digits_model, 30.0).eval()
    x, y = digits_test.images[:16], digits_test.labels[:16]
    with torch.no_grad():
        assert float((cross_entropy(confident(x), y) == 0).float().mean()) > 0.5
    m = _quick(confident, digits_test, n=16)
    f = _findings(m)["loss-path"]
    assert f.status == "pass" and "CW margin" in f.evidence, f.evidence


def test_determinism_is_judged_relative_to_the_logits(digits_model, digits_test):
    jittery = _findings(_quick(Jittery(digits_model), digits_test, n=8))["deterministic"]
    assert jittery.status == "pass" and jittery.values["max_abs_diff"] > 1e-4, jittery.evidence  # absolute 1e-4 failed
    noisy = _findings(_quick(Noisy(digits_model), digits_test, n=8))["deterministic"]
    assert noisy.status == "warn", noisy.evidence


def test_a_check_that_cannot_fire_is_listed_not_counted(digits_model, digits_test):
    # At eps 0.4 and 0.5 every digit is broken by every attack: nothing is left for a stronger attack or
    # black-box search to find, so those checks say why they are not informative, and the verdict lists
    # them instead of counting them as passed.
    suite = dataclasses.replace(rl.evaluate.preset("standard", eps=(0.4, 0.5)), exemplars=0)
    m = rl.evaluate.run(digits_model, digits_test, suite, n=12, progress=False).models[0]
    f = _findings(m)
    for name in ("more-steps", "noise-vs-attack", "single-step"):
        assert f[name].status == "skip", (name, f[name].evidence)
    assert "too few" in f["more-steps"].evidence and "nothing left" in f["noise-vs-attack"].evidence
    assert {"more-steps", "noise-vs-attack", "single-step"} <= set(m.verdict.uninformative)
    assert "Not informative on this run" in m.verdict.summary and "more-steps" in m.verdict.summary
    n_informative = sum(1 for x in m.checks if x.status != "skip")
    assert f"All {n_informative} informative" in m.verdict.summary


@pytest.mark.parametrize("attack, norm, eps", [pytest.param("standard", "linf", (0.1, 0.2), marks=pytest.mark.slow),
                                               ("square", "linf", (0.1, 0.2)),
                                               ("nattack", "linf", (0.1, 0.2)), ("onepixel", "l0", (2.0, 4.0))])
def test_any_registry_attack_can_be_the_check_attack(attack, norm, eps, digits_model, digits_test):
    suite = rl.evaluate.Suite("t", (rl.evaluate.Threat(norm, eps),), ("fgsm", "pgd") if norm != "l0" else ("pgd",),
                              {"pgd": {"steps": 5}}, checks=rl.evaluate.Checks(n=6, attack=attack, path_steps=3),
                              exemplars=0)
    m = rl.evaluate.run(digits_model, digits_test, suite, n=6, progress=False).models[0]
    f = _findings(m)
    assert f["unbounded"].values["attack"] == attack
    if attack != "standard":  # not an iterative gradient attack: FGSM has nothing to be compared with
        assert f["single-step"].status == "skip" and "not an iterative gradient attack" in f["single-step"].evidence


def test_a_check_attack_that_cannot_run_for_a_norm_is_refused_up_front():
    with pytest.raises(ValueError, match="checks.attack 'onepixel' cannot run for the linf threat model"):
        rl.evaluate.Suite("t", (rl.evaluate.Threat("linf", (0.1,)),), ("pgd",), checks=rl.evaluate.Checks(attack="onepixel"))


@pytest.mark.parametrize("transfer_attack", ["apgd-ce", "fgsm"])
def test_transfer_attacks_without_early_stop_run(transfer_attack, digits_model, digits_test):
    suite = rl.evaluate.Suite("t", (rl.evaluate.Threat("linf", (0.1,)),), ("fgsm",), transfer={"self": digits_model},
                              transfer_attack=transfer_attack, checks=rl.evaluate.Checks(n=4, path_steps=3), exemplars=0)
    m = rl.evaluate.run(digits_model, digits_test, suite, n=6, progress=False).models[0]
    assert "self" in m.threats[0].rows[0].transfer


def test_check_functions_on_synthetic_outcomes():
    # more steps: judged on the images robust to the whole suite; too few of them: not informative
    base = {"attack": "standard", "worst_attack": "standard", "eps": 0.1, "n": 100, "base_robust": 40,
            "budget": "x", "base_budget": "y"}
    assert checks.check_stronger({**base, "newly_broken": 6, "images": [1, 2, 3, 4, 5, 6]}).status == "warn"
    assert checks.check_stronger({**base, "newly_broken": 1}).status == "pass"
    assert checks.check_stronger({**base, "base_robust": 2, "skipped": "only 2 ... too few"}).status == "skip"
    # black box: the suite's own query-based members count; nothing robust to the gradients: skip
    rows = [(0.1, 3, 100, {"white_robust": 30, "sources": {"square (baseline)": 0, "standard: Square": 3},
                           "indices": [4, 5, 6]})]
    warn = checks.check_black_box("noise-vs-attack", "square and standard: Square", rows)
    assert warn.status == "warn" and "standard: Square: 3" in warn.evidence and "images 4, 5, 6" in warn.evidence
    none_left = [(0.1, 0, 100, {"white_robust": 1})]
    assert checks.check_black_box("noise-vs-attack", "square", none_left).status == "skip"
    # determinism: relative to the largest logit
    big = {"max_abs_diff": 0.05, "max_abs_logit": 1e4, "same_predictions": True}
    assert checks.check_deterministic(big).status == "pass"
    assert checks.check_deterministic({**big, "max_abs_logit": 10.0}).status == "warn"
    assert checks.check_deterministic({**big, "same_predictions": False}).status == "warn"
