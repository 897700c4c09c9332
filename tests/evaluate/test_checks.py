"""The gradient-masking checks flag deliberately masked models and pass an honest one."""

from __future__ import annotations

import dataclasses

import pytest
import torch

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


# The saturated softmax zeroes the cross-entropy's gradient but not the CW margin's (the logits are only
# scaled), so the traced margin rises: its warnings are the zero gradient and the stuck unbounded attack.
# Quantisation zeroes every gradient, the margin's too: its traced margin stays flat.
@pytest.mark.parametrize("masked, warned", [("saturated", {"zero-gradients", "unbounded"}),
                                            ("quantized", {"zero-gradients", "loss-path"})])
def test_masked_models_are_flagged(masked, warned, request, digits_test, small_suite):
    model = request.getfixturevalue(masked)
    report = rl.evaluate.run(model, digits_test, small_suite, n=32, progress=False, name=masked)
    m, st = report.models[0], _statuses(report)
    assert not m.verdict.trusted
    assert all(st[name] == "warn" for name in warned), st
    assert warned <= set(m.verdict.warnings)
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


# -- each check: a model (or an outcome) that must fail it and one that must pass it ------------------


def _stronger(base_robust, robust, both_robust, n=100):
    return {"attack": "pgd", "worst_attack": "pgd", "eps": 0.1, "n": n, "base_robust": base_robust,
            "attack_robust": base_robust, "robust": robust, "both_robust": both_robust, "steps": 20, "restarts": 2,
            "base_steps": 10, "base_restarts": 1}


def test_more_steps_judges_the_union_not_the_net_change():
    # The stronger attack breaks 6 images the suite could not, and misses 6 the suite broke: its own
    # robust count equals the suite's (a net change of 0, which the old check passed), but 6 of 100
    # images robust to the suite fall to it.
    f = checks.check_stronger(_stronger(base_robust=50, robust=50, both_robust=44))
    assert f.status == "warn" and "breaks 6" in f.evidence and f.values["newly_broken"] == 6
    assert checks.check_stronger(_stronger(base_robust=50, robust=44, both_robust=44)).status == "warn"
    assert checks.check_stronger(_stronger(base_robust=50, robust=45, both_robust=49)).status == "pass"  # 1 image
    assert checks.check_stronger({"skipped": "no steps"}).status == "skip"


def test_more_steps_warns_on_an_unconverged_suite_and_names_the_attack(digits_model, digits_test):
    weak = rl.evaluate.Suite("weak", (rl.evaluate.Threat("linf", (0.05, 0.1, 0.2)),), ("pgd",),
                             {"pgd": {"steps": 1, "step_size": 0.05}}, checks=rl.evaluate.Checks(n=32, path_steps=8),
                             exemplars=0)
    report = rl.evaluate.run(digits_model, digits_test, weak, n=32, progress=False, name="weak")
    f = next(f for f in report.models[0].checks if f.name == "more-steps")
    assert f.status == "warn" and f.evidence.startswith("probed pgd") and f.norm == "linf", f.evidence


def test_unbounded_runs_without_random_start(honest, saturated, digits_test, small_suite):
    f = next(f for f in honest.models[0].checks if f.name == "unbounded")
    assert f.status == "pass" and "no random start" in f.evidence and f.values["robust"] <= checks.UNBOUNDED_MAX
    # zero gradients: from the clean image the attack cannot move, so ~100% stay "robust"
    report = rl.evaluate.run(saturated, digits_test, small_suite, n=32, progress=False, name="saturated")
    f = next(f for f in report.models[0].checks if f.name == "unbounded")
    assert f.status == "warn" and f.values["robust"] > 0.5, f.evidence


def test_loss_path_needs_a_sustained_rise_a_random_walk_fails():
    g = torch.Generator().manual_seed(0)
    walk = 2.0 + (0.15 + torch.randn(21, 400, generator=g)).cumsum(dim=0)  # 20 steps, a slight upward drift
    walk = torch.cat([torch.full((1, 400), 2.0), walk[1:]])
    stats = checks.path_stats(walk)
    assert stats["increased"] >= 0.9  # the old criterion (a rise at any step) passed a random walk
    f = checks.check_path({"steps": 20, "eps": 0.1, "n": 400, **stats})
    assert f.status == "warn" and stats["sustained"] < checks.PATH_MIN_INCREASED
    rising = torch.linspace(0, 1, 21).unsqueeze(1) * torch.rand(1, 50, generator=g) + 1.0 + 0.01 * torch.rand(21, 50, generator=g)
    good = checks.path_stats(rising)
    assert good["sustained"] == 1.0 and good["trend"] > 0.8
    assert checks.check_path({"steps": 20, "eps": 0.1, "n": 50, **good}).status == "pass"
    flat = checks.path_stats(torch.ones(21, 10))
    assert flat["sustained"] == 0.0 and flat["trend"] == 0.0


