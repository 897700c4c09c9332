"""Randomized smoothing: bounds that hold their level (fixed and adaptive sample sizes), radii
that never exceed the truth, attacks that cannot break a certificate, batched and seeded sampling,
strict arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as st
from torch import nn

import robustlab as rl
from robustlab.certificates import Certificate, certified_accuracy
from robustlab.training.adversaries import GaussianNoise
from robustlab.defenses.smoothing import (
    Smoothed,
    min_samples_to_certify,
    min_samples_to_predict,
    min_samples_two_class,
    predict_pvalue,
    two_class_radius,
)
from robustlab.defenses.smoothing_adaptive import AdaptivePlan, samples_to_reach
from robustlab.training.loop import train
from robustlab.stats import clopper_pearson


class Hyperplane(nn.Module):
    """Two-class linear classifier, logits ``[0, w.x + b]``. Under ``N(0, sigma^2 I)`` noise class 1
    has probability exactly ``Phi(d / sigma)``, ``d = (w.x + b) / ||w||`` the signed distance to the
    decision boundary, so the smoothed classifier's exact certified radius is ``|d|``."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.flatten().clone())
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) @ self.w.detach() + self.b) / self.w.detach().norm()


def _tolerance(alpha: float, trials: int) -> float:
    """alpha plus three binomial standard errors: the Monte Carlo slack of a coverage check."""
    return alpha + 3.0 * math.sqrt(alpha * (1 - alpha) / trials)


@pytest.fixture(scope="module")
def noisy_digits_model(digits_train):
    """A small MLP trained on digits with Gaussian noise sigma = 0.25 (Cohen et al.'s recipe)."""
    model = rl.models.create("mlp", "digits", seed=0)
    train(model, digits_train, epochs=10, adversary=GaussianNoise(0.25), progress=False, seed=0)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Exact geometry: a linear classifier


def test_linear_classifier_never_certifies_more_than_the_distance_and_approaches_it():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=g, dtype=torch.float64)
    model = Hyperplane(w, -0.3).double()
    x = torch.rand(10, 1, 4, 4, generator=g, dtype=torch.float64)
    d = model.distance(x).abs()
    sm = Smoothed(model, sigma=0.5, batch_size=20_000)
    for cert in (sm.certify(x, n0=64, n=50_000, alpha=0.001), sm.certify_two_class(x, n0=64, n=50_000, alpha=0.001)):
        ok = ~cert.abstain
        assert bool((cert.radius[ok] <= d[ok]).all())  # each fails with probability <= alpha
        clear = d > 0.2  # well inside one half-space: the bound is nearly tight at n = 50000
        assert bool(ok[clear].all()) and bool((cert.radius[clear] >= 0.85 * d[clear]).all())
        assert bool((cert.prediction[ok] == (model.distance(x[ok]) > 0).long()).all())


def test_two_class_radius_matches_the_one_class_radius_for_two_classes():
    """With two classes pB = 1 - pA: the two-class radius at level alpha equals the one-class one
    computed with level alpha/2 (the simultaneous bound costs exactly the split)."""
    k, n = np.array([900, 990, 999]), 1000
    p_low, p_b, r2 = two_class_radius(k, n - k, n, 0.01, 0.5, num_classes=2)
    lo, _ = clopper_pearson(k, n, 0.005, side="lower")
    assert np.allclose(p_low, lo) and np.allclose(p_b, 1 - lo)
    assert np.allclose(r2, 0.5 * st.norm.ppf(lo))


# --------------------------------------------------------------------------------------------
# Coverage: the bounds fail at most alpha of the time


def _copies_at_probability(p_a: float, sigma: float, copies: int) -> tuple[Hyperplane, torch.Tensor]:
    """A 1-pixel hyperplane model and ``copies`` identical inputs with P(class 1) = p_a exactly."""
    d = sigma * st.norm.ppf(p_a)
    model = Hyperplane(torch.ones(1), -0.5 + d)  # at x = 0.5: w.x + b = d, the signed distance
    return model, torch.full((copies, 1, 1, 1), 0.5)


