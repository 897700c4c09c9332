"""APGD-L1 (Croce & Hein 2021, "Mind the box", arXiv:2103.01208): robustlab vs pyautoattack.

Same model, same first N MNIST test images, same budget: APGD-CE with ``norm="L1"``, 100
iterations, ``--restarts`` (1), seed 0, at each l1 radius of ``--eps``. Reported per library and radius:
robust accuracy (recomputed here from the model's predictions on each library's output, with every
output checked to lie in the l1 ball and in [0, 1]), wall seconds, and their ratio. ``--variants
plain,large``: also with the large-eps schedule (3 eps -> 2 eps -> eps; robustlab's
``large_eps=True``, pyautoattack's ``use_largereps=True``, as both run APGD in their l1 ``standard``).

    OMP_NUM_THREADS=2 flock /tmp/robustlab-heavy.lock python benchmarks/bench_apgd_l1.py \
        --model runs/mnist-cnn --n 500 --eps 2,5,10 --json benchmarks/results/apgd_l1_mnist_cnn.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import first_test_images, hardware  # noqa: E402

import robustlab as rl  # noqa: E402


def _evaluate(model, x, y, x_adv, eps, seconds):
    """Robust accuracy recomputed from the model, and the output checked against ball and box."""
    x_adv = x_adv.detach().to(x.dtype).reshape(x.shape)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        robust = model(x_adv).argmax(1) == y
    l1 = (x_adv - x).flatten(1).abs().sum(dim=1)
    return {
        "robust_accuracy": float((correct & robust).float().mean()),
        "clean_accuracy": float(correct.float().mean()),
        "max_l1": float(l1.max()),
        "in_ball": bool((l1 <= eps * (1 + 1e-4) + 1e-4).all()),
        "in_box": bool(((x_adv >= 0) & (x_adv <= 1)).all()),
        "seconds": seconds,
    }


def run_robustlab(model, x, y, eps, steps, seed, restarts=1, large_eps=False):
    attack = rl.attacks.APGD(rl.ThreatModel("l1", eps), steps=steps, loss="ce", seed=seed, restarts=restarts,
                             large_eps=large_eps)
    t0 = time.perf_counter()
    res = attack.attack(model, x, y)
    return _evaluate(model, x, y, res.x_adv, eps, time.perf_counter() - t0)


def run_pyautoattack(model, x, y, eps, steps, seed, restarts=1, large_eps=False):
    from pyautoattack.autopgd_base import APGDAttack

    attack = APGDAttack(model, n_iter=steps, norm="L1", eps=eps, seed=seed, loss="ce", n_restarts=restarts,
                        device=x.device, use_largereps=large_eps)
    t0 = time.perf_counter()
    x_adv = attack.perturb(x.clone(), y.clone())
    return _evaluate(model, x, y, x_adv, eps, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/mnist-cnn")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--eps", default="2,5,10", help="comma-separated l1 radii")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--variants", default="plain", help="plain and/or large (the large-eps schedule)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    model = rl.models.load(args.model).eval()
    x, y = first_test_images(args.n)
    rows = []
    for eps, variant in ((float(e), v) for e in args.eps.split(",") for v in args.variants.split(",")):
        large = {"plain": False, "large": True}[variant]
        ours = run_robustlab(model, x, y, eps, args.steps, args.seed, args.restarts, large)
        peer = run_pyautoattack(model, x, y, eps, args.steps, args.seed, args.restarts, large)
        row = {
            "eps": eps,
            "large_eps": large,
            "robustlab": ours,
            "pyautoattack": peer,
            "robust_accuracy_gap_points": 100 * (ours["robust_accuracy"] - peer["robust_accuracy"]),
            "time_ratio_robustlab_over_pyautoattack": ours["seconds"] / peer["seconds"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {
        "benchmark": "apgd_l1",
        "model": args.model,
        "n": args.n,
        "steps": args.steps,
        "restarts": args.restarts,
        "loss": "ce",
        "seed": args.seed,
        "hardware": hardware(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
