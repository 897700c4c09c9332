"""PixelDP: the calibration, Proposition 1's radius (against Cohen et al. 2019, Appendix I), the
bounded sensitivity of the normalised first layer, and certificates on digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as st
from torch import nn

import robustlab as rl
from robustlab.certificates import Certificate, certified_accuracy
from robustlab.defenses.pixeldp import (
    ExpectedScores,
    PixelDP,
    PixelDPNoise,
    check_recorded,
    gaussian_sigma,
    hoeffding_bounds,
    laplace_scale,
    max_radius_gaussian,
    max_radius_laplace,
    robust_condition,
)

SATURATION = 1.0 / math.sqrt(2.0 * math.log(1.25 * (1.0 + math.e)))  # eps = 1, delta -> 1 / (1 + e)


def _brute_radius(p_a: float, p_b: float, sigma: float) -> float:
    eps = np.linspace(1e-6, 1.0, 200_001)
    delta = (p_a - np.exp(2 * eps) * p_b) / (1 + np.exp(eps))
    ok = delta > 0
    r = np.zeros_like(eps)
    r[ok] = sigma * eps[ok] / np.sqrt(2 * np.log(1.25 / delta[ok]))
    return float(r.max())


# -- the radius formula -------------------------------------------------------------------------

def test_radius_reproduces_cohen_appendix_i():
    """Cohen et al. 2019, App. I: sigma = 1, pB = 1 - pA, delta chosen optimally (the largest
    Proposition 1 allows) and eps <= 1 (the Gaussian mechanism's range)."""
    p_a = torch.tensor([0.9, 0.99], dtype=torch.float64)
    r = max_radius_gaussian(p_a, 1 - p_a, 1.0)
    assert r[0].item() == pytest.approx(0.390, abs=5e-4)
    assert r[1].item() == pytest.approx(0.555, abs=5e-4)
    assert st.norm.ppf(0.9) == pytest.approx(1.282, abs=5e-4)  # smoothing's radius at the same pA
    near_one = max_radius_gaussian(torch.tensor(1 - 1e-9), torch.tensor(1e-9), 1.0).item()
    assert near_one == pytest.approx(0.57, abs=2e-3) and near_one <= SATURATION + 1e-9


def test_radius_matches_brute_force_and_scales_with_sigma():
    for p_a, p_b in [(0.6, 0.4), (0.75, 0.1), (0.9, 0.1), (0.97, 0.02), (0.999, 0.0)]:
        got = max_radius_gaussian(torch.tensor(p_a), torch.tensor(p_b), 1.0).item()
        assert got == pytest.approx(_brute_radius(p_a, p_b, 1.0), rel=1e-6, abs=1e-9)
        assert max_radius_gaussian(torch.tensor(p_a), torch.tensor(p_b), 2.5).item() == pytest.approx(2.5 * got)


def test_radius_monotone_in_gap_and_below_smoothing():
    p_a = torch.linspace(0.5, 0.99999, 200, dtype=torch.float64)
    r = max_radius_gaussian(p_a, 1 - p_a, 1.0)
    assert bool((r[1:] >= r[:-1] - 1e-12).all())
    assert r[0].item() == 0.0  # pA = pB: nothing certified
    assert bool((r <= torch.from_numpy(st.norm.ppf(p_a.numpy())) + 1e-12).all())  # smoothing is tighter
    # a smaller runner-up bound never shrinks the radius
    p_b = torch.linspace(0.3, 0.0, 50, dtype=torch.float64)
    r_b = max_radius_gaussian(torch.full_like(p_b, 0.7), p_b, 1.0)
    assert bool((r_b[1:] >= r_b[:-1] - 1e-12).all())


def test_radius_satisfies_proposition_1():
    """The returned radius comes with an (eps, delta) pair of the same noise satisfying Prop. 1."""
    sigma = 0.8
    for p_a, p_b in [(0.8, 0.15), (0.95, 0.03)]:
        r = max_radius_gaussian(torch.tensor(p_a), torch.tensor(p_b), sigma).item()
        eps = np.linspace(1e-4, 1.0, 20_001)
        delta = 1.25 * np.exp(-0.5 * (sigma * eps / (0.999 * r)) ** 2)  # the delta giving size 0.999 r
        ok = [bool(robust_condition(torch.tensor(p_a), torch.tensor(p_b), float(e), float(d)))
              for e, d in zip(eps[::100], delta[::100])]
        assert any(ok)
        assert gaussian_sigma(1.0, 0.05, 1.0) == pytest.approx(math.sqrt(2 * math.log(25)))


def test_laplace_radius_closed_form():
    p_a, p_b = torch.tensor([0.8, 0.5, 0.9]), torch.tensor([0.1, 0.5, 0.0])
    r = max_radius_laplace(p_a, p_b, 0.5)
    assert r[0].item() == pytest.approx(0.5 * 0.5 * math.log(8.0))
    assert r[1].item() == 0.0 and math.isinf(r[2].item())
    assert laplace_scale(2.0, 0.3) == pytest.approx(0.15)


def test_hoeffding_bounds_width():
    mean = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
    lo, hi = hoeffding_bounds(mean, 1000, 0.05)
    t = math.sqrt(math.log(6 / 0.05) / 2000)
    assert lo[0, 0].item() == pytest.approx(0.7 - t) and hi[0, 1].item() == pytest.approx(0.2 + t)
    assert lo[0, 2].item() == pytest.approx(max(0.0, 0.1 - t))


# -- the noise layer's sensitivity ----------------------------------------------------------------

def _wrapped(net: nn.Module, std: float) -> nn.Module:
    return rl.models.Normalize(net, [0.3], [std])


@pytest.mark.parametrize("kind", ["conv", "conv-stride", "linear"])
def test_noise_layer_sensitivity_bounded_after_normalisation(kind):
    torch.manual_seed(0)
    if kind == "linear":
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    else:
        stride = 2 if kind == "conv-stride" else 1
        net = nn.Sequential(nn.Conv2d(1, 8, 3, stride=stride, padding=1), nn.ReLU(), nn.Flatten(),
                            nn.LazyLinear(10))
        net(torch.zeros(1, 1, 8, 8))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(7.0)  # far above sensitivity 1 before normalisation
    model = _wrapped(net, 0.25).double()
    raw = [p.detach().clone() for p in model.parameters()]
    pdp = PixelDP(model, eps=1.0, delta=0.05, L=0.2)
    assert pdp.layer_sensitivity().item() <= 1.0 + 1e-9

    # The first layer is affine in the pixels: its matrix, column by column, from the 64 unit
    # pixel perturbations (bias and mean cancel in the differences); its exact spectral norm.
    base = torch.full((1, 1, 8, 8), 0.5, dtype=torch.float64)
    pixels = torch.eye(64, dtype=torch.float64).reshape(64, 1, 8, 8)
    with torch.no_grad():
        jac = (pdp.pre_noise(base + pixels) - pdp.pre_noise(base)).reshape(64, -1)  # (in, out)
    measured = torch.linalg.matrix_norm(jac, ord=2).item()
    assert measured <= 1.0 + 1e-6
    assert measured >= 0.3  # the bound is not vacuous: normalisation does not kill the layer
    # l1 attacks: one pixel's response has l2 norm (Gaussian) or l1 norm (Laplace) <= 1
    for mech, q in (("gaussian", 2), ("laplace", 1)):
        pdp1 = PixelDP(model, eps=1.0, L=0.2, norm="l1", mechanism=mech)
        diff = (pdp1.pre_noise(base + 0.5 * pixels) - pdp1.pre_noise(base.expand(64, -1, -1, -1))).reshape(64, -1)
        assert float(torch.linalg.vector_norm(diff.detach(), ord=q, dim=1).max()) <= 0.5 + 1e-9
        assert pdp1.layer_sensitivity().item() <= 1.0 + 1e-9
    # the caller's raw weights are not touched
    assert all(torch.equal(a, p) for a, p in zip(raw, model.parameters()))


# -- the defended model on digits ---------------------------------------------------------------

@pytest.fixture(scope="module")
def pixeldp_digits(digits_train):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = rl.models.create("small-cnn", digits_train)
        pdp = PixelDP(model, eps=1.0, delta=0.05, L=0.1, seed=0)
        g = torch.Generator().manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        pdp.train()
        x, y = digits_train.images, digits_train.labels
        for _ in range(6):
            perm = torch.randperm(x.shape[0], generator=g)
            for i in range(0, x.shape[0], 64):
                idx = perm[i : i + 64]
                opt.zero_grad()
                nn.functional.cross_entropy(pdp(x[idx]), y[idx]).backward()
                opt.step()
    for p in model.parameters():
        p.grad = None
    return pdp.eval()


def test_certificate_on_digits(pixeldp_digits, digits_test):
    pdp = pixeldp_digits
    x, y = digits_test.images[:40], digits_test.labels[:40]
    cert = pdp.certify(x, n=300, alpha=0.05, seed=1)
    assert isinstance(cert, Certificate) and cert.norm == "l2" and cert.alpha == 0.05
    assert cert.info["method"] == "pixeldp" and cert.info["sensitivity"] <= 1.0 + 1e-6
    assert float(cert.radius.max()) <= SATURATION * pdp.noise_scale + 1e-9
    acc0 = certified_accuracy(cert, y, [0.0, pdp.L / 2]).tolist()
    assert acc0[0] >= 0.6  # most digits certified at some radius
    assert acc0[1] > 0.0
    # Prop. 1 at the construction (eps, delta) implies the construction size is certified
    at_l = robust_condition(cert.p_lower, cert.p_upper, pdp.eps, pdp.delta)
    assert bool((pdp.robust_at_L(cert) | ~at_l).all())
    assert torch.equal(pdp.robust_at_L(cert), ~cert.abstain & (cert.radius >= pdp.L))
    # expected-softmax prediction agrees with the certified class where certified
    pred = pdp.predict(x, n=300, seed=1)
    assert torch.equal(pred[~cert.abstain], cert.prediction[~cert.abstain])
    assert float((pred == y).double().mean()) >= 0.8
    again = pdp.certify(x, n=300, alpha=0.05, seed=1)
    assert torch.equal(again.radius, cert.radius)
    # Clopper-Pearson on argmax counts: also a valid certificate
    cp = pdp.certify(x, n=300, alpha=0.05, scores="argmax", seed=1)
    assert cp.info["bound"] == "clopper-pearson" and bool((cp.p_lower[~cp.abstain] > cp.p_upper[~cp.abstain]).all())


def test_more_draws_do_not_shrink_typical_radius(pixeldp_digits, digits_test):
    x = digits_test.images[:20]
    small = pixeldp_digits.certify(x, n=50, alpha=0.05, seed=3)
    large = pixeldp_digits.certify(x, n=800, alpha=0.05, seed=3)
    assert float(large.radius.mean()) > float(small.radius.mean())


def test_forward_modes(pixeldp_digits, digits_test):
    pdp = pixeldp_digits
    x = digits_test.images[:5]
    out = pdp(x)
    assert out.shape == (5, 10) and torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-5)
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(pdp(x_req).sum(), x_req)
    assert grad.abs().sum() > 0
    pdp.train()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            a, b = pdp(x), pdp(x)
    finally:
        pdp.eval()
    assert not torch.equal(a, b)  # a fresh draw per training forward


