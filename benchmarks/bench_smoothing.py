"""Randomized-smoothing certification: robustlab vs ART's RandomizedSmoothing (a port of Cohen et
al.'s code), same models, same images, one process, interleaved so both see the same CPU load.

    python benchmarks/bench_smoothing.py [--models runs/mnist-small-cnn-noise0.25:0.25,demo:mnist-noise:0.25,...]
        [--n-images 100] [--n0 100] [--n 10000] [--alpha 0.001] [--batch-size 1000]
        [--chunk 10] [--threads 1] [--no-art] [--art-batch-sizes 1000,32] [--fast]
        [--out benchmarks/results/smoothing_cpu.json]

``demo:NAME`` is a model shipped for the demo (:mod:`robustlab.demo_models`, e.g. ``mnist-noise``).
For every model: certified accuracy at radii 0, 0.25, 0.5, 0.75, 1.0 and seconds per image of
ART's ``certify`` (at its default batch size 32 and at robustlab's), robustlab's ``certify``
(fixed n, Cohen's CERTIFY), optionally its bf16 fast path, and robustlab's ``certify_adaptive``
(n_max = n, radii of interest = the same radii), and the model evaluations per image of each. Images are processed in chunks of ``--chunk``, each chunk by every method in
turn, so that load from other processes affects them alike.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import hardware  # noqa: E402

import robustlab as rl  # noqa: E402
from robustlab._io import atomic_write_text  # noqa: E402
from robustlab.certificates import Certificate, certified_accuracy  # noqa: E402
from robustlab.defenses.smoothing import Smoothed  # noqa: E402

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def art_certifier(model: torch.nn.Module, sigma: float, n0: int, alpha: float, shape: tuple, classes: int):
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    return PyTorchRandomizedSmoothing(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=shape,
                                      nb_classes=classes, sample_size=n0, scale=sigma, alpha=alpha,
                                      clip_values=(0.0, 1.0), device_type="cpu")


def art_certificate(pred: np.ndarray, radius: np.ndarray, alpha: float) -> Certificate:
    """ART returns (class or -1, radius); it abstains when pA_lower < 1/2 (robustlab: <= 1/2)."""
    p = torch.as_tensor(pred, dtype=torch.long)
    abstain = p < 0
    r = torch.where(abstain, torch.zeros(len(p), dtype=torch.float64), torch.as_tensor(radius, dtype=torch.float64))
    return Certificate(p, r.clamp_min(0), abstain, "l2", alpha)


def load_model(path: str) -> torch.nn.Module:
    """A saved robustlab model, or ``demo:NAME``, a model shipped for the demo."""
    if path.startswith("demo:"):
        from robustlab import demo_models

        return demo_models.load(path[len("demo:"):]).eval()
    return rl.models.load(path).eval()


def run_model(path: str, sigma: float, args: argparse.Namespace) -> dict:
    model = load_model(path)
    dataset = model.metadata.get("dataset", "mnist")
    test = rl.data.load(dataset, "test")
    x, y = test.images[: args.n_images].clone(), test.labels[: args.n_images].clone()
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).double().mean())
    smoothed = Smoothed(model, sigma, batch_size=args.batch_size, seed=0)
    methods = {
        "robustlab": lambda xc: smoothed.certify(xc, args.n0, args.n, args.alpha),
        "robustlab-adaptive": lambda xc: smoothed.certify_adaptive(xc, args.n0, args.n, args.alpha, radius=RADII),
    }
    if args.fast:
        traced = Smoothed(model, sigma, batch_size=args.batch_size, seed=0, optimize=True)
        methods["robustlab-optimize"] = lambda xc: traced.certify(xc, args.n0, args.n, args.alpha)
        bf16 = Smoothed(model, sigma, batch_size=args.batch_size, seed=0, fast="bf16")  # autocast + channels_last
        methods["robustlab-bf16"] = lambda xc: bf16.certify(xc, args.n0, args.n, args.alpha)
    if not args.no_art:
        art = art_certifier(model, sigma, args.n0, args.alpha, tuple(x.shape[1:]), 10)
        for bs in args.art_batch_sizes:
            methods[f"art-batch{bs}"] = lambda xc, bs=bs: art_certificate(
                *art.certify(xc.numpy(), n=args.n, batch_size=bs), args.alpha)
    np.random.seed(0)  # ART draws its noise from numpy's global generator
    seconds = {k: 0.0 for k in methods}
    certs: dict[str, list[Certificate]] = {k: [] for k in methods}
    for start in range(0, len(y), args.chunk):
        xc = x[start : start + args.chunk]
        for name, fn in methods.items():
            t0 = time.perf_counter()
            certs[name].append(fn(xc))
            seconds[name] += time.perf_counter() - t0
        print(f"  {path}: {min(start + args.chunk, len(y))}/{len(y)} images", file=sys.stderr, flush=True)
    out = {"model": path, "dataset": dataset, "sigma": sigma, "clean_accuracy": clean, "methods": {}}
    for name, parts in certs.items():
        if not parts:
            continue
        cert = Certificate.concat(parts)
        evals = float(cert.samples.double().mean()) if cert.samples is not None else float(args.n0 + args.n)
        out["methods"][name] = {
            "certified_accuracy": [round(v, 4) for v in certified_accuracy(cert, y, RADII).tolist()],
            # predictions and the counts of the predicted class: equal digests = the same votes (across versions)
            "votes_sha256": hashlib.sha256(cert.prediction.cpu().numpy().tobytes()
                                           + cert.count.cpu().numpy().tobytes()).hexdigest()
            if cert.count is not None else None,
            "seconds_per_image": seconds[name] / len(y),
            "evaluations_per_image": evals,
            "abstain": float(cert.abstain.double().mean()),
        }
        if name == "robustlab-adaptive":
            out["methods"][name]["stop"] = _stops(parts)
    return out


def _stops(parts: list[Certificate]) -> dict:
    total: dict[str, int] = {}
    for c in parts:
        for k, v in c.info.get("stop", {}).items():
            total[k] = total.get(k, 0) + v
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="runs/mnist-small-cnn-noise0.25:0.25,runs/fmnist-small-cnn-noise0.25:0.25",
                    help="comma-separated PATH:SIGMA pairs")
    ap.add_argument("--n-images", type=int, default=100)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-art", action="store_true")
    ap.add_argument("--art-batch-sizes", default="1000,32",
                    help="ART certify batch sizes to time (32 is ART's default)")
    ap.add_argument("--fast", action="store_true",
                    help="also time robustlab's fast paths (optimize=True; fast='bf16': bf16 autocast + channels_last)")
    ap.add_argument("--out", default="benchmarks/results/smoothing_cpu.json")
    args = ap.parse_args()
    args.art_batch_sizes = [int(v) for v in args.art_batch_sizes.split(",") if v.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for spec in args.models.split(","):
        path, sigma = spec.rsplit(":", 1)
        res = run_model(path, float(sigma), args)
        results.append(res)
        print(f"\n{path} (sigma {sigma}, {args.n_images} images, clean accuracy {res['clean_accuracy']:.4f})")
        print(f"{'method':<20}" + "".join(f"  r={r:<5}" for r in RADII) + "   s/image  evals/image")
        for name, m in res["methods"].items():
            print(f"{name:<20}" + "".join(f"  {v:7.3f}" for v in m["certified_accuracy"])
                  + f"  {m['seconds_per_image']:8.3f}  {m['evaluations_per_image']:10.0f}")
        for name, m in res["methods"].items():
            if name.startswith("art"):
                ratio = m["seconds_per_image"] / res["methods"]["robustlab"]["seconds_per_image"]
                print(f"robustlab certify is {ratio:.2f}x faster per image than {name}")
        fixed = res["methods"]["robustlab"]["evaluations_per_image"]
        adapt = res["methods"]["robustlab-adaptive"]["evaluations_per_image"]
        print(f"adaptive: {fixed / adapt:.2f}x fewer model evaluations than fixed n")
    payload = {"hardware": hardware(), "torch": torch.__version__, "n_images": args.n_images, "n0": args.n0,
               "n": args.n, "alpha": args.alpha, "batch_size": args.batch_size, "radii": list(RADII),
               "results": results}
    atomic_write_text(Path(args.out), json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
