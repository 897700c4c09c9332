"""Issue 15 benchmark: PixelDP vs randomized smoothing (MNIST), nearest neighbour under adaptive
attacks (Fashion-MNIST), RBF vs linear output layers (MNIST).

    flock /tmp/robustlab-heavy.lock env OMP_NUM_THREADS=1 .venv/bin/python \\
        benchmarks/bench_pixeldp_knn_rbf.py --part all [--threads 1]

Each part writes its raw JSON to benchmarks/results/ (pixeldp_vs_smoothing.json,
knn_fmnist.json, rbf_mnist.json); docs/benchmarks/pixeldp-knn-rbf.md holds the table.

* pixeldp: two small-cnn models trained at matched noise: PixelDP with noise ``sigma`` after its
  sensitivity-normalised first layer (Delta_{2,2} <= 1, so pixel-space differences are not
  amplified before the noise) and a Gaussian-augmentation model smoothed with the same ``sigma``
  in pixel space; both certified on the same test images with the same number of draws and alpha.
* knn: pixel 1-NN on the 60,000 training images and deep kNN on the penultimate features of
  runs/fmnist-small-cnn; clean accuracy, robust accuracy at linf 0.1 under SurrogatePGD (PGD on
  the soft-kNN surrogate), BoundaryWalk (decision-based), robustlab's HopSkipJump and their
  per-image worst case; time per
  1000 queries (one batched forward of 1000 images).
* rbf: linear vs RBF output layer, shallow (on pixels, as the paper's anchor) and on small-cnn
  (linear heads trained with cross-entropy, RBF heads with cross-entropy plus their own per-class
  likelihood, gamma learned);
  clean accuracy, FGSM eps 0.25 error and mean confidence on the mistakes (the model's own
  probability: softmax for linear heads, the paper's exp(-gamma d^2) for RBF heads), PGD-40
  robust accuracy (CE and CW losses, worst case), epochs to converge, and the rubbish-input test
  (N(0, I) images classified with p > 0.5).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

import robustlab as rl
from robustlab.certificates import certified_accuracy
from robustlab.defenses.knn import BoundaryWalk, NearestNeighbor, SurrogatePGD
from robustlab.defenses.pixeldp import PixelDP, PixelDPNoise, check_recorded
from robustlab.training.adversaries import Adversary
from robustlab.models.rbf import RBFHead, rbf_confidence, rbf_nll, with_rbf_head

RESULTS = Path(__file__).parent / "results"


def _write(name: str, payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {RESULTS / name}", flush=True)


def _train_set(name: str, args: argparse.Namespace) -> rl.data.Dataset:
    data = rl.data.load(name, "train")
    return data.subset(args.train_n) if args.train_n else data


def _env(args: argparse.Namespace) -> dict:
    return {"threads": torch.get_num_threads(), "torch": torch.__version__, "machine": "shared (other helpers active)",
            "seed": args.seed}


# ------------------------------------------------------------------------------------------------
def part_pixeldp(args: argparse.Namespace) -> None:
    sigma, eps, delta = args.sigma, 1.0, 0.05
    L = sigma * eps / math.sqrt(2 * math.log(1.25 / delta))  # the construction size giving noise sigma
    train = _train_set("mnist", args)
    test = rl.data.load("mnist", "test")
    x, y = test.images[: args.n_images], test.labels[: args.n_images]
    radii = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    out: dict = {"env": _env(args), "sigma": sigma, "eps": eps, "delta": delta, "L": L, "n": args.draws,
                 "alpha": args.alpha, "images": len(y), "epochs": args.epochs, "radii": radii}

    t0 = time.perf_counter()
    base_dp = rl.models.create("small-cnn", train, seed=args.seed)
    # trained as `robustlab train --adversary pixeldp` trains: the noise from the loop's seeded generator
    rl.training.train(base_dp, train, adversary=PixelDPNoise(eps, delta, L), epochs=args.epochs, batch_size=128,
                      lr=3e-3, progress=False, seed=args.seed)
    params, _ = check_recorded(base_dp.metadata, {})  # the construction the model records
    pdp = PixelDP(base_dp, **params.to_dict(), seed=args.seed).eval()
    out["pixeldp_train_seconds"] = time.perf_counter() - t0
    assert abs(pdp.noise_scale - sigma) < 1e-9
    t0 = time.perf_counter()
    cert = pdp.certify(x, n=args.draws, alpha=args.alpha, seed=args.seed)
    out["pixeldp_certify_seconds"] = time.perf_counter() - t0
    out["pixeldp_clean_accuracy"] = float((pdp.predict(x, n=300, seed=args.seed + 1) == y).double().mean())
    out["pixeldp_certified_accuracy"] = certified_accuracy(cert, y, radii).tolist()
    out["pixeldp_sensitivity"] = cert.info["sensitivity"]
    out["pixeldp_sensitivity_saved_weights"] = cert.info["sensitivity_saved_weights"]
    out["pixeldp_radius_max"] = float(cert.radius.max())
    print("pixeldp", out["pixeldp_certified_accuracy"], flush=True)

    t0 = time.perf_counter()
    base_rs = rl.models.create("small-cnn", train, seed=args.seed)
    rl.training.train(base_rs, train, adversary=rl.training.GaussianNoise(sigma), epochs=args.epochs, batch_size=128,
                      lr=3e-3, progress=False, seed=args.seed)
    base_rs.eval()
    out["smoothing_train_seconds"] = time.perf_counter() - t0
    smoothed = rl.defenses.Smoothed(base_rs, sigma, seed=args.seed)
    t0 = time.perf_counter()
    # CERTIFY spends n0 = 100 selection draws on top; the estimate uses the same n as PixelDP.
    rs = smoothed.certify(x, 100, args.draws, args.alpha)
    out["smoothing_certify_seconds"] = time.perf_counter() - t0
    out["smoothing_clean_accuracy"] = float((smoothed.predict(x, 300, args.alpha) == y).double().mean())
    out["smoothing_certified_accuracy"] = certified_accuracy(rs, y, radii).tolist()
    print("smoothing", out["smoothing_certified_accuracy"], flush=True)
    _write("pixeldp_vs_smoothing.json", out)


# ------------------------------------------------------------------------------------------------
def _timed_forward(model: nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        model(x)
    return time.perf_counter() - t0


def part_knn(args: argparse.Namespace) -> None:
    train = _train_set("fashion_mnist", args)
    test = rl.data.load("fashion_mnist", "test")
    tm = rl.ThreatModel("linf", 0.1)
    x_clean, y_clean = test.images[:1000], test.labels[:1000]
    x, y = test.images[: args.knn_images], test.labels[: args.knn_images]
    feature_model = rl.models.load(args.feature_model).eval()
    out: dict = {"env": _env(args), "eps": tm.eps, "norm": "linf", "clean_images": 1000, "attack_images": len(y),
                 "feature_model": args.feature_model, "index_size": int(train.images.shape[0])}
    out["cnn_clean_accuracy"] = float((feature_model(x_clean).argmax(1) == y_clean).double().mean())
    models = {
        "pixel-1nn": NearestNeighbor(train, k=1),
        "deep-5nn": NearestNeighbor(train, space="features", k=5, feature_model=feature_model),
    }
    for name, knn in models.items():
        rec: dict = {}
        rec["seconds_per_1000_queries"] = _timed_forward(knn, x_clean)
        with torch.no_grad():
            rec["clean_accuracy"] = float((knn(x_clean).argmax(1) == y_clean).double().mean())
        t0 = time.perf_counter()
        pgd = SurrogatePGD(tm, steps=args.pgd_steps, restarts=1, seed=args.seed).attack(knn, x, y)
        rec["surrogate_pgd_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        walk = BoundaryWalk(tm, train, iterations=args.walk_iterations, directions=args.walk_directions,
                            seed=args.seed).attack(knn, x, y)
        rec["boundary_walk_seconds"] = time.perf_counter() - t0
        rec["boundary_walk_mean_queries"] = float(walk.queries.double().mean())
        rec["attacked_clean_accuracy"] = float(pgd.clean_correct.double().mean())
        rec["robust_surrogate_pgd"] = float(pgd.robust.double().mean())
        rec["robust_boundary_walk"] = float(walk.robust.double().mean())
        robust = pgd.robust & walk.robust
        if args.hsj_queries:  # robustlab's HopSkipJump (Chen et al. 2020), labels only
            t0 = time.perf_counter()
            hsj = rl.attacks.registry.get("hopskipjump", tm, queries=args.hsj_queries, seed=args.seed).attack(knn, x, y)
            rec["hopskipjump_seconds"] = time.perf_counter() - t0
            rec["hopskipjump_queries"] = args.hsj_queries
            rec["robust_hopskipjump"] = float(hsj.robust.double().mean())
            robust &= hsj.robust
        rec["robust_worst_case"] = float(robust.double().mean())
        out[name] = rec
        print(name, rec, flush=True)
    _write("knn_fmnist.json", out)


# ------------------------------------------------------------------------------------------------
def _shallow(train: rl.data.Dataset, head: str, gamma: float) -> nn.Module:
    """Softmax regression or the shallow RBF network on (standardised) pixels."""
    d = int(torch.tensor(train.images.shape[1:]).prod())
    layer: nn.Module = nn.Linear(d, 10) if head == "linear" else RBFHead(d, 10, gamma, learn_gamma=True,
                                                                         generator=torch.Generator().manual_seed(0))
    return rl.models.Normalize(nn.Sequential(nn.Flatten(), layer), train.mean, train.std)


class RBFLikelihood(Adversary):
    """Clean training on cross-entropy (orders the classes) plus the RBF head's own per-class
    likelihood (:func:`robustlab.models.rbf.rbf_nll`, calibrates ``exp(z)``)."""

    name = "rbf-nll"

    def loss_and_logits(self, model, x, y, *, generator, eps_scale=1.0):
        logits = model(x)
        return nn.functional.cross_entropy(logits, y) + rbf_nll(logits, y), logits

    def loss(self, model, x, y, *, generator, eps_scale=1.0):
        return self.loss_and_logits(model, x, y, generator=generator)[0]


def _confidence(model: nn.Module, logits: torch.Tensor, rbf: bool) -> torch.Tensor:
    """The model's own probability of its prediction."""
    return rbf_confidence(logits).max(1).values if rbf else torch.softmax(logits, 1).max(1).values