def test_laplace_l1_certificate(pixeldp_digits, digits_test):
    lap = PixelDP(pixeldp_digits.base, eps=1.0, L=0.5, norm="l1", mechanism="laplace", seed=0)
    cert = lap.certify(digits_test.images[:10], n=200, alpha=0.05, seed=0)
    assert cert.norm == "l1" and cert.info["delta"] == 0.0
    ok = ~cert.abstain
    expect = lap.noise_scale * 0.5 * torch.log(cert.p_lower[ok] / cert.p_upper[ok])
    assert torch.allclose(cert.radius[ok], expect.double())


@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=0.0), "eps"), (dict(eps=1.5), "eps"), (dict(eps=-1.0), "eps"), (dict(delta=0.0), "delta"),
    (dict(delta=1.0), "delta"), (dict(L=0.0), "L"), (dict(L=-0.1), "L"), (dict(norm="linf"), "norm"),
    (dict(mechanism="laplace", norm="l1", delta=0.1), "delta"), (dict(mechanism="laplace"), "l2"),
    (dict(mechanism="exponential"), "mechanism"), (dict(n_forward=0), "n_forward"),
])
def test_bad_parameters_refused(digits_train, kwargs, match):
    model = rl.models.create("mlp", digits_train, seed=0)
    with pytest.raises(ValueError, match=match):
        PixelDP(model, **kwargs)


