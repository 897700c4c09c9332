"""One registry shape for every kind robustlab knows by name (issue 21): register, get, available, describe."""

from __future__ import annotations

import pytest
import torch

import robustlab as rl
from robustlab.attacks.registry import ATTACKS
from robustlab.data import DATASETS
from robustlab.training.adversaries import ADVERSARIES
from robustlab.defenses.transforms import DEFENSES
from robustlab.evaluate import CERTIFIERS
from robustlab.models.registry import ARCHITECTURES
from robustlab.registry import Registry

KINDS = {"attack": ATTACKS, "architecture": ARCHITECTURES, "adversary": ADVERSARIES, "certifier": CERTIFIERS,
         "defense": DEFENSES, "dataset": DATASETS}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_one_registry_with_the_same_four_operations(kind):
    reg = KINDS[kind]
    assert isinstance(reg, Registry) and reg.kind == kind
    names = reg.available()
    assert names and list(reg) == list(names)
    for name in names:
        text = reg.describe(name)
        assert isinstance(text, str) and text.strip() and "\n" not in text, (name, text)
        assert name in reg and name.upper() in reg and reg.entry(name) is reg[name]
    with pytest.raises(ValueError, match=f"unknown {kind} 'no-such-thing'; expected one of {names[0]}"):
        reg.get("no-such-thing")
    with pytest.raises(KeyError):
        reg["no-such-thing"]


def test_get_builds_and_names_are_normalised():
    tm = rl.ThreatModel("linf", 0.1)
    assert isinstance(ATTACKS.get("PGD", tm, steps=3), rl.attacks.PGD) and ATTACKS.get("pgd", tm, steps=3).steps == 3
    net = ARCHITECTURES.get("small_cnn", 1, 10, (28, 28))
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert type(ADVERSARIES.get("noise", sigma=0.25)).__name__ == "GaussianNoise"
    assert DATASETS.get("MNIST").shape == (1, 28, 28) and CERTIFIERS.get("smoothing").certifies == "smoothed"


def test_register_replace_info_and_without():
    reg: Registry = Registry("widget")
    reg.register("My_Widget", lambda k=1: k * 2, "doubles", colour="red")
    assert reg.available() == ("my-widget",) and reg.get("my-widget", k=4) == 8 and reg.info("MY-WIDGET") == {"colour": "red"}
    with pytest.raises(ValueError, match="widget 'my-widget' is already registered; pass replace=True"):
        reg.register("my-widget", lambda: 0)
    reg.register("my-widget", lambda: 0, "zero", replace=True)
    assert reg.get("my-widget") == 0 and reg.describe("my-widget") == "zero"
    reg["other"] = len
    assert reg.describe("other").startswith("Return the number of items")  # the docstring's first paragraph
    smaller = reg.without("other")
    assert smaller.available() == ("my-widget",) and reg.available() == ("my-widget", "other")
    del reg["other"]
    assert "other" not in reg
    with pytest.raises(TypeError, match="widget name must be a non-empty string"):
        reg.register("", len)