def test_fixed_certify_lower_bound_fails_at_most_alpha_end_to_end():
    """CERTIFY on 4000 independent copies of an input with known pA: pA_lower > pA at most alpha
    of the time (the whole pipeline: selection, batched sampling, counting, Clopper-Pearson)."""
    alpha, copies, sigma, p_a = 0.05, 4000, 0.5, 0.9
    model, x = _copies_at_probability(p_a, sigma, copies)
    cert = Smoothed(model, sigma, batch_size=200_000, seed=1).certify(x, n0=20, n=100, alpha=alpha)
    truth = torch.where(cert.prediction == 1, p_a, 1 - p_a).double()
    failed = (~cert.abstain) & (cert.p_lower > truth)
    assert float(failed.double().mean()) <= _tolerance(alpha, copies)
    assert float(cert.abstain.double().mean()) < 0.05  # and it is not vacuous: almost all certify
    # Same statement in radius form: never above the exact radius d = sigma * Phi^-1(pA).
    too_large = (~cert.abstain) & (cert.radius > sigma * st.norm.ppf(p_a))
    assert float(too_large.double().mean()) <= _tolerance(alpha, copies)


def test_adaptive_certify_lower_bound_fails_at_most_alpha_end_to_end():
    alpha, copies, sigma, p_a = 0.05, 4000, 0.5, 0.9
    model, x = _copies_at_probability(p_a, sigma, copies)
    sm = Smoothed(model, sigma, batch_size=200_000, seed=2)
    cert = sm.certify_adaptive(x, n0=20, n_max=1000, alpha=alpha, radius=[0.0, 0.25, 0.5])
    truth = torch.where(cert.prediction == 1, p_a, 1 - p_a).double()
    failed = (~cert.abstain) & (cert.p_lower > truth)
    assert float(failed.double().mean()) <= _tolerance(alpha, copies)
    assert float(cert.samples.double().mean()) < 0.75 * (1000 + 20)  # it did stop early


@pytest.mark.parametrize("p", [0.55, 0.8, 0.95, 0.995])
def test_adaptive_plan_coverage_on_simulated_binomials(p):
    """The stopping rules and the union bound over looks keep P(reported pA_lower > p) <= alpha.
    The check has power: reporting the best of the same looks, each at the full level alpha
    (peeking without the split), fails far more often than alpha."""
    rng = np.random.default_rng(int(p * 1000))
    alpha, trials, sigma = 0.05, 20_000, 0.25
    plan = AdaptivePlan.build(2000, alpha, sigma, radius=[0.0, 0.25, 0.5, 0.75])
    assert sum(plan.alphas) == pytest.approx(alpha) and len(plan.looks) >= 4
    best, naive = np.zeros(trials), np.zeros(trials)
    k = np.zeros(trials)
    active = np.arange(trials)
    drawn = 0
    for j, look in enumerate(plan.looks):
        k += rng.binomial(look - drawn, p, size=trials)  # every stream goes on (for the naive peeker)
        drawn = look
        naive = np.maximum(naive, clopper_pearson(k, look, alpha, side="lower")[0])
        if active.size:
            bp, _, why = plan.step(k[active], j, best[active])
            best[active] = bp
            active = active[why == 0]
    assert np.mean(best > p) <= _tolerance(alpha, trials)
    if p <= 0.95:
        assert np.mean(naive > p) > 1.5 * alpha


def test_two_class_bounds_hold_simultaneously_on_simulated_multinomials():
    rng = np.random.default_rng(3)
    alpha, trials, n = 0.05, 20_000, 200
    probs = np.array([0.7, 0.2, 0.06, 0.04])
    counts = rng.multinomial(n, probs, size=trials)
    p_low, p_b, _ = two_class_radius(counts[:, 0], counts[:, 1:].max(1), n, alpha, 1.0, num_classes=4)
    failed = (p_low > probs[0]) | (p_b < probs[1:].max())
    assert failed.mean() <= _tolerance(alpha, trials)


def test_predict_is_wrong_at_most_alpha_and_abstains_on_a_coin_flip():
    alpha, copies, sigma = 0.05, 2000, 0.5
    model, x = _copies_at_probability(0.45, sigma, copies)  # g(x) = class 0, but only 55/45
    pred = Smoothed(model, sigma, batch_size=200_000).predict(x, n=200, alpha=alpha)
    assert float((pred == 1).double().mean()) <= _tolerance(alpha, copies)
    assert float((pred == 0).double().mean()) > 0.05  # it does answer sometimes
    coin, xc = _copies_at_probability(0.5, sigma, copies)  # exactly on the boundary
    assert float((Smoothed(coin, sigma, batch_size=200_000).predict(xc, n=200, alpha=alpha) != -1).double().mean()) \
        <= _tolerance(alpha, copies)
    assert predict_pvalue(np.array([10]), np.array([0]))[0] == pytest.approx(2 * 0.5**10)