def test_bad_certify_arguments_and_models(pixeldp_digits, digits_train, digits_test):
    x = digits_test.images[:2]
    with pytest.raises(ValueError, match="n must be"):
        pixeldp_digits.certify(x, n=0)
    with pytest.raises(TypeError, match="n must be"):
        pixeldp_digits.certify(x, n=10.5)
    with pytest.raises(ValueError, match="alpha"):
        pixeldp_digits.certify(x, n=10, alpha=1.0)
    with pytest.raises(ValueError, match="scores"):
        pixeldp_digits.certify(x, n=10, scores="mean")
    with pytest.raises(ValueError, match="x"):
        pixeldp_digits.certify(x * 3, n=10)
    with pytest.raises(TypeError, match="Sequential"):
        PixelDP(rl.models.create("resnet18", digits_train))
    with pytest.raises(TypeError, match="Module"):
        PixelDP("model")  # type: ignore[arg-type]


def test_trains_through_the_training_loop(digits_train):
    model = rl.models.create("mlp", digits_train, seed=0)
    pdp = PixelDP(model, eps=1.0, delta=0.05, L=0.1)
    small = digits_train.subset(256)
    res = rl.training.train(pdp, small, epochs=1, batch_size=64, progress=False, seed=0)
    assert res.history and pdp.layer_sensitivity().item() <= 1.0 + 1e-6


