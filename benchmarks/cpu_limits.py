"""This CPU's limit, and how close robustlab and its peers get to it: PGD-40, ``standard`` and
smoothing certification as fractions of the machine's sustained FLOP rate, same models, same
MNIST test images, one process.

    python benchmarks/cpu_limits.py [--threads 1] [--n 250] [--batch-size 250] [--aa-n 50]
        [--smoothing-images 10] [--smoothing-n 10000] [--rounds 2]
        [--parts pgd,standard,smoothing] [--json benchmarks/results/cpu_limits.json]

The limit: the best FLOP/s of a large GEMM (``torch.mm``, 2048 x 2048, float32; bfloat16 for the
fast paths, which run under bf16 autocast) at the benchmark's thread count. Next to it, the
model's own layers at the benchmark's batch size: each convolution and the whole model, forward
and forward + input-gradient backward, alone (FLOPs from torch's FLOP counter,
:func:`limits.flops_per_image`): what a PGD step or a noisy vote costs at least with torch's kernels.

Work of a method: its forward rows times the forward FLOPs per image plus its backward rows times
the backward FLOPs per image, the rows counted by a wrapper around the model (every library gets
the same wrapper); for smoothing, (n0 + n) forward rows per image. Achieved FLOP/s = work / wall
time, reported as a fraction of the GEMM limit and of the model's own rate. Methods run in
interleaved rounds (each once per round, the best round kept), so load from other processes
hits them alike; ratios between rows of one run are the comparable numbers on a shared machine.

Models: the demo's shipped ``small-cnn`` models (:mod:`robustlab.demo_models`): ``mnist-robust``
(PGD-10 adversarial training) for PGD-40 and ``standard`` (linf eps 0.3), ``mnist-noise``
(sigma 0.25) for smoothing. PGD-40: step 0.01, random start, no early stop (all libraries do all
40 steps on every image). ``standard``: ``robustlab.attacks.standard`` vs pyautoattack
``version="standard"``. Smoothing: ``Smoothed.certify`` (N0 = 100, alpha = 0.001) vs ART's
``PyTorchRandomizedSmoothing.certify`` at batch size 1000.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attacks import standard_autoattack, standard_robustlab  # noqa: E402
from bench_pgd import art_pgd, robustlab_pgd, torchattacks_pgd  # noqa: E402
from bench_smoothing import art_certificate, art_certifier  # noqa: E402
from common import first_test_images, hardware  # noqa: E402
from limits import flops_per_image  # noqa: E402

import bench_attacks  # noqa: E402
import bench_pgd  # noqa: E402
import robustlab as rl  # noqa: E402
from robustlab import demo_models  # noqa: E402
from robustlab._io import atomic_write_text  # noqa: E402
from robustlab.certificates import certified_accuracy  # noqa: E402
from robustlab.defenses.smoothing import Smoothed  # noqa: E402

EPS, STEP, STEPS = 0.3, 0.01, 40
SIGMA, N0, ALPHA = 0.25, 100, 0.001


class Counted(nn.Module):
    """``model`` that counts the rows of its forward passes and of the backward passes through
    them (a hook on the output's gradient)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forward_rows = 0
        self.backward_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_rows += x.shape[0]
        out = self.model(x)
        if out.requires_grad:
            out.register_hook(self._count_backward)
        return out

    def _count_backward(self, grad: torch.Tensor) -> None:
        self.backward_rows += grad.shape[0]

    def reset(self) -> None:
        self.forward_rows = self.backward_rows = 0


def gemm_flops(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Best FLOP/s of ``size x size`` matrix products in ``dtype`` (after two warm-up calls)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(dtype)
    b = torch.randn(size, size, generator=g).to(dtype)
    torch.mm(a, b)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def interleaved(runs: dict[str, Callable[[], object]], rounds: int,
                counted: "Counted | None" = None) -> dict[str, tuple[float, object, tuple[int, int]]]:
    """``{name: (best seconds, its result, (forward rows, backward rows) that ``counted`` saw)}``,
    every run once per round."""
    best: dict[str, tuple[float, object, tuple[int, int]]] = {}
    for _ in range(max(1, rounds)):
        for name, fn in runs.items():
            if counted is not None:
                counted.reset()
            t0 = time.perf_counter()
            out = fn()
            sec = time.perf_counter() - t0
            if name not in best or sec < best[name][0]:
                best[name] = (sec, out, (counted.forward_rows, counted.backward_rows) if counted else (0, 0))
    return best


def layer_rates(model: nn.Module, x: torch.Tensor, rounds: int) -> dict:
    """GFLOP/s of each convolution and of the whole model at batch ``x``: forward, and forward +
    input-gradient backward (the work of one attack step), each alone."""
    out: dict = {}
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    acts: dict = {}
    hooks = [m.register_forward_hook(lambda mod, inp, o, n=name: acts.__setitem__(n, inp[0].detach()))
             for name, m in convs]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    y = torch.zeros(x.shape[0], dtype=torch.long)
    parts = {name: (m, acts[name]) for name, m in convs}
    parts["whole model"] = (model, x)
    for name, (m, inp) in parts.items():
        fwd = flops_per_image(m, inp, None, backward=False) * inp.shape[0]
        step = _step_flops(m, inp) if name != "whole model" else flops_per_image(m, inp, y, backward=True) * inp.shape[0]
        xa = inp.clone().requires_grad_(True)

        def forward_only(m=m, inp=inp):
            with torch.no_grad():
                m(inp)

        def forward_backward(m=m, xa=xa):
            torch.autograd.grad(m(xa).sum(), xa)

        best = interleaved({"forward": forward_only, "step": forward_backward}, rounds * 5)
        out[name] = {"forward_gflop_per_s": fwd / best["forward"][0] / 1e9,
                     "step_gflop_per_s": step / best["step"][0] / 1e9,
                     "forward_ms": 1e3 * best["forward"][0], "step_ms": 1e3 * best["step"][0]}
    return out


def _step_flops(m: nn.Module, inp: torch.Tensor) -> float:
    """FLOPs of a forward and an input-gradient backward of layer ``m`` on ``inp``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    xa = inp.detach().clone().requires_grad_(True)
    with counter:
        m(xa).sum().backward(inputs=[xa])
    return float(counter.get_total_flops())


def fraction_rows(results: dict, fwd: float, bwd: float, limits: dict, describe: Callable[[object], str]) -> dict:
    """Achieved GFLOP/s and fractions of the limits of :func:`interleaved`'s results."""
    rows = {}
    for name, (sec, res, (f_rows, b_rows)) in results.items():
        flops = f_rows * fwd + b_rows * bwd
        limit = limits["gemm_bf16"] if "fast" in name else limits["gemm_fp32"]
        rows[name] = {"seconds": sec, "forward_rows": f_rows, "backward_rows": b_rows, "gflop": flops / 1e9,
                      "gflop_per_s": flops / sec / 1e9, "fraction_of_gemm": flops / sec / limit,
                      "fraction_of_model": flops / sec / limits["model_step" if b_rows else "model_forward"],
                      "result": describe(res)}
    return rows


def _print(title: str, rows: dict, peer: str) -> None:
    print(f"\n{title}")
    print(f"{'method':<34}{'seconds':>9}{'GFLOP/s':>9}{'of GEMM':>9}{'of model':>10}  {'vs ' + peer:<28}result")
    for name, r in rows.items():
        ratio = rows[peer]["seconds"] / r["seconds"] if peer in rows else float("nan")
        print(f"{name:<34}{r['seconds']:>9.2f}{r['gflop_per_s']:>9.1f}{100 * r['fraction_of_gemm']:>8.1f}%"
              f"{100 * r['fraction_of_model']:>9.1f}%  {f'{ratio:.2f}x':<28}{r.get('result', '')}")


def run_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int, rounds: int) -> dict:
    counted = Counted(model)
    fast = rl.attacks.FastPath()
    runners = {
        "robustlab PGD-40": lambda: robustlab_pgd(counted, x, y, bs, early_stop=False),
        "robustlab PGD-40 fast (bf16)": lambda: robustlab_pgd(counted, x, y, bs, early_stop=False, fast=fast),
        "torchattacks PGD-40": lambda: torchattacks_pgd(counted, x, y, bs),
        "ART PGD-40": lambda: art_pgd(counted, x, y, bs),
    }
    return interleaved(runners, rounds, counted)


def run_standard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int) -> dict:
    counted = Counted(model)
    runners = {
        "robustlab standard": lambda: standard_robustlab(counted, x, y, bs).x_adv,
        "pyautoattack standard": lambda: standard_autoattack(counted, x, y, bs),
    }
    return interleaved(runners, 1, counted)