def test_single_step_beating_iterative_is_flagged(honest, misleading, digits_test, small_suite):
    assert _statuses(honest)["single-step"] == "pass"
    report = rl.evaluate.run(misleading, digits_test, small_suite, n=32, progress=False, name="misleading")
    m = report.models[0]
    f = next(f for f in m.checks if f.name == "single-step")
    assert f.status == "warn" and f.values["max_images"] > 1, f.evidence
    assert not m.verdict.trusted and "single-step" in m.verdict.warnings
    # the model is the honest one underneath: FGSM's numbers equal the honest model's
    assert [r.attacks[0].robust.k for r in m.threats[0].rows] == [r.attacks[0].robust.k for r in honest.models[0].threats[0].rows]
    synthetic = {"attack": "pgd", "per_eps": [[0.1, 1, 5, 100], [0.2, 3, 20, 100]]}
    assert checks.check_single_step(synthetic).status == "warn"
    assert checks.check_single_step({"attack": "pgd", "per_eps": [[0.1, 1, 5, 100]]}).status == "pass"


def test_checks_run_per_threat_model(digits_model, saturated, digits_test, small_suite):
    # The honest suite must be converged at both norms: PGD-50 with one start left 1-2 of 16 images
    # that 100 steps x 2 restarts break (which one depends on the CPU's float rounding), so it gets
    # three restarts; the stronger probe then breaks none on either thread count.
    two = dataclasses.replace(small_suite, threats=(rl.evaluate.Threat("linf", (0.05, 0.1, 0.2)),
                                                    rl.evaluate.Threat("l2", (0.5, 1.0))),
                              attack_options={"pgd": {"steps": 50, "restarts": 3}}, checks=dataclasses.replace(small_suite.checks, n=16))
    for model, trusted in ((digits_model, True), (saturated, False)):
        m = rl.evaluate.run(model, digits_test, two, n=24, progress=False, name="m").models[0]
        norms = [f.norm for f in m.checks]
        for norm in ("linf", "l2"):
            own = {f.name for f in m.checks if f.norm == norm}
            assert {"monotone-eps", "unbounded", "more-steps", "single-step", "noise-vs-attack", "loss-path"} <= own
        assert {f.name for f in m.checks if f.norm is None} == {"zero-gradients", "deterministic"}
        assert norms.count(None) == 2
        for t in m.threats:
            assert t.verdict is not None and t.verdict.trusted is trusted, (t.norm, t.verdict.summary)
        assert m.verdict.trusted is trusted
        if not trusted:  # each threat model's own probes warn, not only the first one's (the loss path
            # traces the CW margin, which a saturated softmax does not flatten: the unbounded probe and
            # the black-box baseline are the per-norm checks that see this model)
            for name in ("unbounded", "noise-vs-attack"):
                assert {f.norm for f in m.checks if f.status == "warn" and f.name == name} == {"linf", "l2"}, name


def test_black_box_uses_square_when_registered_and_noise_otherwise(saturated, digits_model, digits_test, small_suite,
                                                                   monkeypatch):
    from robustlab.attacks import registry

    suite = dataclasses.replace(small_suite, checks=dataclasses.replace(small_suite.checks, n=8))
    if "square" in registry.available():
        m = rl.evaluate.run(saturated, digits_test, suite, n=32, progress=False, name="s").models[0]
        f = next(f for f in m.checks if f.name == "noise-vs-attack")
        # Square only reads the scores, so the saturated softmax cannot hide the adversarial examples
        assert m.threats[0].black_box == "square" and "square" in f.evidence and f.status == "warn", f.evidence
        h = rl.evaluate.run(digits_model, digits_test, suite, n=32, progress=False, name="h").models[0]
        assert next(f for f in h.checks if f.name == "noise-vs-attack").status == "pass"
        monkeypatch.setattr(registry, "ATTACKS", registry.ATTACKS.without("square"))
    m = rl.evaluate.run(saturated, digits_test, suite, n=32, progress=False, name="s").models[0]
    f = next(f for f in m.checks if f.name == "noise-vs-attack")
    assert m.threats[0].black_box == "random noise" and "random noise" in f.evidence