def test_certify_cli_pixeldp(pixeldp_digits, tmp_path, capsys):
    import json

    from robustlab.cli import main

    path = tmp_path / "pdp"
    rl.models.save(pixeldp_digits.base, path, metadata={"dataset": "digits", "pixeldp": pixeldp_digits.record()})
    out = tmp_path / "cert.json"
    assert main(["certify", "--model", str(path), "--method", "pixeldp", "--eps", "1", "--delta", "0.05", "--L", "0.1",
                 "--n", "200", "--n-images", "6", "--radii", "0,0.05", "--out", str(out), "--no-progress"]) == 0
    payload = json.loads(out.read_text())
    assert payload["method"] == "pixeldp" and payload["certificate"]["info"]["method"] == "pixeldp"
    assert len(payload["per_image"]) == 6
    assert main(["certify", "--model", str(path), "--method", "pixeldp", "--eps", "2", "--n", "10",
                 "--n-images", "2", "--out", str(tmp_path / "x.json"), "--no-progress"]) != 0
    assert "eps" in capsys.readouterr().err


# -- what a PixelDP-trained model records, and certification that checks it ---------------------

@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_saved_sensitivity_is_in_input_pixel_units(kind):
    # x -> (x - mean) / std -> W: a pixel change d moves the first layer by W (d / std), so the
    # sensitivity in pixel units is that of W with its input columns divided by their channel's std
    torch.manual_seed(0)
    std = torch.tensor([0.5, 0.25, 2.0], dtype=torch.float64)
    if kind == "linear":
        net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 10)).double()
        w = net[1].weight.detach()
        expect = torch.linalg.matrix_norm(w / std.repeat_interleave(16)[None, :], ord=2)
        expect_l1 = (w / std.repeat_interleave(16)[None, :]).norm(dim=0).max()  # largest l2 column
    else:
        net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 2 * 2, 10)).double()
        w = net[0].weight.detach() / std.reshape(1, 3, 1, 1)
        expect = math.sqrt(math.ceil(3 / 2) ** 2) * torch.linalg.matrix_norm(w.reshape(8, -1), ord=2)
        expect_l1 = w.transpose(0, 1).reshape(3, -1).norm(dim=1).max()  # all weights reading one channel
    model = rl.models.Normalize(net, [0.1, 0.2, 0.3], std.tolist())
    pdp = PixelDP(model, eps=1.0, delta=0.05, L=0.1)
    assert pdp.saved_sensitivity().item() == pytest.approx(float(expect), rel=1e-9)
    assert PixelDP(model, L=0.1, norm="l1").saved_sensitivity().item() == pytest.approx(float(expect_l1), rel=1e-9)
    # without the Normalize the same weights are in pixel units already
    bare = PixelDP(net, eps=1.0, delta=0.05, L=0.1).saved_sensitivity().item()
    raw = net[1].weight if kind == "linear" else net[0].weight
    mat = raw.detach().reshape(raw.shape[0], -1)
    factor = 1.0 if kind == "linear" else 2.0
    assert bare == pytest.approx(factor * float(torch.linalg.matrix_norm(mat, ord=2)), rel=1e-9)
    rec = pdp.record()
    assert rec["sensitivity_saved_weights"] == pytest.approx(float(expect), rel=1e-9)
    assert rec["sensitivity"] <= 1.0 + 1e-9 and rec["noise_layer"] == ("net.1" if kind == "linear" else "net.0")