def test_minimum_sample_sizes_are_exact():
    for alpha in (0.1, 0.05, 0.01, 0.001, 1e-5, 0.125):
        n = min_samples_to_certify(alpha)
        assert alpha ** (1 / n) > 0.5 and (n == 1 or alpha ** (1 / (n - 1)) <= 0.5)
        lo_n, _ = clopper_pearson(n, n, alpha, side="lower")
        assert lo_n > 0.5 and samples_to_reach(0.0, 1.0, alpha) == n
        m = min_samples_to_predict(alpha)
        assert 2 * 0.5**m <= alpha < 2 * 0.5 ** (m - 1)
        t = min_samples_two_class(alpha, 10)
        _, _, r = two_class_radius(np.array([t, t - 1]), np.array([0, 0]), np.array([t, t - 1]), alpha, 1.0, 10)
        assert r[0] > 0 and r[1] < 0
    assert min_samples_to_certify(0.001) == 10


# --------------------------------------------------------------------------------------------
# Sampling: batched across inputs and draws, seeded, bounded, side-effect free


class Recorder(nn.Module):
    """Wraps a model and records the batch size of every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return self.model(x)


def test_one_pass_holds_many_inputs_and_memory_is_bounded(noisy_digits_model, digits_test):
    x = digits_test.images[:10]
    rec = Recorder(noisy_digits_model)
    counts = Smoothed(rec, 0.25, batch_size=1000).sample_counts(x, 100)
    assert counts.shape == (10, 10) and counts.sum(1).tolist() == [100] * 10
    assert rec.sizes[-1:] == [1000]  # 10 inputs x 100 draws in one pass (after the class probe)
    rec.sizes.clear()
    Smoothed(rec, 0.25, batch_size=64, num_classes=10).sample_counts(x, 100)
    assert max(rec.sizes) <= 64 and sum(rec.sizes) == 1000


def test_cpu_pieces_of_a_slice_give_the_same_votes(noisy_digits_model, digits_test, monkeypatch):
    import robustlab.defenses.smoothing as smoothing

    x = digits_test.images[:8]
    whole = Smoothed(noisy_digits_model, 0.5, batch_size=1000).sample_counts(x, 250)
    monkeypatch.setattr(smoothing, "CPU_FORWARD_VALUES", 64 * 100)  # digits: 64 values -> 100 rows per pass
    rec = Recorder(noisy_digits_model)
    pieces = Smoothed(rec, 0.5, batch_size=1000, num_classes=10).sample_counts(x, 250)
    assert max(rec.sizes) == 100 and sum(rec.sizes) == 2000
    assert torch.equal(whole, pieces) and int((whole > 0).sum()) > 8  # the same draws and votes


def test_sampling_is_seeded_and_the_normalize_fast_path_is_exact(noisy_digits_model, digits_test):
    x = digits_test.images[:6]
    a = Smoothed(noisy_digits_model, 1.0, batch_size=256).sample_counts(x, 500, torch.Generator().manual_seed(0))
    b = Smoothed(noisy_digits_model, 1.0, batch_size=256).sample_counts(x, 500, torch.Generator().manual_seed(0))
    wrapped = Recorder(noisy_digits_model)  # not a Normalize: the plain path
    c = Smoothed(wrapped, 1.0, batch_size=256).sample_counts(x, 500, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and torch.equal(a, c)
    assert int((a > 0).sum()) > 6  # sigma = 1 gives mixed votes, so equality is not trivial
    # Module-level streams: the same seed and calls reproduce; consecutive calls draw fresh noise.
    s1, s2 = Smoothed(noisy_digits_model, 1.0, seed=5), Smoothed(noisy_digits_model, 1.0, seed=5)
    first = s1.certify(x, 20, 200)
    assert torch.equal(first.count, s2.certify(x, 20, 200).count)
    assert not torch.equal(first.count, s1.certify(x, 20, 200).count)
    s1.reset_noise()
    assert torch.equal(first.count, s1.certify(x, 20, 200).count)
    assert torch.equal(first.count, s1.certify(x, 20, 200, seed=5).count)  # an explicit seed = a fresh stream
    assert torch.equal(s1.certify(x, 20, 200, seed=9).count, s2.certify(x, 20, 200, seed=9).count)


def test_certify_leaves_the_model_alone(digits_test):
    """A train-mode model with BatchNorm and Dropout: evaluated in eval mode, every module's mode
    restored, no running-stat updates, no parameter gradients, the global RNG untouched."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5),
                              nn.Linear(32, 10))
    model.train()
    model[2].eval()  # a mixed state must come back as it was
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    x = digits_test.images[:4]
    sm = Smoothed(model, 0.25)
    sm.certify(x, 10, 100)
    sm.certify_adaptive(x, 10, 200)
    sm.predict(x, 20)
    assert [m.training for m in model.modules()] == [True, True, True, False, True, True, True]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state())


