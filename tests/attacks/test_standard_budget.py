"""The budget of `standard` follows the images (issue 24): the triage of WorstCase, the adaptive
preset and its full-budget form (the preset before the triage, bit for bit)."""

from __future__ import annotations

import pytest
import torch

import robustlab as rl
from robustlab.attacks import APGD, APGDT, FMN, Square, Triage, WorstCase, standard
from robustlab.attacks.ensemble import success_margin
from robustlab.attacks.registry import ADAPTIVE, SQUARE_QUERIES, STANDARD, STANDARD_NORM_OPTIONS, get
from robustlab.testing import check_attack

EPS = 0.08


def _tm(eps: float = EPS) -> rl.ThreatModel:
    return rl.ThreatModel("linf", eps)


@pytest.fixture(scope="module")
def images(digits_model, digits_test):
    """48 test digits (some misclassified: they never reach the triage)."""
    return digits_test.images[:48].clone(), digits_test.labels[:48].clone()


def _mini(seed: int = 0, triage: Triage = Triage(after=0, low=0.3, high=0.9), square: bool = True) -> WorstCase:
    """The adaptive preset's shape with small budgets: APGD-CE, the triage, APGD-T, FMN (, Square)."""
    tm = _tm()
    members = [APGD(tm, steps=10, seed=seed), APGDT(tm, steps=10, n_target_classes=3, seed=seed), FMN(tm, steps=10, seed=seed)]
    return WorstCase(members + ([Square(tm, queries=50, seed=seed)] if square else []), triage=triage)


def _margin(model, x, y):
    with torch.no_grad():
        return success_margin(model(x), y)


def test_settled_images_are_exactly_those_in_the_band(model, images):
    """After the first member, every image still robust whose margin ratio m(x_0)/m(x) lies in
    (low, high) stops (no later gradient member touches it), and exactly those."""
    x, y = images
    triage = Triage(after=0, low=0.3, high=0.9)
    res = _mini(triage=triage, square=False).attack(model, x, y)
    settled, ratio, by = res.info["settled"], res.info["margin_ratio"], res.info["broken_by"]
    reached = res.clean_correct & (by != 0)  # correct and not broken by the first member
    assert torch.equal(~ratio.isnan(), reached)
    in_band = (ratio > triage.low) & (ratio < triage.high)
    assert torch.equal(settled, reached & in_band)
    assert 0 < int(settled.sum()) < int(reached.sum())  # the test sees both kinds
    # Settled images kept the first member's candidate: its margin ratio is the one recorded, it is
    # still robust, and no later member spent an iteration on it.
    ratio_here = _margin(model, res.x_adv[settled], y[settled]) / _margin(model, x[settled], y[settled])
    torch.testing.assert_close(ratio_here, ratio[settled])
    assert not bool(res.success[settled].any()) and bool((by[settled] == -1).all())
    first = APGD(_tm(), steps=10, seed=0).attack(model, x, y)
    assert torch.equal(res.iterations[settled], first.iterations[settled])
    assert bool((res.iterations[reached & ~settled] > first.iterations[reached & ~settled]).all())


def test_the_black_box_members_still_see_the_settled_images(model, images):
    """Square runs on every image still robust, settled or not (a masked gradient can fake a large
    margin); with ``black_box_all=False`` it skips the settled ones too."""
    x, y = images
    res = _mini().attack(model, x, y)
    settled = res.info["settled"]
    assert bool(settled.any())
    assert bool((res.queries[settled] > 0).all())
    assert bool((res.queries[res.clean_correct & ~res.success] > 0).all())
    strict = _mini(triage=Triage(after=0, low=0.3, high=0.9, black_box_all=False)).attack(model, x, y)
    assert torch.equal(strict.info["settled"], settled)
    assert bool((strict.queries[settled] == 0).all())
    kept = strict.clean_correct & ~strict.success & ~settled
    assert bool((strict.queries[kept] > 0).all())


def test_the_margin_bounds_move_the_triage(model, images):
    """low = 0 and high = inf settle every image the first member left robust; a band that holds no
    ratio settles none, and the result is then the plain worst case's."""
    x, y = images
    everyone = _mini(triage=Triage(after=0, low=0.0, high=float("inf"))).attack(model, x, y)
    reached = ~everyone.info["margin_ratio"].isnan()
    positive = everyone.info["margin_ratio"] > 0
    assert torch.equal(everyone.info["settled"], reached & positive)
    nobody = _mini(triage=Triage(after=0, low=1e6, high=2e6)).attack(model, x, y)
    plain = WorstCase(_mini().attacks).attack(model, x, y)
    assert not bool(nobody.info["settled"].any())
    assert torch.equal(nobody.x_adv, plain.x_adv) and torch.equal(nobody.success, plain.success)
    assert torch.equal(nobody.info["broken_by"], plain.info["broken_by"])