def part_rbf(args: argparse.Namespace) -> None:
    train = _train_set("mnist", args)
    test = rl.data.load("mnist", "test")
    x, y = test.images[: args.rbf_images], test.labels[: args.rbf_images]
    val = test.subset(2000)
    fgsm_tm, pgd_tm = rl.ThreatModel("linf", 0.25), rl.ThreatModel("linf", 0.25)
    noise = torch.randn(1000, 1, 28, 28, generator=torch.Generator().manual_seed(args.seed))  # N(0, I) rubbish
    out: dict = {"env": _env(args), "images": len(y), "fgsm_eps": 0.25, "pgd": "PGD-40 linf 0.25, CE and CW, worst case",
                 "rubbish": "1000 images x ~ N(0, I), unclipped (paper App. A)", "gamma_shallow": args.gamma_shallow,
                 "gamma_cnn": args.gamma_cnn}
    configs = {
        "shallow-linear": (lambda: _shallow(train, "linear", 0.0), False, args.shallow_epochs),
        "shallow-rbf": (lambda: _shallow(train, "rbf", args.gamma_shallow), True, args.shallow_epochs),
        "small-cnn-linear": (lambda: rl.models.create("small-cnn", train, seed=args.seed), False, args.epochs),
        "small-cnn-rbf": (lambda: with_rbf_head(rl.models.create("small-cnn", train, seed=args.seed),
                                                args.gamma_cnn, learn_gamma=True, seed=args.seed), True, args.epochs),
    }
    for name, (make, rbf, epochs) in configs.items():
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            model = make()
        t0 = time.perf_counter()
        res = rl.training.train(model, train, adversary=RBFLikelihood() if rbf else None, epochs=epochs,
                                batch_size=128, lr=3e-3, val_data=val, progress=False, seed=args.seed,
                                select_best=False)
        model.eval()
        rec: dict = {"train_seconds": time.perf_counter() - t0, "epochs": epochs}
        hist = [h.get("val_accuracy") for h in res.history]
        rec["val_accuracy_per_epoch"] = hist
        final = hist[-1]
        rec["epochs_to_converge"] = next(i + 1 for i, a in enumerate(hist) if a is not None and a >= final - 0.005)
        with torch.no_grad():
            logits = model(x)
            rec["clean_accuracy"] = float((logits.argmax(1) == y).double().mean())
            rec["clean_mean_confidence"] = float(_confidence(model, logits, rbf).mean())
        adv = rl.attacks.FGSM(fgsm_tm).attack(model, x, y)
        with torch.no_grad():
            adv_logits = model(adv.x_adv)
        wrong = adv_logits.argmax(1) != y
        rec["fgsm_error"] = float(wrong.double().mean())
        rec["fgsm_mean_confidence_on_mistakes"] = float(_confidence(model, adv_logits, rbf)[wrong].mean()) if bool(wrong.any()) else None
        robust = torch.ones_like(y, dtype=torch.bool)
        for loss in ("ce", "cw"):
            r = rl.attacks.PGD(pgd_tm, steps=40, loss=loss, seed=args.seed).attack(model, x, y)
            rec[f"pgd_{loss}_robust_accuracy"] = float(r.robust.double().mean())
            robust &= r.robust
        rec["pgd_robust_accuracy"] = float(robust.double().mean())
        with torch.no_grad():
            p = _confidence(model, model(noise), rbf)
        rec["rubbish_fraction_p_gt_0.5"] = float((p > 0.5).double().mean())
        rec["rubbish_mean_confidence"] = float(p.mean())
        out[name] = rec
        print(name, rec, flush=True)
    _write("rbf_mnist.json", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("pixeldp", "knn", "rbf", "all"), default="all")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-n", type=int, default=None, help="first N training images only (smoke runs)")
    ap.add_argument("--epochs", type=int, default=2, help="small-cnn training epochs (pixeldp, smoothing, rbf)")
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--n-images", type=int, default=200)
    ap.add_argument("--feature-model", default="runs/fmnist-small-cnn")
    ap.add_argument("--knn-images", type=int, default=100)
    ap.add_argument("--pgd-steps", type=int, default=20)
    ap.add_argument("--walk-iterations", type=int, default=8)
    ap.add_argument("--walk-directions", type=int, default=25)
    ap.add_argument("--hsj-queries", type=int, default=200, help="HopSkipJump label queries per image (0: skip)")
    ap.add_argument("--rbf-images", type=int, default=1000)
    ap.add_argument("--shallow-epochs", type=int, default=3)
    ap.add_argument("--gamma-shallow", type=float, default=0.01)
    ap.add_argument("--gamma-cnn", type=float, default=0.1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for part, fn in (("pixeldp", part_pixeldp), ("knn", part_knn), ("rbf", part_rbf)):
        if args.part in (part, "all"):
            t0 = time.perf_counter()
            fn(args)
            print(f"part {part}: {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