def test_forward_is_a_differentiable_randomised_surrogate(noisy_digits_model, digits_test):
    x = digits_test.images[:3].clone().requires_grad_(True)
    sm = Smoothed(noisy_digits_model, 0.25, n_forward=8)
    out = sm(x)
    assert out.shape == (3, 10) and torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)
    (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
    assert grad.shape == x.shape and float(grad.abs().sum()) > 0
    assert all(p.grad is None for p in noisy_digits_model.parameters())
    with torch.no_grad():
        assert not torch.equal(sm(x), sm(x))  # fresh noise per call: attack it with EOT
        fixed = Smoothed(noisy_digits_model, 0.25, n_forward=8, fresh_noise=False)
        assert torch.equal(fixed(x), fixed(x))
        # Averaging many calls approaches the soft-smoothed probabilities: argmax = certified class.
        soft = torch.stack([sm(x).exp() for _ in range(16)]).mean(0)
    cert = sm.certify(x.detach(), 50, 500)
    ok = ~cert.abstain
    assert bool((soft.argmax(1)[ok] == cert.prediction[ok]).all())


def test_fast_path_flags_are_off_by_default_and_recorded(noisy_digits_model, digits_test):
    x = digits_test.images[:8]
    plain = Smoothed(noisy_digits_model, 0.25).certify(x, 20, 500)
    assert "autocast" not in plain.info and "channels_last" not in plain.info
    fast = Smoothed(noisy_digits_model, 0.25, autocast=True, channels_last=True).certify(x, 20, 500)
    assert fast.info["autocast"] == "bfloat16" and fast.info["channels_last"] is True
    assert float((fast.prediction == plain.prediction).double().mean()) >= 0.75
    # optimize=True: a traced, frozen copy casts the same votes (checked on its first slice).
    gen = torch.Generator().manual_seed(0)
    eager = Smoothed(noisy_digits_model, 1.0, batch_size=256).sample_counts(x, 300, gen)
    traced = Smoothed(noisy_digits_model, 1.0, batch_size=256, optimize=True)
    assert torch.equal(traced.sample_counts(x, 300, torch.Generator().manual_seed(0)), eager)
    assert traced.certify(x, 20, 100).info["optimize"] == "torch.jit.optimize_for_inference"
    assert all(p.grad is None for p in noisy_digits_model.parameters())
    with pytest.raises(ValueError, match="cannot be combined with autocast"):
        Smoothed(noisy_digits_model, 0.25, autocast=True, optimize=True)


# --------------------------------------------------------------------------------------------
# A real (tiny) noise-trained model


def test_adaptive_saves_samples_and_keeps_the_curve(noisy_digits_model, digits_test):
    x, y = digits_test.images[:60], digits_test.labels[:60]
    sm = Smoothed(noisy_digits_model, 0.25, batch_size=10_000, seed=0)
    radii = [0.0, 0.25, 0.5]
    fixed = sm.certify(x, n0=50, n=4000, alpha=0.001)
    adaptive = sm.certify_adaptive(x, n0=50, n_max=4000, alpha=0.001, radius=radii)
    f_curve, a_curve = certified_accuracy(fixed, y, radii), certified_accuracy(adaptive, y, radii)
    assert float((f_curve - a_curve).abs().max()) <= 0.05
    assert float(adaptive.samples.double().mean()) < 0.4 * float(fixed.samples.double().mean())
    assert sum(adaptive.info["stop"].values()) == 60 and adaptive.info["looks"][-1] == 4000


def test_an_attack_inside_the_certified_radius_does_not_change_the_prediction(noisy_digits_model, digits_test):
    """L2 PGD on the soft smoothed classifier (Salman et al. 2019; fresh noise at every step, so
    EOT) at 0.95 of each certified radius. Cohen's Theorem 1 (via the 1/sigma-Lipschitz
    Phi^-1(pA(x))) says the attacked point keeps the class with pA(x') >= Phi(Phi^-1(pA_lower)
    - ||x' - x|| / sigma) > 1/2; fresh PREDICT and a Clopper-Pearson upper bound at x' must agree
    (each check may fail with probability alpha). At 3x the radius the same attack does bite."""
    sigma = 0.25
    x, y = digits_test.images[:30], digits_test.labels[:30]
    sm = Smoothed(noisy_digits_model, sigma, batch_size=20_000, n_forward=16, seed=0)
    cert = sm.certify(x, n0=50, n=2000, alpha=0.001)
    idx = ((~cert.abstain) & (cert.radius > 0.1) & (cert.prediction == y)).nonzero().squeeze(1)[:6]
    assert idx.numel() >= 4
    broken = weakened = bitten = 0
    for i in idx.tolist():
        xi, ci, ri = x[i : i + 1], cert.prediction[i : i + 1], float(cert.radius[i])
        res = rl.attacks.PGD(rl.ThreatModel("l2", 0.95 * ri), steps=10, seed=i).attack(sm, xi, ci)
        assert float(res.distance) <= 0.95 * ri + 1e-5
        counts = sm.sample_counts(res.x_adv, 2000)[0]
        top2 = counts.topk(2)
        pval = predict_pvalue(top2.values[:1], top2.values[1:])[0]
        broken += int(pval <= 0.001 and int(top2.indices[0]) != int(ci))  # PREDICT names another class
        _, p_up = clopper_pearson(int(counts[int(ci)]), 2000, 0.001, side="upper")
        floor = st.norm.cdf(st.norm.ppf(float(cert.p_lower[i])) - float(res.distance) / sigma)
        weakened += int(p_up < floor)
        big = rl.attacks.PGD(rl.ThreatModel("l2", 3.0 * ri), steps=10, seed=i).attack(sm, xi, ci)
        bitten += int(int(sm.predict(big.x_adv, n=500, alpha=0.001)) != int(ci))
    assert broken == 0 and weakened <= 1
    assert bitten >= 1  # the attack is not toothless


# --------------------------------------------------------------------------------------------
# Bad input


def test_bad_arguments_are_refused_clearly(noisy_digits_model, digits_test):
    x = digits_test.images[:2]
    for sigma in (0.0, -1.0):
        with pytest.raises(ValueError, match="sigma must be > 0"):
            Smoothed(noisy_digits_model, sigma)
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        Smoothed(noisy_digits_model, 0.25, batch_size=0)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        Smoothed(lambda z: z, 0.25)  # type: ignore[arg-type]
    sm = Smoothed(noisy_digits_model, 0.25)
    for alpha in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="alpha must be a probability"):
            sm.certify(x, 10, 100, alpha=alpha)
    with pytest.raises(ValueError, match="n0 must be > 0"):
        sm.certify(x, 0, 100)
    with pytest.raises(ValueError, match="n must be > 0"):
        sm.certify(x, 10, 0)
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        sm.certify(x, 10, 100, batch_size=0)
    with pytest.raises(ValueError, match=r"n=9 cannot certify anything at alpha=0.001.*use n >= 10"):
        sm.certify(x, 10, 9, alpha=0.001)
    with pytest.raises(ValueError, match=r"use n >= 11"):
        sm.predict(x, 10, alpha=0.001)
    with pytest.raises(ValueError, match=r"use n >= \d+"):
        sm.certify_two_class(x, 10, 10, alpha=0.001)
    with pytest.raises(ValueError, match=r"use n_max >= \d+"):
        sm.certify_adaptive(x, 10, 10, alpha=0.001, schedule=[5, 10])  # the last look has alpha/2
    with pytest.raises(ValueError, match="schedule must be strictly increasing"):
        sm.certify_adaptive(x, 10, 1000, schedule=[500, 100, 1000])
    with pytest.raises(ValueError, match="radius must be"):
        sm.certify_adaptive(x, 10, 1000, radius=[-0.5])
    with pytest.raises(ValueError, match="expected images in"):
        sm.certify(x * 3, 10, 100)
    with pytest.raises(TypeError, match="torch.Tensor"):
        sm.certify(x.numpy(), 10, 100)  # type: ignore[arg-type]
    assert isinstance(sm.certify(x, 1, 10), Certificate)  # the smallest valid sizes work


