"""PGD-40 (linf, eps 0.3, step 0.01, random start) on the first N MNIST test images: robustlab vs
torchattacks, ART and Foolbox (those installed), same model, same images, one process.

    python benchmarks/bench_pgd.py [--n 1000] [--batch-size 250] [--repeats 2] [--model runs/mnist-cnn] [--threads 1]
        [--libraries robustlab,robustlab-fast,torchattacks,art,...] [--compile]

robustlab runs with its defaults and with its fast path (``fast=FastPath()``: bf16 autocast,
channels_last, success checked every 8 steps; ``--compile`` adds a row with ``torch.compile``,
whose first round includes the compilation), each with and without early stopping.

``--model`` names a saved robustlab model (default: the standard ``cnn`` in runs/mnist-cnn,
trained on first use); on an adversarially trained one most images stay robust, so the robust
accuracies are a real comparison of attack strength and early stopping saves little.

Prints images/s for each library, the ratio to robustlab, and the robust accuracies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import first_test_images, hardware, mnist_model, timed  # noqa: E402

import robustlab as rl  # noqa: E402

STEPS = 40
EPS, STEP = 0.3, 0.01  # set from --eps / --step in main()


def robustlab_pgd(model, x, y, bs, early_stop=True, fast=None):
    attack = rl.attacks.PGD(rl.ThreatModel("linf", EPS), steps=STEPS, step_size=STEP, seed=0, early_stop=early_stop,
                            fast=fast)
    robust = []
    for i in range(0, len(y), bs):
        robust.append(attack.attack(model, x[i : i + bs], y[i : i + bs]).robust)
    return torch.cat(robust)


def torchattacks_pgd(model, x, y, bs):
    import torchattacks

    atk = torchattacks.PGD(model, eps=EPS, alpha=STEP, steps=STEPS, random_start=True)
    robust = []
    for i in range(0, len(y), bs):
        xa = atk(x[i : i + bs], y[i : i + bs])
        with torch.no_grad():
            robust.append(model(xa).argmax(1) == y[i : i + bs])
    return torch.cat(robust)


def art_pgd(model, x, y, bs):
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    atk = ProjectedGradientDescent(clf, norm=np.inf, eps=EPS, eps_step=STEP, max_iter=STEPS, num_random_init=1,
                                   batch_size=bs, verbose=False)
    np.random.seed(0)  # ART draws its random start from numpy's global generator
    xa = torch.from_numpy(atk.generate(x.numpy(), y=y.numpy()))
    for p in model.parameters():  # ART back-propagates into the parameters; leave them as found
        p.grad = None
    with torch.no_grad():
        return torch.cat([model(c).argmax(1) for c in xa.split(bs)]) == y


def foolbox_pgd(model, x, y, bs):
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    atk = fb.attacks.LinfPGD(rel_stepsize=STEP / EPS, abs_stepsize=STEP, steps=STEPS, random_start=True)
    robust = []
    for i in range(0, len(y), bs):
        _, _, success = atk(fmodel, x[i : i + bs], y[i : i + bs], epsilons=EPS)
        robust.append(~success)
    return torch.cat(robust)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--model", default="runs/mnist-cnn", help="a saved robustlab model (default runs/mnist-cnn)")
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--step", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--libraries", default=None, help="comma-separated subset of the rows (default: all)")
    ap.add_argument("--compile", action="store_true", help="also time the fast path with torch.compile")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global EPS, STEP
    EPS, STEP = args.eps, args.step
    model = mnist_model(args.model) if args.model == "runs/mnist-cnn" else rl.models.load(args.model).eval()
    x, y = first_test_images(args.n)
    fast = rl.attacks.FastPath()
    runners = {
        "robustlab": robustlab_pgd,
        # All 40 steps on every image, as the peers do: the per-step cost without early stopping.
        "robustlab (no early stop)": lambda *a: robustlab_pgd(*a, early_stop=False),
        "robustlab fast": lambda *a: robustlab_pgd(*a, fast=fast),
        "robustlab fast (no early stop)": lambda *a: robustlab_pgd(*a, early_stop=False, fast=fast),
        # fp32 arithmetic, channels_last and deferred checks: the default's numbers, if the layout is exact.
        "robustlab fast fp32": lambda *a: robustlab_pgd(*a, fast=rl.attacks.FastPath(precision="fp32")),
        "torchattacks": torchattacks_pgd,
        "art": art_pgd,
        "foolbox": foolbox_pgd,
    }
    if args.compile:
        compiled = rl.attacks.FastPath(compile=True)
        runners["robustlab fast compile"] = lambda *a: robustlab_pgd(*a, fast=compiled)
    if args.libraries:
        wanted = [w.strip() for w in args.libraries.split(",") if w.strip()]
        keys = {k.replace(" ", "-").replace("(", "").replace(")", ""): k for k in runners}
        unknown = [w for w in wanted if w not in keys and w not in runners]
        if unknown:
            ap.error(f"--libraries: unknown {unknown}; choose from {sorted(keys)}")
        runners = {keys.get(w, w): runners[keys.get(w, w)] for w in wanted}
    # Interleaved rounds (every library once per round, best round kept), so a burst of other work
    # on the machine slows all libraries alike instead of whichever ran at that moment.
    best: dict = {}
    robust_of: dict = {}
    for _ in range(max(1, args.repeats)):
        for name, fn in runners.items():
            if name in best and best[name] is None:
                continue
            try:
                robust, seconds = timed(lambda: fn(model, x, y, args.batch_size), 1)
            except ImportError as exc:
                print(f"{name}: not installed ({exc}); skipped")
                best[name] = None
                continue
            best[name] = min(seconds, best.get(name) or float("inf"))
            robust_of[name] = robust
    rows = {name: {"images_per_s": args.n / sec, "seconds": sec, "robust_accuracy": float(robust_of[name].float().mean())}
            for name, sec in best.items() if sec is not None}
    print(f"PGD-{STEPS} linf eps={EPS} step={STEP}, first {args.n} MNIST test images, {args.model}; {hardware()}")
    peers = [p for p in ("torchattacks", "art") if p in rows]
    print(f"{'library':<32}{'images/s':>10}" + "".join(f"{'vs ' + p:>16}" for p in peers) + f"{'robust acc':>12}")
    for name, r in rows.items():
        r.update({f"vs_{p}": r["images_per_s"] / rows[p]["images_per_s"] for p in peers})
        print(f"{name:<32}{r['images_per_s']:>10.1f}" + "".join(f"{r['vs_' + p]:>15.2f}x" for p in peers)
              + f"{100 * r['robust_accuracy']:>11.2f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"hardware": hardware(), "n": args.n, "model": args.model, "eps": EPS,
                                                  "step": STEP, "steps": STEPS, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