def test_full_budget_is_the_preset_before_the_triage_bit_for_bit(model, images):
    """``budget="full"`` builds the members of STANDARD with the same seeds as before issue 24 (a
    plain WorstCase, no triage): same candidates, successes, breakers and queries."""
    x, y = images[0][:8], images[1][:8]
    tm = _tm()
    per_norm = STANDARD_NORM_OPTIONS["linf"]
    before = WorstCase([get(name, tm, **{"seed": 3, **({"queries": SQUARE_QUERIES["linf"]} if name == "square" else {}),
                                         **per_norm.get(name, {}), **opts})
                        for name, opts in STANDARD["standard"]])
    full = standard(tm, seed=3, budget="full")
    assert full.triage is None and full.name == "standard[full]"
    a, b = before.attack(model, x, y), full.attack(model, x, y)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    assert torch.equal(a.info["broken_by"], b.info["broken_by"]) and torch.equal(a.queries, b.queries)
    assert torch.equal(a.iterations, b.iterations)


def test_the_adaptive_preset_is_the_full_members_with_a_triage():
    tm = _tm(0.3)
    adaptive, full = standard(tm), standard(tm, budget="full")
    assert adaptive.name == "standard" and adaptive.triage == ADAPTIVE["standard"][1]
    assert [a.name for a in adaptive.attacks] == ["APGD", "APGD", "APGDT", "FMN", "Square"]
    assert [a.name for a in full.attacks] == ["APGD", "APGDT", "FMN", "Square"]
    # APGD-CE's first run and its 4 other restarts: 5 runs as in the full preset, other random starts.
    first, rest = adaptive.attacks[0], adaptive.attacks[1]
    assert (first.restarts, rest.restarts, first.seed, rest.seed) == (1, 4, 0, 1)
    assert adaptive.attacks[-1].queries == full.attacks[-1].queries == SQUARE_QUERIES["linf"]
    # Every member's full strength stays available, and named options reach the preset.
    assert get("standard", tm, budget="full").name == "standard[full]"
    assert standard(tm, strength=2).name == "standard x2" and standard(tm, budget="full", strength=2).name == "standard[full] x2"
    assert [a.name for a in standard(rl.ThreatModel("l1", 8.0)).attacks] == ["APGD", "APGD", "APGDT", "FMN"]
    # quick has one form
    assert standard(tm, version="quick").config() == standard(tm, version="quick", budget="full").config()
    assert rl.attacks.standard(tm).config()["triage"] == {"after": 0, "low": 0.3, "high": 0.9, "black_box_all": True}


def test_adaptive_standard_runs_end_to_end_in_the_ball(model, images):
    """The real preset (full-size members) on 8 digits; determinism and the rest of the contract:
    the property suite on the small version below."""
    x, y = images[0][:8], images[1][:8]
    tm = _tm()
    res = standard(tm, seed=1).attack(model, x, y)
    assert bool(tm.contains(res.x_adv, x).all())
    assert bool((res.x_adv >= 0).all() and (res.x_adv <= 1).all())
    ratio = res.info["margin_ratio"]
    assert torch.equal(res.info["settled"], (ratio > 0.3) & (ratio < 0.9))


def test_the_triage_passes_the_property_suite(model, batch):
    x, y = batch
    res = check_attack(lambda s: _mini(seed=s), model, x, y)
    assert bool(_tm().contains(res.x_adv, x).all())


def test_bad_triages_are_refused():
    tm = _tm()
    with pytest.raises(ValueError, match="low < high"):
        Triage(low=0.5, high=0.5)
    with pytest.raises(ValueError, match="low < high"):
        Triage(low=-0.1)
    with pytest.raises(ValueError, match="low must be a number"):
        Triage(low=float("nan"))
    with pytest.raises(ValueError, match="after must be an integer"):
        Triage(after=-1)
    with pytest.raises(ValueError, match="before the last one"):
        WorstCase([APGD(tm, steps=2), FMN(tm, steps=2)], triage=Triage(after=1))
    with pytest.raises(ValueError, match="fixed budget"):
        WorstCase([FMN("l2", steps=2), FMN("l2", steps=3)], triage=Triage(after=0))
    with pytest.raises(TypeError, match="Triage"):
        WorstCase([APGD(tm, steps=2), FMN(tm, steps=2)], triage=(0, 0.3, 0.9))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="budget must be one of adaptive, full"):
        standard(tm, budget="half")