# --------------------------------------------------------------------------------------------
# Command line


def test_certify_command_prints_the_table_and_writes_per_image_json(noisy_digits_model, tmp_path, capsys):
    import json

    from robustlab.cli import main

    path = tmp_path / "digits-noise"
    rl.models.save(noisy_digits_model, path, metadata={"dataset": "digits"})
    out = tmp_path / "cert.json"
    argv = ["certify", "--model", str(path), "--sigma", "0.25", "--n0", "20", "--n", "500", "--n-images", "12",
            "--radii", "0,0.25,0.5", "--chunk", "5", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["method"] == "cohen" and record["dataset"] == "digits" and len(record["per_image"]) == 12
    assert [r["index"] for r in record["per_image"]] == list(range(12))
    curve = record["certified_accuracy"]
    assert curve == sorted(curve, reverse=True) and f"{curve[1]:.4f}" in printed
    correct = sum(r["correct"] and r["radius"] >= 0.25 for r in record["per_image"])
    assert correct / 12 == pytest.approx(curve[1])
    assert Certificate.from_dict(record["certificate"]).radius.shape == (12,)
    assert not list(tmp_path.glob(".cert.json.*"))  # atomic write: no temporary file left behind
    assert main(argv[:-1] + [str(tmp_path / "adaptive.json"), "--adaptive"]) == 0
    adaptive = json.loads((tmp_path / "adaptive.json").read_text())
    assert adaptive["method"] == "adaptive" and adaptive["evaluations_per_image"] < 520
    capsys.readouterr()
    assert main(["certify", "--model", str(path), "--sigma", "0.25", "--n", "5", "--no-progress",
                 "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "use n >= 10" in err and "Traceback" not in err
    assert main(["certify", "--model", str(path), "--sigma", "-1", "--no-progress"]) == 2
    assert "sigma must be > 0" in capsys.readouterr().err


def test_optimized_copy_follows_weight_updates(digits_test):
    """A traced, frozen copy must not outlive the weights it baked in."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x = digits_test.images[:4]
    sm = Smoothed(model, 0.5, optimize=True)
    before = sm.sample_counts(x, 200, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model[1].bias.copy_(torch.arange(10.0) * 100)  # now class 9 always wins
    after = sm.sample_counts(x, 200, torch.Generator().manual_seed(0))
    assert not torch.equal(before, after) and after[:, 9].tolist() == [200] * 4


def test_prepacked_convolutions_cast_the_same_votes(digits_test, monkeypatch):
    """On a CPU, a Sequential CNN's votes are counted through prepacked oneDNN convolutions
    (robustlab.attacks.prepacked): the same draws and votes as the model's own forward."""
    from robustlab.attacks.prepacked import PrepackedForward

    cnn = rl.models.create("small-cnn", "digits", seed=0).eval()
    x = digits_test.images[:7]
    fast = Smoothed(cnn, 0.5, batch_size=300, seed=1)
    counts = fast.sample_counts(x, 230)  # slices straddle inputs: partial, whole and partial inputs per slice
    assert fast._prepacked and next(iter(fast._prepacked.values()))._verified
    monkeypatch.setattr(PrepackedForward, "applies", lambda self, b: False)
    plain = Smoothed(cnn, 0.5, batch_size=300, seed=1).sample_counts(x, 230)
    assert torch.equal(counts, plain) and int((counts > 0).sum()) > 7


@pytest.mark.parametrize("start,m,num", [(0, 10, 3), (2, 10, 3), (5, 4, 100), (99, 3, 100), (7, 1, 1), (4, 9, 1),
                                         (0, 12, 4), (3, 30, 7)])
def test_rows_get_their_own_input_added(start, m, num):
    from robustlab.defenses.smoothing import _add_owners

    x = torch.randn(20, 2, 3, 3)
    rows = torch.randn(m, 2, 3, 3)
    want = rows + x[torch.arange(start, start + m) // num]
    _add_owners(rows, x, start, num)
    assert torch.equal(rows, want)