def run_smoothing(model: nn.Module, x: torch.Tensor, n: int, rounds: int) -> dict:
    """Certify ``x``; the forward rows are known: (N0 + N) per image."""
    default = Smoothed(model, SIGMA, batch_size=1000, seed=0)
    bf16 = Smoothed(model, SIGMA, batch_size=1000, seed=0, fast="bf16")
    art = art_certifier(model, SIGMA, N0, ALPHA, tuple(x.shape[1:]), 10)
    runners = {
        "robustlab certify": lambda: default.certify(x, N0, n, ALPHA),
        "robustlab certify fast (bf16)": lambda: bf16.certify(x, N0, n, ALPHA),
        "ART certify (batch 1000)": lambda: art_certificate(*art.certify(x.numpy(), n=n, batch_size=1000), ALPHA),
    }
    rows = x.shape[0] * (N0 + n)
    return {name: (sec, cert, (rows, 0)) for name, (sec, cert, _) in interleaved(runners, rounds).items()}


def robust_accuracy(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core of a shared machine)")
    ap.add_argument("--n", type=int, default=250, help="images for PGD-40")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--aa-n", type=int, default=50, help="images for standard vs pyautoattack")
    ap.add_argument("--smoothing-images", type=int, default=10)
    ap.add_argument("--smoothing-n", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (best kept); standard runs once")
    ap.add_argument("--parts", default="pgd,standard,smoothing", help="the limits are always measured")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    bench_pgd.EPS, bench_pgd.STEP, bench_pgd.STEPS = EPS, STEP, STEPS
    bench_attacks.EPS = EPS
    robust = demo_models.load("mnist-robust").eval()
    noise = demo_models.load("mnist-noise").eval()
    x, y = first_test_images(max(args.n, args.aa_n, args.smoothing_images))
    xb = x[: args.batch_size]
    fwd = flops_per_image(robust, x[:8], y[:8], backward=False)
    bwd = flops_per_image(robust, x[:8], y[:8], backward=True) - fwd
    limits = {"gemm_fp32": gemm_flops(torch.float32), "gemm_bf16": gemm_flops(torch.bfloat16)}
    layers = layer_rates(robust, xb, args.rounds)
    limits["model_forward"] = layers["whole model"]["forward_gflop_per_s"] * 1e9
    limits["model_step"] = layers["whole model"]["step_gflop_per_s"] * 1e9
    print(f"{hardware()}; small-cnn: {fwd / 1e6:.2f} MFLOP forward, {bwd / 1e6:.2f} MFLOP input-gradient backward "
          f"per image")
    print(f"limit: GEMM 2048^2 {limits['gemm_fp32'] / 1e9:.1f} GFLOP/s float32, {limits['gemm_bf16'] / 1e9:.1f} "
          f"GFLOP/s bfloat16")
    print(f"the model's own layers at batch {xb.shape[0]} (GFLOP/s, forward / forward + input gradient):")
    for name, r in layers.items():
        print(f"  {name:<14}{r['forward_gflop_per_s']:>8.1f} /{r['step_gflop_per_s']:>7.1f}   "
              f"({r['forward_ms']:.2f} / {r['step_ms']:.2f} ms)")
    result: dict = {"hardware": hardware(), "threads": args.threads, "batch_size": args.batch_size,
                    "mflop_forward": fwd / 1e6, "mflop_backward": bwd / 1e6,
                    "limits_gflop_per_s": {k: v / 1e9 for k, v in limits.items()}, "layers": layers}
    if "pgd" in parts:
        yp = y[: args.n]
        rows = fraction_rows(run_pgd(robust, x[: args.n], yp, args.batch_size, args.rounds), fwd, bwd, limits,
                             lambda robust_mask: f"robust {100 * float(robust_mask.float().mean()):.1f}%")
        _print(f"PGD-40 (linf {EPS}, step {STEP}, no early stop), mnist-robust, {args.n} images", rows,
               "torchattacks PGD-40")
        result["pgd"] = rows
    if "standard" in parts:
        n = args.aa_n
        rows = fraction_rows(run_standard(robust, x[:n], y[:n], args.batch_size), fwd, bwd, limits,
                             lambda adv: f"robust {100 * robust_accuracy(robust, adv, y[:n]):.1f}%")
        _print(f"standard vs AutoAttack (linf {EPS}), mnist-robust, {n} images", rows, "pyautoattack standard")
        result["standard"] = rows
    if "smoothing" in parts:
        k = args.smoothing_images
        rows = fraction_rows(run_smoothing(noise, x[:k], args.smoothing_n, args.rounds), fwd, bwd, limits,
                             lambda cert: "certified {:.0f}% / {:.0f}% at r 0 / 0.5".format(
                                 *(100 * v for v in certified_accuracy(cert, y[:k], (0.0, 0.5)).tolist())))
        _print(f"smoothing certify (sigma {SIGMA}, N0 {N0}, N {args.smoothing_n:,}), mnist-noise, {k} images", rows,
               "ART certify (batch 1000)")
        result["smoothing"] = rows
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
