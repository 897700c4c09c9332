"""Certificates: the shared per-sample record and the certified-accuracy curve."""

from __future__ import annotations

import json
import math

import pytest
import torch

from robustlab.certificates import Certificate, certified_accuracy


def _cert(**kw) -> Certificate:
    base = dict(prediction=torch.tensor([0, 1, -1, 2, 1]),
                radius=torch.tensor([0.6, 0.2, 0.0, 1.0, 0.75], dtype=torch.float64),
                abstain=torch.tensor([False, False, True, False, False]), norm="l2", alpha=0.001)
    base.update(kw)
    return Certificate(**base)


def test_certified_accuracy_by_hand():
    labels = torch.tensor([0, 1, 1, 0, 1])
    # correct & certified: samples 0 (0.6), 1 (0.2), 4 (0.75); sample 3 is certified but wrong; 2 abstains.
    acc = certified_accuracy(_cert(), labels, [0.0, 0.2, 0.5, 0.75, 1.0])
    assert acc.tolist() == pytest.approx([3 / 5, 3 / 5, 2 / 5, 1 / 5, 0.0])
    assert acc.dtype == torch.float64 and acc.shape == (5,)
    assert certified_accuracy(_cert(), labels, 0.7).tolist() == pytest.approx([1 / 5])


def test_certified_accuracy_is_non_increasing_in_the_radius():
    g = torch.Generator().manual_seed(0)
    n = 200
    abstain = torch.rand(n, generator=g) < 0.2
    pred = torch.where(abstain, torch.full((n,), -1), torch.randint(0, 3, (n,), generator=g))
    radius = torch.where(abstain, torch.zeros(n), torch.rand(n, generator=g)).double()
    labels = torch.randint(0, 3, (n,), generator=g)
    acc = certified_accuracy(Certificate(pred, radius, abstain), labels, torch.linspace(0, 1, 21))
    assert bool((acc[1:] <= acc[:-1]).all())
    assert float(acc[0]) == pytest.approx(float(((pred == labels) & ~abstain).double().mean()))


def test_deterministic_certificates_use_alpha_zero_and_may_be_infinite():
    cert = Certificate(torch.tensor([3, 4]), torch.tensor([math.inf, 0.1], dtype=torch.float64),
                       torch.tensor([False, False]), norm="linf")
    assert cert.alpha == 0.0 and len(cert) == 2
    assert certified_accuracy(cert, torch.tensor([3, 4]), [0.5, 10.0]).tolist() == [0.5, 0.5]
    record = json.loads(json.dumps(cert.to_dict()))
    assert record["radius"][0] == "inf"
    back = Certificate.from_dict(record)
    assert math.isinf(float(back.radius[0])) and back.norm == "linf" and back.prediction.tolist() == [3, 4]


def test_concat_select_and_round_trip():
    a = _cert(samples=torch.full((5,), 10100), count=torch.arange(5), p_lower=torch.linspace(0.4, 0.9, 5).double())
    both = Certificate.concat([a, a.select([0, 3])])
    assert len(both) == 7 and both.prediction.tolist() == [0, 1, -1, 2, 1, 0, 2]
    assert both.samples is not None and both.samples.tolist() == [10100] * 7
    mask = a.select(a.certified)
    assert len(mask) == 4 and not bool(mask.abstain.any())
    back = Certificate.from_dict(json.loads(json.dumps(a.to_dict())))
    assert torch.equal(back.prediction, a.prediction) and torch.equal(back.abstain, a.abstain)
    assert torch.allclose(back.radius, a.radius) and back.count is not None and back.count.tolist() == [0, 1, 2, 3, 4]
    assert back.alpha == a.alpha and back.p_upper is None


def test_concat_refuses_mixed_guarantees():
    with pytest.raises(ValueError, match="cannot join"):
        Certificate.concat([_cert(), _cert(alpha=0.01)])
    with pytest.raises(ValueError, match="at least one"):
        Certificate.concat([])


@pytest.mark.parametrize(
    "kw, err, message",
    [
        (dict(radius=torch.tensor([0.6, 0.2, 0.0, 1.0], dtype=torch.float64)), ValueError, "shape"),
        (dict(prediction=torch.tensor([0, 1, 2, 2, 1])), ValueError, "-1 exactly where abstain"),
        (dict(radius=torch.tensor([0.6, 0.2, 0.3, 1.0, 0.7], dtype=torch.float64)), ValueError, "0 where abstain"),
        (dict(radius=torch.tensor([-0.1, 0.2, 0.0, 1.0, 0.7], dtype=torch.float64)), ValueError, ">= 0"),
        (dict(norm="l3"), ValueError, "norm must be one of"),
        (dict(alpha=1.0), ValueError, "alpha must be in"),
        (dict(abstain=torch.tensor([0, 0, 1, 0, 0])), TypeError, "bool"),
        (dict(radius=torch.tensor([1, 0, 0, 1, 0])), TypeError, "floating-point"),
        (dict(prediction=[0, 1, -1, 2, 1]), TypeError, "must be a torch.Tensor"),
    ],
)
def test_inconsistent_certificates_are_refused(kw, err, message):
    with pytest.raises(err, match=message):
        _cert(**kw)


def test_certified_accuracy_bad_input():
    cert = _cert()
    with pytest.raises(ValueError, match="shape"):
        certified_accuracy(cert, torch.tensor([0, 1]), [0.0])
    with pytest.raises(TypeError, match="integer"):
        certified_accuracy(cert, torch.zeros(5), [0.0])
    with pytest.raises(ValueError, match=">= 0"):
        certified_accuracy(cert, torch.zeros(5, dtype=torch.long), [-0.5])
    with pytest.raises(ValueError, match="at least one radius"):
        certified_accuracy(cert, torch.zeros(5, dtype=torch.long), [])
    with pytest.raises(TypeError, match="Certificate"):
        certified_accuracy({"radius": [1.0]}, torch.zeros(1, dtype=torch.long), [0.0])  # type: ignore[arg-type]
