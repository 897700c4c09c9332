"""The paper anchors of issue 4 on MNIST, measured with robustlab on the standard ``cnn``:

* Carlini & Wagner 2017 (arXiv:1608.04644, Table IV, MNIST, average case = a random target
  class): L2 1.76, Linf 0.13/0.16, L0 16 pixels (mean over successful targeted attacks);
* Moosavi-Dezfooli et al. 2016 (arXiv:1511.04599, Table 1, MNIST LeNet): DeepFool's mean
  relative perturbation ``rho = ||r||_2 / ||x||_2`` = 0.20.

    python benchmarks/bench_cw_anchors.py [--n 100] [--n-slow 20] [--parts l2,deepfool,linf,l0]

Different networks than the papers' (ours: runs/mnist-cnn, 99.25%), so these are anchors, not
targets: the same order of magnitude says the attacks implement the papers' objectives.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import first_test_images, hardware, mnist_model  # noqa: E402

import robustlab as rl  # noqa: E402


def _targets(y: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """A uniformly random class other than the label (the papers' "average case")."""
    g = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, k, y.shape, generator=g)
    return (y + shift) % k


def _run(name, attack, model, x, y, target, metric):
    t0 = time.perf_counter()
    res = attack.attack(model, x, y, target=target)
    seconds = time.perf_counter() - t0
    ok = res.success & res.clean_correct
    values = metric(res.x_adv, x)[ok]
    row = {"n": int(x.shape[0]), "success": float(ok.float().mean()), "mean": float(values.mean()),
           "median": float(values.median()), "seconds": seconds}
    print(f"{name:<26} n={row['n']:>4}  success {100 * row['success']:6.1f}%  mean {row['mean']:.4f}  "
          f"median {row['median']:.4f}  {seconds:7.1f} s", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="images for CW-L2 and DeepFool")
    ap.add_argument("--n-slow", type=int, default=20, help="images for CW-Linf and CW-L0")
    ap.add_argument("--parts", default="l2,deepfool,linf,l0")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = mnist_model()
    x, y = first_test_images(max(args.n, args.n_slow))
    t = _targets(y, 10)
    l2 = lambda a, b: (a - b).flatten(1).norm(dim=1)  # noqa: E731
    linf = lambda a, b: (a - b).flatten(1).abs().amax(dim=1)  # noqa: E731
    l0 = lambda a, b: ((a - b).flatten(1).abs() > 1e-3).sum(dim=1).float()  # noqa: E731
    rho = lambda a, b: l2(a, b) / b.flatten(1).norm(dim=1)  # noqa: E731
    rows = {}
    parts = args.parts.split(",")
    n, m = args.n, args.n_slow
    if "deepfool" in parts:
        atk = rl.attacks.DeepFool("l2")
        rows["deepfool rho"] = _run("DeepFool L2, rho", atk, model, x[:n], y[:n], None, rho)
    if "l2" in parts:
        atk = rl.attacks.CarliniWagner("l2")  # the paper's settings: 1000 steps, lr 0.01, 9 binary-search steps
        rows["cw-l2 targeted"] = _run("CW-L2, random target", atk, model, x[:n], y[:n], t[:n], l2)
    if "linf" in parts:
        atk = rl.attacks.CarliniWagnerLinf("linf", steps=100, step_size=0.05)
        rows["cw-linf targeted"] = _run("CW-Linf, random target", atk, model, x[:m], y[:m], t[:m], linf)
    if "l0" in parts:
        atk = rl.attacks.CarliniWagnerL0("l0", steps=200, step_size=0.1)
        rows["cw-l0 targeted"] = _run("CW-L0, random target (pixels)", atk, model, x[:m], y[:m], t[:m], l0)
    if args.json:
        Path(args.json).write_text(json.dumps({"hardware": hardware(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