@pytest.fixture(scope="module")
def trained_pixeldp(digits_train, digits_test, tmp_path_factory):
    """small-cnn trained through the one loop with the PixelDP adversary, saved and loaded."""
    model = rl.models.create("small-cnn", digits_train, seed=0)
    res = rl.training.train(model, digits_train, adversary=PixelDPNoise(1.0, 0.05, 0.2), epochs=10, lr=3e-3,
                            batch_size=64, progress=False, seed=0, val_data=digits_test, test_data=digits_test)
    path = tmp_path_factory.mktemp("pixeldp") / "model"
    rl.models.save(model, path)
    return res, path


def test_training_records_the_noise_layer_and_measures_the_pixeldp_classifier(trained_pixeldp, digits_test):
    res, path = trained_pixeldp
    model = rl.models.load(path)
    rec = model.metadata["pixeldp"]
    assert (rec["eps"], rec["delta"], rec["L"], rec["norm"], rec["mechanism"]) == (1.0, 0.05, 0.2, "l2", "gaussian")
    assert rec["noise_layer"] == "net.0.0" and rec["noise_layer_type"] == "Conv2d"
    assert rec["noise_scale"] == pytest.approx(gaussian_sigma(1.0, 0.05, 0.2))
    assert rec["sensitivity"] <= 1.0 + 1e-6 and rec["sensitivity_saved_weights"] > 0
    assert model.metadata["training"]["adversary"]["name"] == "pixeldp"
    # the recorded accuracies are those of the PixelDP prediction (8 draws), not of the bare network
    pdp = PixelDP(model, **check_recorded(model.metadata, {})[0].to_dict())
    judged = rl.models.metrics.accuracy(ExpectedScores(pdp, 8), digits_test)
    assert model.metadata["metrics"]["test_accuracy"] == pytest.approx(judged)
    assert judged >= 0.7, judged
    # a later run without the noise drops the record: it no longer describes the weights
    rl.training.train(model, digits_test.subset(64), epochs=1, progress=False, seed=0)
    assert "pixeldp" not in model.metadata


def test_pixeldp_noise_draws_from_the_loops_generator(digits_train):
    model = rl.models.create("mlp", digits_train, seed=0).train()
    adv = PixelDPNoise(1.0, 0.05, 0.1)
    x, y = digits_train.images[:16], digits_train.labels[:16]
    a = adv.loss(model, x, y, generator=torch.Generator().manual_seed(3))
    b = adv.loss(model, x, y, generator=torch.Generator().manual_seed(3))
    c = adv.loss(model, x, y, generator=torch.Generator().manual_seed(4))
    assert a.item() == b.item() and a.item() != c.item()
    (g,) = torch.autograd.grad(a, [model.net[1].weight])  # through the rescaling to the raw weights
    assert g.abs().sum() > 0
    assert not model.net[1]._forward_hooks  # the noise hook is gone after the pass


