"""``robustlab certify --model M --sigma 0.25 --n 100000 --alpha 0.001 --radii 0,0.25,0.5,0.75,1``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from robustlab.cli.evaluate import parse_floats


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("certify", help="randomized-smoothing L2 certificates (Cohen et al. 2019)")
    p.add_argument("--model", required=True, help="a saved robustlab model (trained with Gaussian noise)")
    p.add_argument("--sigma", type=float, required=True)
    p.add_argument("--n0", type=int, default=100, help="samples to select the class")
    p.add_argument("--n", type=int, default=100_000, help="samples to estimate pA (n_max when --adaptive)")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--radii", type=parse_floats, default=(0.0, 0.25, 0.5, 0.75, 1.0))
    p.add_argument("--adaptive", action="store_true", help="stop sampling early per image (union bound over looks)")
    p.add_argument("--dataset", default=None, help="default: the dataset in the model's metadata")
    p.add_argument("--n-images", type=int, default=100, help="certify the first N test images")
    p.add_argument("--batch-size", type=int, default=4096, help="(image, noise) pairs per forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="JSON file (default out/certify/<model>.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustlab import data, models
    from robustlab._io import atomic_write_text
    from robustlab.certificates import certified_accuracy
    from robustlab.defenses.smoothing import Smoothed

    model = models.load(args.model, map_location=args.device or "cpu")
    name = args.dataset or model.metadata.get("dataset")
    if not name:
        raise ValueError(f"{args.model} records no dataset; pass --dataset")
    if args.n_images < 1:
        raise ValueError(f"--n-images must be >= 1, got {args.n_images}")
    test = data.load(name, "test").subset(args.n_images)
    x, y = test.images.to(args.device or "cpu"), test.labels.to(args.device or "cpu")
    smoothed = Smoothed(model, args.sigma, batch_size=args.batch_size, seed=args.seed)
    t0 = time.perf_counter()
    if args.adaptive:
        cert = smoothed.certify_adaptive(x, args.n0, args.n, args.alpha, radius=args.radii)
    else:
        cert = smoothed.certify(x, args.n0, args.n, args.alpha)
    seconds = time.perf_counter() - t0
    curve = certified_accuracy(cert, y, args.radii).tolist()
    print(f"{name}: {len(y)} images, sigma={args.sigma}, n0={args.n0}, n={args.n}, alpha={args.alpha}"
          f"{' (adaptive)' if args.adaptive else ''}; {seconds / len(y):.3f} s per image, "
          f"{float(cert.samples.float().mean()):.0f} noise samples per image on average")
    print(f"{'radius':>8}  certified accuracy")
    for r, acc in zip(args.radii, curve):
        print(f"{r:>8.3g}  {acc:.4f}")
    out = Path(args.out) if args.out else Path("out") / "certify" / (Path(args.model).name + ".json")
    payload = {"model": str(args.model), "dataset": name, "sigma": args.sigma, "n0": args.n0, "n": args.n, "alpha": args.alpha,
               "adaptive": args.adaptive, "seconds": seconds, "radii": list(args.radii), "certified_accuracy": curve,
               "labels": y.tolist(), "certificate": cert.to_dict()}
    atomic_write_text(out, json.dumps(payload) + "\n")
    print(f"wrote {out}")
    return 0
