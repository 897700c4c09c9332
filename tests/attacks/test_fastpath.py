"""The fast path (bf16 autocast, channels_last, torch.compile, deferred success checks): the same
success decisions as the default path on the digits model within a stated tolerance, the
default path untouched, the attack contract kept, and a graceful fallback when compile fails."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import robustlab as rl
from robustlab.attacks import APGD, APGDT, FGSM, PGD
from robustlab.attacks.fastpath import FastModel, FastPath
from robustlab.training.adversarial import MART, TRADES, PGDAdversary
from robustlab.defenses.smoothing import Smoothed
from robustlab.testing import check_attack

# Stated tolerance: bf16 may flip the success decision of at most this fraction of the samples
# (measured on 200 digits: 0 to 1 flips for PGD, APGD and FGSM). fp32 with deferred checks: none.
BF16_FLIPS = 0.05

LINF = rl.ThreatModel("linf", 0.1)


@pytest.fixture(scope="module")
def digits_batch(digits_test):
    return digits_test.images[:120].clone(), digits_test.labels[:120].clone()


def _makers():
    return {
        "pgd": lambda fast: PGD(LINF, steps=20, restarts=2, fast=fast),
        "apgd": lambda fast: APGD(LINF, steps=20, fast=fast),
        "apgdt": lambda fast: APGDT(LINF, steps=8, n_target_classes=3, fast=fast),
        "fgsm": lambda fast: FGSM(LINF, fast=fast),
    }


@pytest.mark.parametrize("name", list(_makers()))
def test_fp32_deferred_checks_give_the_default_result(model, digits_batch, name):
    """Deferring the host-side success check (k = 5) changes no decision and no iterate: each
    sample's first adversarial iterate is kept on the device, the others step as before."""
    x, y = digits_batch
    make = _makers()[name]
    ref = make(None).attack(model, x, y)
    res = make(FastPath(precision="fp32", channels_last=False, check_every=5)).attack(model, x, y)
    assert torch.equal(res.success, ref.success)
    assert torch.allclose(res.x_adv, ref.x_adv, atol=1e-5)
    assert torch.equal(res.iterations, ref.iterations)


@pytest.mark.parametrize("name", list(_makers()))
def test_bf16_success_decisions_match_the_default_within_tolerance(model, digits_batch, name):
    x, y = digits_batch
    make = _makers()[name]
    ref = make(None).attack(model, x, y)
    res = make("bf16").attack(model, x, y)
    flips = (res.success != ref.success).float().mean().item()
    assert flips <= BF16_FLIPS, f"{name}: bf16 flipped {flips:.1%} of the success decisions"
    # Success is judged by the caller's fp32 model, whatever the search ran in.
    with torch.no_grad():
        judged = model(res.x_adv).argmax(1) != y
    assert torch.equal(res.success, judged)
    assert bool(LINF.contains(res.x_adv, x).all())


def test_default_path_is_unchanged(model, batch):
    """fast=None: no wrapper reaches the attack, and its config carries no fast-path entry."""
    x, y = batch
    seen = []

    class Spy(PGD):
        def _run(self, model, x, y, target, generator):
            seen.append(type(model))
            return super()._run(model, x, y, target, generator)

    Spy(LINF, steps=3).attack(model, x, y)
    assert seen and not issubclass(seen[0], FastModel)
    assert "fast" not in PGD(LINF).config()
    assert PGD(LINF, fast="bf16").config()["fast"] == {"precision": "bf16", "channels_last": True, "compile": False,
                                                        "check_every": 8}
    Spy(LINF, steps=3, fast="bf16").attack(model, x, y)
    assert issubclass(seen[-1], FastModel)


@pytest.mark.parametrize("make", [
    lambda s: PGD(LINF, steps=6, seed=s, fast=FastPath(check_every=4)),
    lambda s: APGD(rl.ThreatModel("l2", 1.0), steps=6, seed=s, fast="bf16"),
    lambda s: FGSM(LINF, seed=s, fast="fp32"),
], ids=["pgd", "apgd-l2", "fgsm"])
def test_fast_path_attacks_keep_the_attack_contract(model, batch, make):
    x, y = batch
    check_attack(make, model, x[:8], y[:8])


