"""The new attacks do what their papers say, on real digits and on linear models with closed forms.

Strength: APGD >= PGD at the same budget; the minimal-norm attacks (CW-L2, DDN, FMN) find smaller
L2 perturbations than PGD-L2; DeepFool hits the exact (multi-class) hyperplane distance of a linear
model; targeted attacks reach their targets; EOT beats plain PGD on a randomised model; BPDA breaks
a quantisation defence that gives plain PGD a zero gradient; WorstCase keeps the first success
(fixed budget) or the smallest distance (minimal norm) and says which attack got it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustlab as rl
from robustlab.attacks import (
    APGD,
    APGDT,
    DDN,
    EOT,
    FGSM,
    FMN,
    PGD,
    BPDAWrapper,
    CarliniWagner,
    CarliniWagnerL0,
    CarliniWagnerLinf,
    DeepFool,
    WorstCase,
    input_gradient,
)


@pytest.fixture(scope="module")
def digits200(digits_test):
    return digits_test.images[:200], digits_test.labels[:200]


def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget(model, digits200):
    x, y = digits200[0][:100], digits200[1][:100]
    tm = rl.ThreatModel("linf", 0.08)
    pgd = PGD(tm, steps=10, seed=0).attack(model, x, y)
    apgd = APGD(tm, steps=10, seed=0).attack(model, x, y)
    apgd_dlr = APGD(tm, steps=10, loss="dlr", seed=0).attack(model, x, y)
    assert 0.05 < pgd.robust_accuracy  # a budget where the comparison means something
    assert apgd.robust_accuracy <= pgd.robust_accuracy
    assert apgd_dlr.robust_accuracy < float(pgd.clean_correct.float().mean())  # DLR works too
    # The targeted version over the 3 most likely classes is stronger still.
    apgdt = APGDT(tm, steps=10, n_target_classes=3, seed=0).attack(model, x, y)
    assert apgdt.robust_accuracy <= pgd.robust_accuracy


def test_apgd_checkpoints_follow_the_paper():
    from robustlab.attacks.apgd import checkpoints

    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87 (+0.06 each after): ceil(p * 100).
    assert checkpoints(100)[:6] == [22, 41, 57, 70, 80, 87]


@pytest.mark.parametrize(
    "make",
    [
        lambda: CarliniWagner(steps=50, binary_search_steps=3, initial_const=1.0, step_size=0.1),
        lambda: DDN(steps=60),
        lambda: FMN("l2", steps=60),
    ],
    ids=["cw-l2", "ddn", "fmn"],
)
def test_minimal_norm_attacks_find_smaller_l2_than_pgd(model, batch, make):
    x, y = batch
    pgd = PGD(rl.ThreatModel("l2", 3.0), steps=20, seed=0).attack(model, x, y)
    res = make().attack(model, x, y)
    both = pgd.success & res.success
    assert pgd.success_rate == 1.0 and res.success_rate == 1.0
    assert float(res.distance[both].median()) < 0.9 * float(pgd.distance[both].median())
    # Recomputed distances: what is reported is what was found.
    assert torch.allclose(res.distance, (res.x_adv - x).flatten(1).norm(dim=1), atol=1e-5)


class Linear(nn.Module):
    """A linear softmax model: logits ``W x + b`` on flattened inputs."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(b.clone())

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def _linear_problem(k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    d = 16
    w = torch.randn(k, d, generator=g, dtype=torch.float64)
    b = torch.randn(k, generator=g, dtype=torch.float64) * 0.1
    x = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64)
    model = Linear(w, b).double()
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, w, b, x, y


