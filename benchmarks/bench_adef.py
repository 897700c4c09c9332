"""Deformation, universal and patch attacks on MNIST (issue 13): the paper anchors, measured.

* ADef (Alaifari, Alberti, Gauksson, ICLR 2019, arXiv:1804.07729, Table 1): on their MNIST CNN
  99.90% success in 9.779 iterations on average, deformations counted within ||tau||_T <= 3 px.
  Ours: the standard ``cnn`` (runs/mnist-cnn), first ``--n`` test images.
* Cross table (their Table 2): a PGD-trained model resists PGD (5.8% success) and ADef
  (6.7-20.4%), an ADef-trained one falls to PGD (100%). Ours: PGD-40 linf 0.3 and ADef within
  3 px (and the Spatial grid search) on the standard and PGD-trained models, and an ADef-trained
  small-cnn when ``--adef-model`` names one (train it with ``--train-adef``).
* Universal perturbation (Moosavi-Dezfooli et al. 2017, arXiv:1610.08401): fooling rate on
  held-out test images of a perturbation fitted on training images.
* Adversarial patch (Brown et al. 2017, arXiv:1712.09665): targeted success vs patch area on
  held-out test images, against a random patch of the same size.

    OMP_NUM_THREADS=2 flock /tmp/robustlab-heavy.lock python benchmarks/bench_adef.py --parts adef,cross,universal,patch

Each part writes benchmarks/results/deformation_<part>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import hardware  # noqa: E402

import robustlab as rl  # noqa: E402
from robustlab.attacks import ADef, AdversarialPatch, DeformationThreat, Spatial, UniversalPerturbation  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _save(args: argparse.Namespace, part: str, payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"part": part, "hardware": hardware(), "machine_shared": not args.quiet_machine, **payload}
    (RESULTS / f"deformation_{part}{args.tag}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2), flush=True)


def _batched(attack, model, x, y, bs=100):
    return rl.attacks.AttackResult.concat([attack.attack(model, x[i:i + bs], y[i:i + bs]) for i in range(0, x.shape[0], bs)])


def _summary(res, seconds: float) -> dict:
    correct = res.clean_correct
    found = res.success & correct
    nc = int(correct.sum())
    out = {"clean_accuracy": float(correct.float().mean()), "success_on_correct": int(found.sum()) / max(nc, 1),
           "robust_accuracy": res.robust_accuracy, "seconds": seconds}
    if res.norm == "deformation" and int(found.sum()):
        d = res.distance[found].double()
        out.update({"mean_iterations": float(res.iterations[found].double().mean()),
                    "tau_T_mean": float(d.mean()), "tau_T_median": float(d.median()), "tau_T_max": float(d.max()),
                    "success_within_3px_on_correct": int((found & (res.distance <= 3.0)).sum()) / max(nc, 1)})
    return out


def part_adef(args, x, y) -> None:
    model = rl.models.load(args.model).eval()
    att = ADef(steps=50, candidates=9, sigma=1.0, overshoot=0.1)
    t0 = time.perf_counter()
    res = _batched(att, model, x, y)
    s = _summary(res, time.perf_counter() - t0)
    central = _batched(ADef(steps=50, gradient="central", overshoot=0.1), model, x, y)
    _save(args, "adef", {"model": args.model, "n": int(x.shape[0]), "config": att.config(), "robustlab": s,
                   "central_differences": _summary(central, float("nan")),
                   "paper": {"success": 0.999, "mean_iterations": 9.779, "tau_T_line": 3.0}})


def part_cross(args, x, y) -> None:
    models = {"standard cnn": args.model, "PGD-trained": args.pgd_model}
    if args.adef_model and Path(args.adef_model).exists():
        models["ADef-trained"] = args.adef_model
    attacks = {
        "PGD-40 linf 0.3": rl.attacks.PGD(rl.ThreatModel("linf", 0.3), steps=40, step_size=0.01),
        "ADef <= 3 px": ADef(DeformationThreat(3.0), steps=50),
        "ADef <= 2 px": ADef(DeformationThreat(2.0), steps=50),  # the ADef-trained model's training budget
        "Spatial 30 deg 3 px": Spatial(),
    }
    table: dict = {}
    for mname, path in models.items():
        if not Path(path).exists():
            continue
        model = rl.models.load(path).eval()
        table[mname] = {"path": path}
        for aname, att in attacks.items():
            if isinstance(att, Spatial) and mname not in args.cross_spatial.split(","):
                continue  # the 775-transform grid: 30 s for 500 images on the larger cnn (2 threads)
            t0 = time.perf_counter()
            res = _batched(att, model, x, y)
            table[mname][aname] = _summary(res, time.perf_counter() - t0)
            print(mname, aname, table[mname][aname], flush=True)
    _save(args, "cross", {"n": int(x.shape[0]), "table": table,
                    "paper": {"PGD-trained": {"PGD": 0.0581, "ADef": [0.0667, 0.2035]},
                              "ADef-trained": {"PGD": 1.0, "ADef": [0.4507, 0.5416]}}})


def part_universal(args, x, y) -> None:
    model = rl.models.load(args.up_model).eval()
    train = rl.data.load("mnist", "train")
    xt = train.images[: args.n_fit]
    rows = []
    for norm, eps in ((c.split(":")[0], float(c.split(":")[1])) for c in args.universal_configs.split(",")):
        up = UniversalPerturbation(rl.ThreatModel(norm, eps), epochs=args.universal_epochs, batch_size=args.universal_batch, seed=0)
        t0 = time.perf_counter()
        v = up.fit(model, xt)
        secs = time.perf_counter() - t0
        g = torch.Generator().manual_seed(0)
        r = torch.randn(v.shape, generator=g)
        r = r.sign() * eps if norm == "linf" else r / r.norm() * eps
        rows.append({"norm": norm, "eps": eps, "held_out_fooling_rate": up.fooling_rate(model, x),
                     "train_fooling_rate": up.result_.train_fooling_rate, "random_same_size": rl.attacks.fooling_rate(model, x, r),
                     "size": float(v.abs().max() if norm == "linf" else v.flatten().norm()), "seconds": secs})
        print(rows[-1], flush=True)
    _save(args, "universal", {"model": args.up_model, "epochs": args.universal_epochs, "batch_size": args.universal_batch, "fit_images": int(xt.shape[0]), "held_out": int(x.shape[0]), "rows": rows})


def part_patch(args, x, y) -> None:
    model = rl.models.load(args.up_model).eval()
    train = rl.data.load("mnist", "train")
    xt = train.images[: args.n_fit]
    rows = []
    for side in (int(v) for v in args.patch_sides.split(",")):
        ap = AdversarialPatch(side, steps=args.patch_steps, batch_size=64, step_size=0.05, seed=0)
        t0 = time.perf_counter()
        patch = ap.fit(model, xt, args.target)
        secs = time.perf_counter() - t0
        noise = torch.rand(patch.shape, generator=torch.Generator().manual_seed(1))
        rows.append({"side": side, "area_fraction": side * side / (28 * 28), "target": args.target,
                     "targeted_success": ap.success_rate(model, x, y, draws=4),
                     "random_patch_success": ap.success_rate(model, x, y, patch=noise, draws=4), "seconds": secs})
        print(rows[-1], flush=True)
    _save(args, "patch", {"model": args.up_model, "fit_images": int(xt.shape[0]), "held_out": int(x.shape[0]),
                    "scale": [0.8, 1.2], "max_rotation_deg": 22.5, "steps": args.patch_steps, "rows": rows})


def train_adef(args) -> None:
    """ADef adversarial training of a small-cnn through the one training loop (``rl.training.train``
    with ``ADefAdversary``): the first ``--adef-train-size`` MNIST training images, validation on
    1,000 later training images, the settings of runs/mnist-pgd otherwise (Adam 3e-3, one-cycle,
    batch 128), the deformation budget ramped up over the first ``--adef-warmup`` epochs."""
    full = rl.data.load("mnist", "train")
    train, val = full.subset(args.adef_train_size), full[50_000:51_000]
    model = rl.models.create("small-cnn", full, seed=0)
    adv = rl.training.ADefAdversary(args.adef_train_norm, steps=args.adef_train_steps)
    t0 = time.perf_counter()
    res = rl.training.train(model, train, adversary=adv, epochs=args.adef_epochs, val_data=val, out=args.adef_model,
                            optimizer="adam", lr=3e-3, schedule="onecycle", batch_size=128,
                            eps_warmup_epochs=args.adef_warmup, progress=False)
    secs = time.perf_counter() - t0
    _save(args, "adef_training", {"model": args.adef_model, "adversary": adv.config(), "train_size": int(train.labels.shape[0]),
                            "epochs": args.adef_epochs, "eps_warmup_epochs": args.adef_warmup, "seconds": secs,
                            "history": getattr(res, "history", None)})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--parts", default="adef,cross,universal,patch")
    p.add_argument("--tag", default="", help="suffix of the result files (deformation_<part><tag>.json)")
    p.add_argument("--quiet-machine", action="store_true", help="record that nothing else ran during the run")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--n-fit", type=int, default=2000)
    p.add_argument("--model", default="runs/mnist-cnn")
    p.add_argument("--pgd-model", default="runs/mnist-pgd")
    p.add_argument("--adef-model", default="runs/mnist-adef")
    p.add_argument("--train-adef", action="store_true")
    p.add_argument("--adef-train-norm", type=float, default=2.0)
    p.add_argument("--adef-epochs", type=int, default=2)
    p.add_argument("--adef-train-size", type=int, default=10_000)
    p.add_argument("--adef-train-steps", type=int, default=10)
    p.add_argument("--adef-warmup", type=float, default=0.5)
    p.add_argument("--cross-n", type=int, default=None, help="images for the cross table (default --n)")
    p.add_argument("--cross-spatial", default="standard cnn,PGD-trained,ADef-trained",
                   help="models that also get the Spatial grid")
    p.add_argument("--up-model", default="runs/mnist-small-cnn", help="the standard model of the universal and patch parts")
    p.add_argument("--universal-batch", type=int, default=32)
    p.add_argument("--universal-configs", default="linf:0.1,linf:0.2,l2:3.0,l2:5.0")
    p.add_argument("--patch-sides", default="6,8,11,14")
    p.add_argument("--universal-epochs", type=int, default=3)
    p.add_argument("--patch-steps", type=int, default=300)
    p.add_argument("--target", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    test = rl.data.load("mnist", "test")
    x, y = test.images[: args.n].clone(), test.labels[: args.n].clone()
    if args.train_adef:
        train_adef(args)
    for part in [q for q in args.parts.split(",") if q]:
        if part == "cross" and args.cross_n is not None:
            part_cross(args, x[: args.cross_n], y[: args.cross_n])
            continue
        {"adef": part_adef, "cross": part_cross, "universal": part_universal, "patch": part_patch}[part](args, x, y)


if __name__ == "__main__":
    main()
