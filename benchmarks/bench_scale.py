"""Scale-out benchmark: `robustlab evaluate` and `robustlab certify` on 1 process vs N processes
under torchrun (gloo, CPU), with the numbers of both reports compared; and peak memory of
`evaluate --suite quick` as the number of images grows.

    python benchmarks/bench_scale.py --model runs/mnist-pgd --n 1000 --ranks 2 \
        --json benchmarks/results/scale_cpu.json

Each run is a fresh process (as a user runs it); wall time includes start-up, data loading and
the report. Peak RSS is the largest resident set of the command's processes (``ru_maxrss`` of the
children), measured by a wrapper process per run. On a CPU with C cores, 1 process uses C threads
and N processes use C / N threads each (``OMP_NUM_THREADS``), so both use the whole machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WRAP = ("import resource, subprocess, sys, json, time; t = time.perf_counter(); "
        "rc = subprocess.run(sys.argv[1:]).returncode; "
        "print(json.dumps({'rc': rc, 'seconds': time.perf_counter() - t, "
        "'max_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")


def launch(argv: list[str], ranks: int, cores: int, allocator: str = "auto") -> dict:
    """Run ``robustlab <argv>`` on ``ranks`` processes; wall seconds, return code, peak RSS (MB).
    ``allocator``: ``ROBUSTLAB_ALLOCATOR`` of the run (``auto``: jemalloc where installed)."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] if ranks > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": str(max(cores // ranks, 1)), "ROBUSTLAB_ALLOCATOR": allocator}
    cmd = [sys.executable, "-c", WRAP, sys.executable, *launcher, "-m", "robustlab", *argv]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise RuntimeError(f"{' '.join(argv)} on {ranks} processes failed:\n{proc.stderr[-3000:]}")
    return res


def numbers(path: Path) -> object:
    """A report without what may differ between runs (timings, dates)."""

    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if "second" not in k and k not in ("created", "date", "device")}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    return strip(json.loads(path.read_text()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="runs/mnist-pgd")
    p.add_argument("--n", type=int, default=1000, help="images for the 1-vs-N comparison")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--certify-n", type=int, default=200, help="images for certify")
    p.add_argument("--samples", type=int, default=10_000, help="smoothing samples per image for certify")
    p.add_argument("--memory", default="1000,10000", help="image counts for the peak-memory runs ('' to skip)")
    p.add_argument("--memory-model", default=None, help="model for the peak-memory runs (default --model)")
    p.add_argument("--parts", default="evaluate,certify,memory")
    p.add_argument("--allocator", default="auto,system",
                   help="ROBUSTLAB_ALLOCATOR values for the peak-memory runs (auto: jemalloc where installed)")
    p.add_argument("--out", default="out/bench_scale")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    result: dict = {"model": args.model, "cores": args.cores, "ranks": args.ranks, "date": time.strftime("%Y-%m-%d")}

    if "evaluate" in parts:
        rows = {}
        for ranks in (1, args.ranks):
            d = out / f"evaluate-{ranks}"
            rows[ranks] = launch(["evaluate", "--model", args.model, "--suite", "quick", "--n-images", str(args.n),
                                  "--out", str(d), "--no-progress", "--no-html"], ranks, args.cores)
            print(f"evaluate, {ranks} process(es): {rows[ranks]['seconds']:.1f} s", flush=True)
        same = numbers(out / "evaluate-1" / "report.json") == numbers(out / f"evaluate-{args.ranks}" / "report.json")
        result["evaluate"] = {"n": args.n, "runs": rows, "speedup": rows[1]["seconds"] / rows[args.ranks]["seconds"],
                              "identical_numbers": same}
        print(f"evaluate speed-up {result['evaluate']['speedup']:.2f}x, identical numbers: {same}", flush=True)

    if "certify" in parts:
        rows, per_image = {}, {}
        for ranks in (1, args.ranks):
            f = out / f"certify-{ranks}.json"
            rows[ranks] = launch(["certify", "--model", args.model, "--sigma", "0.25", "--n0", "100", "--samples",
                                  str(args.samples), "--n-images", str(args.certify_n), "--chunk", "10", "--out", str(f),
                                  "--no-progress"], ranks, args.cores)
            per_image[ranks] = json.loads(f.read_text())["per_image"]
            print(f"certify, {ranks} process(es): {rows[ranks]['seconds']:.1f} s", flush=True)
        result["certify"] = {"n": args.certify_n, "samples": args.samples, "runs": rows,
                             "speedup": rows[1]["seconds"] / rows[args.ranks]["seconds"],
                             "identical_numbers": per_image[1] == per_image[args.ranks]}
        print(f"certify speed-up {result['certify']['speedup']:.2f}x, identical: "
              f"{result['certify']['identical_numbers']}", flush=True)

    if "memory" in parts and args.memory:
        from robustlab._launch import find_jemalloc

        result["memory"] = {"model": args.memory_model or args.model, "jemalloc": find_jemalloc()}
        for allocator in args.allocator.split(","):
            rows = {}
            for n in (int(v) for v in args.memory.split(",")):
                rows[n] = launch(["evaluate", "--model", args.memory_model or args.model, "--suite", "quick",
                                  "--n-images", str(n), "--out", str(out / f"memory-{allocator}-{n}"), "--no-progress",
                                  "--no-html"], 1, args.cores, allocator)
                print(f"allocator {allocator}: evaluate --suite quick on {n} images: peak RSS "
                      f"{rows[n]['max_rss_mb']:.0f} MB, {rows[n]['seconds']:.1f} s", flush=True)
            counts = sorted(rows)
            ratio = rows[counts[-1]]["max_rss_mb"] / rows[counts[0]]["max_rss_mb"]
            result["memory"][allocator] = {"runs": rows, "ratio": ratio}
            print(f"allocator {allocator}: peak RSS ratio {counts[-1]} / {counts[0]} images: {ratio:.3f}", flush=True)

    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
