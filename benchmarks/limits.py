"""Throughput as a fraction of the device's limit: PGD (fast path vs torchattacks) and smoothing.

    python benchmarks/limits.py [--arch resnet18] [--size 32] [--batch 2048] [--steps 10]
        [--peak-tflops 989] [--device cuda] [--batches 3] [--smoothing-samples 200000]
        [--json benchmarks/results/limits_<device>.json]

FLOPs per image of one forward + input-gradient backward come from torch's FLOP counter
(``torch.utils.flop_counter.FlopCounterMode``, matrix products and convolutions); the limit is
``peak FLOP/s / FLOPs per image per step``, and each throughput is reported as a fraction of it.
``--peak-tflops`` is the device's dense bf16 peak (H100 SXM: 989); without it only the FLOPs and
the images/s are printed (a CPU has no single published figure). Random weights and random
images: throughput does not depend on them, and no early stop is used (every image runs every
step). Smoothing: forward-only FLOPs, samples/s of ``Smoothed.sample_counts`` with the fast path,
and the seconds per image it implies at N = 100,000 (+ n0 = 100).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import hardware  # noqa: E402

import robustlab as rl  # noqa: E402
from robustlab.attacks import PGD, FastPath  # noqa: E402
from robustlab.defenses.smoothing import Smoothed  # noqa: E402


def flops_per_image(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, backward: bool) -> float:
    """FLOPs of one forward (and, with ``backward``, one input-gradient backward) per image."""
    counter = FlopCounterMode(display=False)
    with counter:
        if backward:
            xa = x.detach().requires_grad_(True)
            # backward(inputs=...) rather than autograd.grad: the counter's module hooks refuse the latter.
            F.cross_entropy(model(xa), y, reduction="sum").backward(inputs=[xa])
        else:
            with torch.no_grad():
                model(x)
    return counter.get_total_flops() / x.shape[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call (compilation, autotuning)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s")
    ap.add_argument("--batches", type=int, default=2, help="timed repeats (best kept)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile in the fast path (default: on for cuda, off for cpu)")
    ap.add_argument("--smoothing-samples", type=int, default=0, help="noise samples to time (0: skip smoothing)")
    ap.add_argument("--no-torchattacks", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    model = rl.models.create(args.arch, num_classes=10, in_channels=args.channels, input_size=args.size, seed=0)
    model = model.to(dev).eval()
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.rand(args.batch, args.channels, args.size, args.size, generator=g, device=dev)
    y = torch.randint(0, 10, (args.batch,), generator=g, device=dev)
    step_flops = flops_per_image(model, x[:8], y[:8], backward=True)
    compile_ = args.compile if args.compile is not None else dev.type == "cuda"
    fast = FastPath(compile=compile_, check_every=args.steps)
    tm = rl.ThreatModel("linf", args.eps)
    runs = {
        "robustlab fast": PGD(tm, steps=args.steps, step_size=args.eps / 4, early_stop=False, fast=fast),
        "robustlab": PGD(tm, steps=args.steps, step_size=args.eps / 4, early_stop=False),
    }
    rows: dict = {}
    for name, attack in runs.items():
        sec = time_it(lambda: attack.attack(model, x, y), dev, args.batches)
        rows[name] = {"images_per_s": args.batch / sec}
    if not args.no_torchattacks:
        import torchattacks

        atk = torchattacks.PGD(model, eps=args.eps, alpha=args.eps / 4, steps=args.steps, random_start=True)
        sec = time_it(lambda: atk(x, y), dev, args.batches)
        rows["torchattacks"] = {"images_per_s": args.batch / sec}
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    limit = peak / (step_flops * args.steps) if peak else None  # images/s at peak for a PGD-`steps` attack
    print(f"{args.arch} {args.size}x{args.size}, batch {args.batch}, PGD-{args.steps}; {hardware()}, device {dev}")
    print(f"{step_flops / 1e9:.3f} GFLOP per image per step (forward + input gradient)"
          + (f"; limit {limit:,.0f} images/s at {args.peak_tflops} TFLOP/s" if limit else ""))
    for name, r in rows.items():
        if limit:
            r["fraction_of_limit"] = r["images_per_s"] / limit
        if "torchattacks" in rows:
            r["vs_torchattacks"] = r["images_per_s"] / rows["torchattacks"]["images_per_s"]
        print(f"  {name:<16}{r['images_per_s']:>12,.1f} images/s"
              + (f"  {100 * r['fraction_of_limit']:5.1f}% of the limit" if limit else "")
              + (f"  {r['vs_torchattacks']:.2f}x torchattacks" if "vs_torchattacks" in r else ""))
    out = {"hardware": hardware(), "device": str(dev), "arch": args.arch, "size": args.size, "batch": args.batch,
           "steps": args.steps, "gflop_per_image_step": step_flops / 1e9, "peak_tflops": args.peak_tflops,
           "limit_images_per_s": limit, "fast": fast.to_dict(), "pgd": rows}
    if args.smoothing_samples:
        fwd = flops_per_image(model, x[:8], y[:8], backward=False)
        smoothed = Smoothed(model, 0.25, batch_size=args.batch, fast=FastPath(compile=compile_))
        m = max(1, args.smoothing_samples // 100)
        xs = x[:100]
        sec = time_it(lambda: smoothed.sample_counts(xs, m), dev, args.batches)
        rate = xs.shape[0] * m / sec
        s_img = 100_100 / rate
        out["smoothing"] = {"gflop_per_sample": fwd / 1e9, "samples_per_s": rate, "seconds_per_image_n100k": s_img,
                            "fraction_of_limit": rate * fwd / peak if peak else None}
        print(f"smoothing: {rate:,.0f} noisy samples/s -> {s_img:.3f} s per image at N = 100,000 (n0 = 100)"
              + (f", {100 * rate * fwd / peak:.1f}% of the limit" if peak else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