def test_certify_checks_the_recorded_pixeldp_training(trained_pixeldp, digits_train, tmp_path, capsys):
    import json

    from robustlab.cli import main

    _, path = trained_pixeldp
    out = tmp_path / "cert.json"
    common = ["--n", "100", "--n-images", "4", "--alpha", "0.05", "--radii", "0,0.05", "--no-progress"]
    assert main(["certify", "--model", str(path), "--method", "pixeldp", "--out", str(out), *common]) == 0
    text = capsys.readouterr().out
    assert "after net.0.0" in text and "as saved" in text
    doc = json.loads(out.read_text())
    assert doc["pixeldp"]["L"] == 0.2 and doc["pixeldp"]["trained_with_pixeldp"] and not doc["pixeldp"]["warnings"]
    assert doc["sigma"] == pytest.approx(gaussian_sigma(1.0, 0.05, 0.2))
    # the same values spelled out are accepted (--eps is the old spelling of --dp-eps)
    assert main(["certify", "--model", str(path), "--method", "pixeldp", "--eps", "1", "--delta", "0.05", "--L", "0.2",
                 "--out", str(out), *common]) == 0
    capsys.readouterr()
    for flag, value, field in (("--dp-eps", "0.5", "pixeldp.eps"), ("--L", "0.1", "pixeldp.L"),
                               ("--delta", "0.01", "pixeldp.delta"), ("--norm", "l1", "pixeldp.norm")):
        assert main(["certify", "--model", str(path), "--method", "pixeldp", flag, value, "--out", str(out),
                     *common]) != 0
        err = capsys.readouterr().err
        assert field in err and flag in err and "--force-pixeldp" in err
    assert main(["certify", "--model", str(path), "--method", "pixeldp", "--L", "0.1", "--force-pixeldp",
                 "--out", str(out), *common]) == 0
    assert "warning (--force-pixeldp)" in capsys.readouterr().out
    assert json.loads(out.read_text())["pixeldp"]["forced"]
    # a model trained without the noise is refused
    plain = tmp_path / "plain"
    rl.models.save(rl.models.create("small-cnn", digits_train, seed=0), plain, metadata={"dataset": "digits"})
    assert main(["certify", "--model", str(plain), "--method", "pixeldp", "--out", str(out), *common]) != 0
    err = capsys.readouterr().err
    assert "not trained with PixelDP noise" in err and "--force-pixeldp" in err
    assert main(["certify", "--model", str(plain), "--method", "pixeldp", "--force-pixeldp", "--out", str(out),
                 *common]) == 0
    # PixelDP options without --method pixeldp are an error, not ignored
    assert main(["certify", "--model", str(path), "--sigma", "0.25", "--L", "0.2", "--out", str(out), *common]) != 0
    assert "--L" in capsys.readouterr().err


@pytest.mark.parametrize("field, value", [("eps", "1"), ("norm", 2), ("L", None), ("delta", True)])
def test_malformed_pixeldp_record_names_the_field(field, value):
    record = {"eps": 1.0, "delta": 0.05, "L": 0.1, "norm": "l2", "mechanism": "gaussian", field: value}
    with pytest.raises(ValueError, match=rf"pixeldp\.{field}"):
        check_recorded({"pixeldp": record}, {})
    with pytest.raises(ValueError, match="'pixeldp' must be an object"):
        check_recorded({"pixeldp": [1, 2]}, {})
    with pytest.raises(ValueError, match="invalid construction"):
        check_recorded({"pixeldp": {**record, field: 1.0 if field != "norm" else "l2", "eps": 3.0}}, {})


def test_pixeldp_noise_trains_through_the_distributed_route(monkeypatch, digits_train):
    # Under torchrun the loop hands the adversary its RouteDDP: the noise hook must sit on the bare
    # model's layer and the pass go through DDP (whose reducer then all-reduces the gradients).
    import socket

    from robustlab import distributed
    from robustlab.training.parallel import wrap_ddp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    try:
        model = rl.models.create("mlp", digits_train, seed=0)
        x, y = digits_train.images[:16], digits_train.labels[:16]
        adv = PixelDPNoise(1.0, 0.05, 0.1)
        plain = adv.loss(model.train(), x, y, generator=torch.Generator().manual_seed(1))
        (g_plain,) = torch.autograd.grad(plain, [model.net[1].weight])
        model, route = wrap_ddp(model, torch.device("cpu"))
        route.train()
        loss = adv.loss(route, x, y, generator=torch.Generator().manual_seed(1))
        loss.backward()
        assert loss.item() == pytest.approx(plain.item(), rel=1e-6)
        torch.testing.assert_close(model.net[1].weight.grad, g_plain, rtol=1e-5, atol=1e-7)
        assert not model.net[1]._forward_hooks
        route.close()
    finally:
        distributed.cleanup()
