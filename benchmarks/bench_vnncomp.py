"""VNN-COMP 2021 benchmark (issue 22): ONNX conversion against onnxruntime, and the instance runner.

Parts (``--parts``, comma separated):

* ``conversion``: every ``.onnx`` network under ``--root`` converted by
  :func:`robustlab.models.onnx.convert` and traced (:func:`robustlab.verify.trace`); on
  ``--samples`` random inputs drawn uniformly in the input boxes of that network's VNNLIB
  properties (spread over its instances), the converted module's outputs (float32, batches of
  100) and the traced chain's (what the verifier bounds) against onnxruntime's (one input at a
  time, the files declare batch 1): the largest absolute difference, the largest relative one
  (``|a - b| / max(|b|, 1e-3)``) and whether every output satisfies
  ``|a - b| <= 1e-5 + 1e-5 |b|``; conversion and tracing seconds.
* ``instances``: ``robustlab verify --instances`` on each benchmark of ``--benchmarks`` (the
  folders under ``--root``), with ``--method``, the official timeouts times ``--timeout-scale``,
  optionally only the instances ``--select`` (indices into the CSV, e.g. ``0-4,30``); per-instance
  status and seconds, counts per network, next to the published VNN-COMP 2021 results;
  ``--jobs N`` answers N instances at once, one process each (``robustlab verify --jobs``).

    python benchmarks/bench_vnncomp.py --parts conversion --root ../shared/vnncomp2021
    flock /tmp/robustlab-heavy.lock python benchmarks/bench_vnncomp.py --parts instances \\
        --benchmarks mnistfc --method milp --select 0-5 --out /tmp/vnn

Writes ``--json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import hardware  # noqa: E402

from robustlab.verify.instances import read_instances, run_instances  # noqa: E402
from robustlab.verify.methods import PROPERTY_METHODS  # noqa: E402
from robustlab.verify.vnnlib import read_vnnlib  # noqa: E402

PUBLISHED = {  # VNN-COMP 2021 report: verified + falsified (alpha,beta-CROWN; the best other tool)
    "mnistfc": "alpha,beta-CROWN 49 + 21 (2022: 66 + 18); VeriNet 39 + 21",
    "cifar10_resnet": "alpha,beta-CROWN 58 + 0; VeriNet 48 + 0",
    "oval21": "alpha,beta-CROWN 12 + 2; oval 12 + 2",
}
ATOL = RTOL = 1e-5


def _default_root() -> Path:
    repo = Path(__file__).resolve().parents[1]
    for cand in (repo.parent / "shared" / "vnncomp2021", repo.parents[1] / "shared" / "vnncomp2021"):
        if cand.is_dir():
            return cand
    return repo.parent / "shared" / "vnncomp2021"


def _boxes_of(root: Path, net: Path, shape: tuple) -> list:
    """The input boxes (float64 lower, upper) of every property the instance files pair with ``net``."""
    boxes = []
    for csv in root.glob("*/*_instances.csv"):
        for inst in read_instances(csv):
            if inst.network.resolve() == net.resolve():
                boxes += [(p.lower, p.upper) for p in read_vnnlib(inst.property, input_shape=shape)]
    return boxes


def conversion(root: Path, samples: int, seed: int) -> list[dict]:
    import onnxruntime as ort

    from robustlab.models.onnx import convert
    from robustlab.verify import trace

    rows = []
    for path in sorted(root.rglob("*.onnx")):
        t0 = time.perf_counter()
        model = convert(path)
        t1 = time.perf_counter()
        net = trace(model, torch.zeros(1, *model.input_shape))
        t2 = time.perf_counter()
        boxes = _boxes_of(root, path, model.input_shape)
        g = torch.Generator().manual_seed(seed)
        xs = torch.stack([boxes[i % len(boxes)][0] + torch.rand(model.input_shape, generator=g, dtype=torch.float64)
                          * (boxes[i % len(boxes)][1] - boxes[i % len(boxes)][0]) for i in range(samples)]).float()
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        t3 = time.perf_counter()
        ref = np.concatenate([sess.run(None, {name: xs[i : i + 1].numpy()})[0].reshape(1, -1) for i in range(samples)])
        t4 = time.perf_counter()
        with torch.no_grad():
            ours = torch.cat([model(xs[i : i + 100]) for i in range(0, samples, 100)]).numpy()
            t5 = time.perf_counter()
            chain = torch.cat([net.forward(xs[i : i + 100]) for i in range(0, samples, 100)]).numpy()
        row = {"network": str(path.relative_to(root)), "input_shape": list(model.input_shape),
               "nodes": len(model.steps), "ops": len(net.ops), "boxes": len(boxes), "samples": samples,
               "convert_s": t1 - t0, "trace_s": t2 - t1, "onnxruntime_s": t4 - t3, "robustlab_s": t5 - t4}
        for key, out in (("module", ours), ("traced", chain)):
            diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
            row[f"{key}_max_abs"] = float(diff.max())
            row[f"{key}_max_rel"] = float((diff / np.maximum(np.abs(ref), 1e-3)).max())
            row[f"{key}_ok"] = bool((diff <= ATOL + RTOL * np.abs(ref)).all())
        rows.append(row)
        print(f"  {row['network']}: module {row['module_max_abs']:.2e}, traced {row['traced_max_abs']:.2e}", flush=True)
    return rows


def _select(text: str, n: int) -> list[int]:
    out: list[int] = []
    for part in filter(None, text.split(",")):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1 if b else int(a) + 1))
    return [i for i in out if 0 <= i < n]


def instances(root: Path, benchmarks: list[str], method: str, scale: float, select: str, out: Path, seed: int,
              resume: bool, jobs: int = 1) -> dict:
    results = {}
    for bench in benchmarks:
        csv = next((root / bench).glob("*_instances.csv"))
        rows = read_instances(csv)
        if select:
            rows = [rows[i] for i in _select(select, len(rows))]
        state = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "hardware": hardware(),
                 "load_before": list(os.getloadavg())}
        summary = run_instances(rows, out / bench, method=method, seed=seed, timeout_scale=scale, resume=resume,
                                progress=True, jobs=jobs)
        summary["machine"] = {**state, "load_after": list(os.getloadavg())}
        results[bench] = summary
    return results


def _print_conversion(rows: list[dict]) -> None:
    print(f"\n| network | input | nodes -> ops | inputs | max abs (module) | max rel (module) | max abs (traced) | "
          f"within {ATOL:g} + {RTOL:g}·|ort| | convert + trace s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ok = "yes" if r["module_ok"] and r["traced_ok"] else "NO"
        print(f"| {r['network']} | {'x'.join(map(str, r['input_shape']))} | {r['nodes']} -> {r['ops']} | "
              f"{r['samples']} | {r['module_max_abs']:.1e} | {r['module_max_rel']:.1e} | {r['traced_max_abs']:.1e} | "
              f"{ok} | {r['convert_s']:.2f} + {r['trace_s']:.2f} |")


def _print_instances(results: dict) -> None:
    for bench, summary in results.items():
        print(f"\n### {bench} (method {summary['method']}, timeouts x{summary['timeout_scale']:g})\n")
        print("| # | network | property | timeout s | status | seconds |")
        print("|---|---|---|---|---|---|")
        for r in summary["records"]:
            print(f"| {r['index']} | {Path(r['network']).name} | {Path(r['property']).name} | {r['timeout']:g} | "
                  f"{r['status']}{' (UNSOUND)' if r.get('unsound') else ''} | {r['seconds']:.2f} |")
        print("\n| network | instances | verified | falsified | timeout | unknown | seconds |")
        print("|---|---|---|---|---|---|---|")
        for net, c in summary["per_network"].items():
            secs = sum(r["seconds"] for r in summary["records"] if Path(r["network"]).name == net)
            print(f"| {net} | {c['instances']} | {c['unsat']} | {c['sat']} | {c['timeout']} | {c['unknown']} | "
                  f"{secs:.0f} |")
        c = summary["counts"]
        print(f"\nverified {c['unsat']} + falsified {c['sat']} of {summary['instances']} (timeout {c['timeout']}, "
              f"unknown {c['unknown']}, unsound {summary['unsound']}); published: {PUBLISHED.get(bench, '-')}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="conversion")
    p.add_argument("--root", type=Path, default=_default_root(), help="the vnncomp2021 folder")
    p.add_argument("--samples", type=int, default=1000, help="random inputs per network (conversion)")
    p.add_argument("--benchmarks", default="mnistfc", help="comma-separated folders under --root (instances)")
    p.add_argument("--method", default="bab", choices=tuple(PROPERTY_METHODS))
    p.add_argument("--timeout-scale", type=float, default=1.0)
    p.add_argument("--select", default="", help="instance indices, e.g. 0-4,30 (default: all)")
    p.add_argument("--out", type=Path, default=Path("out/bench_vnncomp"), help="instance records (instances)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="instances at once, one process each (instances)")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/vnncomp.json"))
    args = p.parse_args()
    if not args.root.is_dir():
        raise SystemExit(f"--root {args.root}: not a folder (the vnncomp2021 benchmarks)")
    parts = set(args.parts.split(","))
    report: dict = {"hardware": hardware(), "root": str(args.root)}
    if args.json.is_file():
        report = {**json.loads(args.json.read_text()), **report}
    if "conversion" in parts:
        report["conversion"] = conversion(args.root, args.samples, args.seed)
        _print_conversion(report["conversion"])
    if "instances" in parts:
        results = instances(args.root, args.benchmarks.split(","), args.method, args.timeout_scale, args.select,
                            args.out, args.seed, args.resume, args.jobs)
        report.setdefault("instances", {})
        for bench, summary in results.items():
            report["instances"][f"{bench}/{args.method}/x{args.timeout_scale:g}/{args.select or 'all'}"] = summary
        _print_instances(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