def test_fast_path_validation():
    assert FastPath.resolve(None) is None and FastPath.resolve(False) is None and FastPath.resolve("off") is None
    assert FastPath.resolve(True) == FastPath() == FastPath.resolve("bf16")
    assert FastPath.resolve("compile").compile
    with pytest.raises(ValueError, match="precision"):
        FastPath(precision="fp16")
    with pytest.raises(ValueError, match="check_every"):
        FastPath(check_every=0)
    with pytest.raises(TypeError, match="channels_last"):
        FastPath(channels_last=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fast must be one of"):
        PGD(LINF, fast="turbo")
    with pytest.raises(TypeError, match="fast must be"):
        PGD(LINF, fast=3)  # type: ignore[arg-type]


def test_compile_failure_falls_back_to_eager(model, batch, monkeypatch):
    """A model that does not compile runs eagerly with one warning and the same decisions."""
    x, y = batch

    def broken(_model, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    ref = PGD(LINF, steps=5).attack(model, x, y)
    fast = FastPath(precision="fp32", channels_last=False, compile=True, check_every=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = PGD(LINF, steps=5, fast=fast).attack(model, x, y)
    assert sum("torch.compile failed" in str(w.message) for w in caught) == 1
    assert torch.equal(res.success, ref.success)
    assert fast.compiled(model) is model  # remembered: the next batch runs eagerly without trying again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PGD(LINF, steps=5, fast=fast).attack(model, x, y)
    assert not caught


def test_the_compile_cache_is_not_part_of_the_settings():
    """FastPath keeps its compiled forwards per settings object, outside equality, hash and to_dict."""
    a, b = FastPath(compile=True), FastPath(compile=True)
    a._compiled[torch.nn.Linear(2, 2)] = torch.nn.Identity()  # noqa: SLF001 - the cache itself
    assert a == b and hash(a) == hash(b) and a.to_dict() == b.to_dict() == {
        "precision": "bf16", "channels_last": True, "compile": True, "check_every": 8}
    assert len(b._compiled) == 0  # noqa: SLF001 - no cache shared between settings objects


@pytest.mark.slow
def test_compiled_pgd_matches_the_default(model, digits_batch):
    """torch.compile (inductor; tens of seconds on a CPU): same decisions within the bf16 tolerance."""
    x, y = digits_batch
    ref = PGD(LINF, steps=10).attack(model, x, y)
    res = PGD(LINF, steps=10, fast=FastPath(precision="fp32", compile=True, check_every=10)).attack(model, x, y)
    assert (res.success != ref.success).float().mean().item() <= BF16_FLIPS


@pytest.mark.parametrize("cls", [PGDAdversary, TRADES, MART])
def test_training_adversaries_fast_path(model, batch, cls):
    """The inner maximisation under bf16 lands in the ball, leaves no parameter gradients, and its
    training loss is a real maximisation (above the clean loss) within 25% of the default's."""
    x, y = batch
    ref = cls(LINF, steps=5)
    fast = cls(LINF, steps=5, fast="bf16")
    assert "fast" not in ref.config() and fast.config()["fast"]["precision"] == "bf16"
    losses = []
    for adv in (ref, fast):
        g = torch.Generator().manual_seed(0)
        losses.append(adv.loss(model, x, y, generator=g).detach().item())
        assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y).item()
    assert losses[1] > clean
    assert abs(losses[1] - losses[0]) <= 0.25 * abs(losses[0]) + 1e-3
    xa = PGDAdversary(LINF, steps=5, fast="bf16").perturb(model, x, y, torch.Generator().manual_seed(0))
    assert bool(LINF.contains(xa, x).all())
    with torch.no_grad():
        assert F.cross_entropy(model(xa), y).item() > clean


def test_smoothing_fast_path_certifies_like_the_default(model, digits_batch):
    x = digits_batch[0][:20]
    ref = Smoothed(model, 0.25, seed=0).certify(x, n0=20, n=200, alpha=0.01)
    cert = Smoothed(model, 0.25, seed=0, fast="bf16").certify(x, n0=20, n=200, alpha=0.01)
    assert cert.info["fast"]["precision"] == "bf16" and "fast" not in ref.info
    assert (cert.prediction != ref.prediction).float().mean().item() <= 0.1
    assert (cert.radius - ref.radius).abs().max().item() <= 0.25


def test_cli_attack_fast_flag(tmp_path):
    """``robustlab attack --fast bf16`` records the fast path in the summary's config."""
    import json

    from robustlab.cli import main

    path = tmp_path / "digits-mlp"
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--epochs", "1", "--out", str(path), "--no-progress"]) == 0
    out = tmp_path / "adv.safetensors"
    assert main(["attack", "--model", str(path), "--attack", "pgd", "--eps", "0.1", "--n", "40", "-o", "steps=10",
                 "--fast", "bf16", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["config"]["fast"]["precision"] == "bf16" and summary["config"]["steps"] == 10


def test_a_compiled_forward_that_fails_runs_eagerly_from_then_on():
    """compiled_call (Smoothed's inference path): a compiled module that raises gives the eager
    logits, one warning, and is not tried again."""

    def broken(_x):
        raise RuntimeError("inductor failed")

    fast, net = FastPath(compile=True), torch.nn.Linear(4, 3)
    fast._compiled[net] = broken  # noqa: SLF001 - stands in for a compiled module that fails
    x = torch.randn(5, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = fast.compiled_call(net, x), fast.compiled_call(net, x)
    assert torch.equal(first, net(x)) and torch.equal(second, net(x))
    assert len(caught) == 1 and "torch.compile failed" in str(caught[0].message) and fast.compiled(net) is net