def test_deepfool_binary_linear_model_hits_the_hyperplane_exactly():
    """Two classes, logits [0, w.x + b]: the minimal L2 perturbation is |w.x + b| / ||w||."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, generator=g, dtype=torch.float64)
    model = Linear(torch.stack([torch.zeros_like(w), w]), torch.tensor([0.0, -0.2], dtype=torch.float64)).double()
    x = torch.rand(8, 1, 4, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        z = model(x)[:, 1]
    y = (z > 0).long()
    exact = z.abs() / w.norm()
    # A box wide enough never to clip: the hyperplane distance is then the exact answer.
    res = DeepFool("l2", overshoot=0.0, bounds=(-50.0, 50.0)).attack(model, x, y)
    assert bool(res.success.all()) and int(res.iterations.max()) <= 2
    assert bool((res.distance >= exact).all()) and bool((res.distance - exact <= 1e-3).all())
    # The step is along w: the perturbation is parallel to it.
    delta = (res.x_adv - x).flatten(1)
    cos = (delta @ w).abs() / (delta.norm(dim=1) * w.norm())
    assert torch.allclose(cos, torch.ones_like(cos))
    # With the default overshoot 0.02 the distance is 1.02 times as large.
    res = DeepFool("l2", bounds=(-50.0, 50.0)).attack(model, x, y)
    assert torch.allclose(res.distance, 1.02 * exact, rtol=0, atol=2e-3)


@pytest.mark.parametrize("norm, dual", [("l2", 2.0), ("linf", 1.0)])
def test_deepfool_multiclass_linear_model_finds_the_closest_hyperplane(norm, dual):
    """K classes: the minimal perturbation is min_k |f_k| / ||w_k - w_y||_q (q the dual norm)."""
    model, w, b, x, y = _linear_problem(k=5, seed=2)
    with torch.no_grad():
        z = model(x)
    f = z - z.gather(1, y[:, None])  # (N, K) f_k = z_k - z_y
    wd = w[None, :, :] - w[y][:, None, :]  # (N, K, D)
    dist = f.abs() / wd.norm(p=dual, dim=2)
    dist = dist.masked_fill(torch.nn.functional.one_hot(y, 5).bool(), float("inf"))
    exact, closest = dist.min(dim=1)
    res = DeepFool(norm, overshoot=0.0, bounds=(-50.0, 50.0)).attack(model, x, y)
    assert bool(res.success.all())
    assert bool((res.distance >= exact - 1e-9).all()) and bool((res.distance - exact <= 1e-3).all())
    with torch.no_grad():
        assert torch.equal(model(res.x_adv).argmax(1), closest)


def test_deepfool_batched_equals_one_by_one(model, batch):
    """The per-class gradients are batched; the answer does not depend on the batch."""
    x, y = batch
    att = DeepFool("l2")
    together = att.attack(model, x[:6], y[:6])
    alone = torch.cat([att.attack(model, x[i : i + 1], y[i : i + 1]).distance for i in range(6)])
    assert torch.allclose(together.distance, alone, atol=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: CarliniWagnerLinf(steps=30, initial_const=1.0, largest_const=10.0, step_size=0.05, min_tau=0.05),
        pytest.param(lambda: CarliniWagnerL0(steps=30, initial_const=1.0, largest_const=20.0, step_size=0.1),
                     marks=pytest.mark.slow),
        lambda: APGDT(rl.ThreatModel("linf", 0.3), steps=20),
        lambda: DeepFool("linf"),
    ],
    ids=["cw-linf", "cw-l0", "apgd-t", "deepfool-linf"],
)
def test_targeted_attacks_reach_the_target(model, batch, make):
    x, y = batch[0][:6], batch[1][:6]
    target = (y + 5) % 10
    res = make().attack(model, x, y, target=target)
    assert res.success_rate >= 0.8
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(pred[res.success], target[res.success])


def test_cw_l0_changes_few_pixels(model, batch):
    x, y = batch[0][:3], batch[1][:3]
    res = CarliniWagnerL0(steps=30, initial_const=1.0, largest_const=20.0, step_size=0.1).attack(model, x, y)
    assert bool(res.success.all())
    # A digit is 64 pixels; the L0 attack changes a small part of them.
    assert float(res.distance.median()) <= 20
    changed = ((res.x_adv - x).abs().flatten(1) > 0).sum(1).to(res.distance.dtype)
    assert torch.equal(changed, res.distance)


def test_cw_l0_freezes_pixels_by_the_whole_objective(model, batch):
    # Carlini's schedule scores pixels with |delta| * |grad of c f + ||delta||^2|; scoring with grad f
    # alone froze the wrong pixels (about twice as many changed here, 10x on MNIST: 160 vs 16).
    x, y = batch[0][:8], batch[1][:8]
    res = CarliniWagnerL0(steps=30, initial_const=1.0, largest_const=20.0, step_size=0.1).attack(model, x, y)
    assert bool(res.success.all())
    assert float(res.distance.mean()) <= 7.0  # 5.0 with the fix, 9.5 without


class NoisyInput(nn.Module):
    """A randomised defence: Gaussian noise on the input before the classifier (global RNG)."""

    def __init__(self, net: nn.Module, sigma: float) -> None:
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, x):
        return self.net(x + self.sigma * torch.randn_like(x))


def _expected_accuracy(model, x, y, draws=32):
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(123)
        return float(torch.stack([(model(x).argmax(1) == y).float() for _ in range(draws)]).mean())


def test_eot_beats_plain_pgd_on_a_randomised_model(model, digits200):
    x, y = digits200[0][:64], digits200[1][:64]
    noisy = NoisyInput(model, sigma=0.5)
    tm = rl.ThreatModel("linf", 0.15)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        plain = PGD(tm, steps=10, early_stop=False, seed=0).attack(noisy, x, y)
        eot = EOT(PGD(tm, steps=10, early_stop=False, seed=0), n=8).attack(noisy, x, y)
    acc_plain = _expected_accuracy(noisy, plain.x_adv, y)
    acc_eot = _expected_accuracy(noisy, eot.x_adv, y)
    assert acc_eot < acc_plain


def test_eot_gradient_estimates_the_expected_gradient(model, batch):
    """The averaged gradient points much closer to E_r[grad L(f(x; r))] than one draw does."""
    x, y = batch
    noisy = NoisyInput(model, sigma=0.5)
    loss = lambda z: nn.functional.cross_entropy(z, y, reduction="none")  # noqa: E731
    with torch.random.fork_rng():
        torch.manual_seed(0)
        _, _, expected = input_gradient(noisy, x, loss, draws=256)
        _, _, one = PGD(rl.ThreatModel("linf", 0.1))._gradient(noisy, x, loss)
        _, _, avg = PGD(rl.ThreatModel("linf", 0.1))._with_draws(32)._gradient(noisy, x, loss)
    cos = lambda a, b: nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)  # noqa: E731
    assert float(cos(avg, expected).mean()) > float(cos(one, expected).mean()) + 0.2


def test_eot_is_seeded_and_leaves_the_global_rng_alone(model, batch):
    x, y = batch
    noisy = NoisyInput(model, sigma=0.3)
    state = torch.get_rng_state()
    att = EOT(PGD(rl.ThreatModel("linf", 0.1), steps=3, early_stop=False, seed=0), n=2)
    a = att._run(noisy, x, y, None, torch.Generator().manual_seed(0)).x_adv
    b = att._run(noisy, x, y, None, torch.Generator().manual_seed(0)).x_adv
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)


def _quantise(x):
    return torch.round(x * 3) / 3  # 4 grey levels: non-differentiable (zero gradient almost everywhere)


def test_bpda_breaks_a_quantisation_defence_that_masks_gradients(model, digits200):
    x, y = digits200[0][:64], digits200[1][:64]
    defended = nn.Sequential(nn.Identity(), model)
    defended[0].forward = _quantise  # type: ignore[method-assign]
    tm = rl.ThreatModel("linf", 0.3)
    # Plain PGD sees an exactly zero gradient and cannot move.
    _, _, grad = input_gradient(defended, x, lambda z: nn.functional.cross_entropy(z, y, reduction="none"))
    assert float(grad.abs().max()) == 0.0
    plain = PGD(tm, steps=20, random_start=False).attack(defended, x, y)
    # BPDA: the same quantisation forward, the identity backward (straight-through).
    bpda_model = nn.Sequential(BPDAWrapper(_quantise), model)
    with torch.no_grad():
        assert torch.equal(bpda_model(x), defended(x))
    bpda = PGD(tm, steps=20, random_start=False).attack(bpda_model, x, y)
    clean = float(plain.clean_correct.float().mean())
    assert plain.robust_accuracy == clean and clean > 0.8
    assert bpda.robust_accuracy <= 0.2
    # The examples transfer to the defended model itself (the forward passes are identical).
    with torch.no_grad():
        assert torch.equal(defended(bpda.x_adv).argmax(1) != y, bpda.success)


def test_bpda_uses_the_surrogate_gradient():
    x = torch.rand(3, 1, 2, 2, requires_grad=True)
    wrapped = BPDAWrapper(_quantise, surrogate=lambda t: 2 * t)
    (grad,) = torch.autograd.grad(wrapped(x).sum(), x)
    assert torch.equal(grad, torch.full_like(x, 2.0))


def test_worst_case_fixed_budget_keeps_the_first_success(model, digits200):
    x, y = digits200[0][:48], digits200[1][:48]
    tm = rl.ThreatModel("linf", 0.1)
    fgsm, pgd = FGSM(tm), PGD(tm, steps=20, seed=0)
    wc = WorstCase([fgsm, pgd]).attack(model, x, y)
    alone = fgsm.attack(model, x, y)
    by = wc.info["broken_by"]
    assert wc.info["attacks"] == ["FGSM", "PGD"]
    first = alone.success & alone.clean_correct
    assert torch.equal(by == 0, first)  # FGSM's successes are FGSM's
    assert torch.equal(wc.x_adv[first], alone.x_adv[first])  # ... and kept as found
    assert bool((by == 1).any())  # PGD broke more, only among the rest
    assert torch.equal(wc.success & wc.clean_correct, by >= 0)
    assert wc.robust_accuracy < alone.robust_accuracy
    # PGD ran only where FGSM failed: FGSM's samples cost exactly its one step.
    assert bool((wc.iterations[first] == 1).all())
    assert bool(tm.contains(wc.x_adv, x).all())


def test_worst_case_minimal_norm_keeps_the_smallest_distance(model, batch):
    x, y = batch
    a, b = DeepFool("l2"), FMN("l2", steps=40)
    wc = WorstCase([a, b]).attack(model, x, y)
    ra, rb = a.attack(model, x, y), b.attack(model, x, y)
    da = torch.where(ra.success, ra.distance, torch.full_like(ra.distance, float("inf")))
    db = torch.where(rb.success, rb.distance, torch.full_like(rb.distance, float("inf")))
    assert torch.allclose(wc.distance, torch.minimum(da, db), atol=1e-5)
    # Ties go to the first attack.
    assert torch.equal(wc.info["broken_by"], (db < da).long())


def test_apgd_l1_checks_progress_every_4_percent_of_the_iterations():
    from robustlab.attacks.apgd import l1_checkpoints

    assert l1_checkpoints(100) == list(range(4, 100, 4))
    assert l1_checkpoints(10) == list(range(1, 10))  # at least every iteration


def test_apgd_l1_uses_no_momentum_and_beats_pgd_l1(model, digits200):
    x, y = digits200[0][:100], digits200[1][:100]
    tm = rl.ThreatModel("l1", 2.0)
    a = APGD(tm, steps=20, seed=0).attack(model, x, y)
    b = APGD(tm, steps=20, momentum=0.3, seed=0).attack(model, x, y)
    assert torch.equal(a.x_adv, b.x_adv)  # the momentum parameter plays no part for l1
    pgd = PGD(tm, steps=20, seed=0).attack(model, x, y)
    assert 0.05 < pgd.robust_accuracy
    assert a.robust_accuracy <= pgd.robust_accuracy
    assert bool(tm.contains(a.x_adv, x).all())


class FlatAtGrey(nn.Module):
    """Two classes; class 0 unless ``h = relu(||x - 0.5||_1 - 0.5)`` is large: its gradient is
    exactly zero on the whole l1 ball of radius 0.5 around the grey image (abs'(0) = 0 in torch)."""

    def forward(self, x):
        h = torch.relu((x - 0.5).abs().flatten(1).sum(1) - 0.5)
        return torch.stack([torch.zeros_like(h), 10 * h - 1], dim=1)


def test_ddn_takes_a_random_direction_where_the_gradient_is_zero():
    model = FlatAtGrey()
    x = torch.full((4, 1, 4, 4), 0.5)
    y = torch.zeros(4, dtype=torch.long)
    x.requires_grad_(True)
    assert float(torch.autograd.grad(model(x)[:, 0].sum() - model(x)[:, 1].sum(), x)[0].abs().sum()) == 0.0
    x = x.detach()
    res = DDN(steps=20, seed=1).attack(model, x, y)
    assert bool(res.success.all())  # a zero step would leave every sample at the grey image
    again = DDN(steps=20, seed=1).attack(model, x, y)
    other = DDN(steps=20, seed=2).attack(model, x, y)
    assert torch.equal(res.x_adv, again.x_adv) and not torch.equal(res.x_adv, other.x_adv)


# -- APGD-L1's large-eps schedule (AutoAttack's use_largereps; Croce & Hein 2021, arXiv:2103.01208) --
def test_large_eps_stages_split_the_steps_as_autoattack():
    from robustlab.attacks.apgd import large_eps_stages

    assert large_eps_stages(100) == [(3, 30), (2, 30), (1, 40)]
    assert large_eps_stages(50) == [(3, 15), (2, 15), (1, 20)]
    assert large_eps_stages(10) == [(3, 3), (2, 3), (1, 4)]
    assert large_eps_stages(3) == [(3, 1), (2, 1), (1, 1)]


@pytest.mark.parametrize("cls", [APGD, APGDT])
def test_apgd_l1_large_eps_keeps_the_contract_and_stays_in_the_eps_ball(model, batch, cls):
    from robustlab.testing import check_attack

    x, y = batch
    tm = rl.ThreatModel("l1", 2.0)
    extra = {"n_target_classes": 2} if cls is APGDT else {}
    res = check_attack(lambda s: cls(tm, steps=10, large_eps=True, seed=s, **extra), model, x, y)
    # the stages run in balls of 6 and 4: only points of the eps ball may come back
    assert bool(tm.contains(res.x_adv, x).all()) and float(res.distance.max()) <= 2.0 + 1e-4
    plain = cls(tm, steps=10, seed=0, **extra).attack(model, x, y)
    assert not torch.equal(res.x_adv, plain.x_adv)  # the option changes the search


def test_apgd_large_eps_is_checked():
    with pytest.raises(ValueError, match="l1"):
        APGD(rl.ThreatModel("linf", 0.3), large_eps=True)
    with pytest.raises(ValueError, match="steps"):
        APGD(rl.ThreatModel("l1", 2.0), steps=4, large_eps=True)
    with pytest.raises(TypeError, match="large_eps"):
        APGD(rl.ThreatModel("l1", 2.0), large_eps=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("eps", [0.5, 2.0])
def test_apgd_l1_large_eps_is_at_least_as_strong_on_digits(model, digits200, eps):
    """The l1 ``standard`` preset's first member (APGD-CE, 100 steps, 5 restarts) with and without
    the schedule, fixed seed, the first 100 test digits. Measured: 94% vs 97% robust at eps 0.5,
    16% vs 18% at eps 2 (and 69 vs 70, 33 vs 35 at eps 1, 1.5)."""
    x, y = digits200[0][:100], digits200[1][:100]
    tm = rl.ThreatModel("l1", eps)
    on = rl.attacks.get("apgd-ce", tm, steps=100, restarts=5, large_eps=True, seed=0).attack(model, x, y)
    off = rl.attacks.get("apgd-ce", tm, steps=100, restarts=5, seed=0).attack(model, x, y)
    assert bool(tm.contains(on.x_adv, x).all())
    assert on.robust_accuracy <= off.robust_accuracy, (on.robust_accuracy, off.robust_accuracy)


def test_standard_l1_runs_apgd_with_the_large_eps_schedule_and_linf_l2_without():
    l1 = rl.attacks.standard(rl.ThreatModel("l1", 8.0))
    assert [(a.name, getattr(a, "large_eps", None)) for a in l1.attacks] == [
        ("APGD", True), ("APGDT", True), ("FMN", None)]
    for norm, eps in (("linf", 0.3), ("l2", 2.0)):
        assert [getattr(a, "large_eps", None) for a in rl.attacks.standard(rl.ThreatModel(norm, eps)).attacks][:2] == [
            False, False]
    quick = rl.attacks.standard(rl.ThreatModel("l1", 8.0), version="quick")
    assert [a.large_eps for a in quick.attacks] == [False, False]  # the quick preset stays as it was
