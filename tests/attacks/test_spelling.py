"""One spelling per idea in attack constructors; the old spellings work for one release, with a warning."""

from __future__ import annotations

import warnings

import pytest
import robustlab as rl
from robustlab.attacks import FGSM, PGD, BIM, CarliniWagner, NATTACK, Square, AdversarialPatch

TM = rl.ThreatModel("linf", 0.1)


@pytest.mark.parametrize("old, new", [
    (lambda: PGD(TM, 7, 0.01), lambda: PGD(TM, steps=7, step_size=0.01)),
    (lambda: BIM(TM, 5), lambda: BIM(TM, steps=5)),
    (lambda: Square(TM, 300), lambda: Square(TM, queries=300)),
    (lambda: FGSM(TM, random_start=True, step=0.05), lambda: FGSM(TM, random_start=True, step_size=0.05)),
    (lambda: CarliniWagner("l2", lr=0.05), lambda: CarliniWagner("l2", step_size=0.05)),
    (lambda: NATTACK(TM, 3000, lr=0.05), lambda: NATTACK(TM, queries=3000, step_size=0.05)),
    (lambda: AdversarialPatch(4, lr=0.2), lambda: AdversarialPatch(4, step_size=0.2)),
])
def test_old_spellings_warn_and_build_the_same_attack(old, new):
    with pytest.warns(DeprecationWarning, match="deprecated"):
        a = old()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = new()
    assert type(a) is type(b) and sorted(map(str, vars(a).items())) == sorted(map(str, vars(b).items()))


def test_keywords_after_the_threat_model_and_step_size_everywhere():
    with pytest.raises(TypeError, match="threat model and then keywords only"):
        PGD(TM, 7, 0.01, True)
    with pytest.raises(TypeError, match="both 'lr' .* and 'step_size'"):
        CarliniWagner("l2", lr=0.1, step_size=0.1)
    with pytest.raises(TypeError, match="'steps' both by position and by keyword"):
        PGD(TM, 7, steps=8)
    for attack in (FGSM(TM), PGD(TM), CarliniWagner("l2"), NATTACK(TM), AdversarialPatch(4)):
        assert isinstance(attack.step_size, float)
    assert FGSM(TM).step_size == pytest.approx(0.1)  # default: eps
