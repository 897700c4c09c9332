"""Branch and bound (issue 22): robustlab's complete verifier (beta-CROWN, ``verify_property``)
against its MILP, and on VNN-COMP 2021 mnistfc.

Parts (``--parts``, comma separated):

* ``certified``: the MNIST certified-training benchmark of docs/benchmarks/verify.md
  (``--model``, IBP-trained small-cnn) re-run with branch and bound: exact robust accuracy on the
  first ``--n`` test images at linf ``--eps``, the time per image of BaB and of the MILP
  (``verify_milp``), image by image in the same process (interleaved), with ``--time-limit`` each.
  Every BaB counterexample is re-checked by the model's own forward pass.
* ``mnistfc``: the VNN-COMP 2021 mnistfc instances (``--vnncomp``/mnistfc) with their official
  timeouts (or ``--cap`` seconds at most), resumable (instances already in ``--json`` are kept).
  The networks are read from the ONNX initializers by a tiny reader for the Flatten / Gemm / Relu
  chains of this benchmark (benchmark code: robustlab's ONNX loader is another module), the
  properties by a regex reader for the benchmark's VNNLIB form. Each ``sat`` counterexample is
  re-run through onnxruntime on the original ONNX file and must violate the property.

    python benchmarks/bench_bab.py --parts certified --model runs/mnist-certified-ibp-40ep
    python benchmarks/bench_bab.py --parts mnistfc --nets 256x2,256x4,256x6

Writes ``--json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import hardware  # noqa: E402

import robustlab as rl  # noqa: E402
from robustlab.verify import trace, verify_milp  # noqa: E402
from robustlab.verify.bab import verify_property  # noqa: E402
from robustlab.verify.bounds import InputSet  # noqa: E402
from robustlab.verify.spec import Property, robustness_property  # noqa: E402


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def part_certified(args, out: dict) -> None:
    model = rl.models.load(args.model).eval()
    test = rl.data.load("mnist", split="test")
    x, y = test.images[: args.n].clone(), test.labels[: args.n].clone()
    tm = rl.ThreatModel("linf", args.eps)
    inputs = InputSet.build(x, tm)
    net = trace(model, x[:1])
    rows, load_start = [], _load()
    for i in range(args.n):
        with torch.no_grad():
            pred = int(model(x[i : i + 1]).argmax(1))
        t0 = time.perf_counter()
        milp = verify_milp(model, x[i : i + 1], y[i : i + 1], tm, time_limit=args.time_limit)
        t_milp = time.perf_counter() - t0
        t0 = time.perf_counter()
        if pred != int(y[i]):
            status, stage, domains, cex = "sat", "clean", 0, x[i]
        else:
            prop = robustness_property(inputs.lo[i], inputs.hi[i], int(y[i]), 10, name=f"mnist test {i}")
            res = verify_property(net, prop, timeout=args.time_limit, seed=0)
            status, stage, domains, cex = res.status, res.stage, res.domains, res.counterexample
        t_bab = time.perf_counter() - t0
        flips = None
        if status == "sat":  # re-check: the model's own forward changes the prediction, inside the ball
            with torch.no_grad():
                flips = int(model(cex.unsqueeze(0)).argmax(1)) != int(y[i])
            inside = bool(tm.contains(cex.unsqueeze(0), x[i : i + 1]).all())
            flips = flips and inside
        row = {"image": i, "bab": status, "bab_stage": stage, "bab_domains": domains, "bab_s": t_bab,
               "milp": milp.status[0], "milp_s": t_milp, "milp_crown": bool(milp.crown[0]), "cex_checked": flips}
        rows.append(row)
        print(json.dumps(row), flush=True)
    agree = sum({"unsat": "verified", "sat": "counterexample"}.get(r["bab"], "unknown") == r["milp"] for r in rows)
    out["certified"] = {
        "model": args.model, "eps": args.eps, "images": args.n, "time_limit_s": args.time_limit,
        "threads": torch.get_num_threads(), "load_average": [load_start, _load()],
        "bab": {s: sum(r["bab"] == s for r in rows) for s in ("unsat", "sat", "timeout", "unknown")},
        "milp": {s: sum(r["milp"] == s for r in rows) for s in ("verified", "counterexample", "unknown")},
        "agree": agree, "bab_s_total": sum(r["bab_s"] for r in rows), "milp_s_total": sum(r["milp_s"] for r in rows),
        "bab_s_max": max(r["bab_s"] for r in rows), "milp_s_max": max(r["milp_s"] for r in rows),
        "counterexamples_checked": all(r["cex_checked"] for r in rows if r["bab"] == "sat"),
        "rows": rows,
    }


def onnx_chain(path: Path) -> nn.Sequential:
    """A Flatten / Gemm / Relu chain read from the ONNX initializers (this benchmark's networks)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    init = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in m.graph.initializer}
    layers: list[nn.Module] = []
    for node in m.graph.node:
        if node.op_type == "Gemm":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            w, b = init[node.input[1]].float(), init[node.input[2]].float()
            if attrs.get("transB", 0) != 1 or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                raise ValueError(f"{path.name}: Gemm attributes {attrs} are not the plain x W^T + b of this reader")
            lin = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            layers.append(lin)
        elif node.op_type == "Relu":
            layers.append(nn.ReLU())
        elif node.op_type != "Flatten":
            raise ValueError(f"{path.name}: operator {node.op_type} is outside this benchmark's reader")
    return nn.Sequential(*layers).eval()


def vnnlib_box_and_disjuncts(path: Path, inputs: int, outputs: int) -> Property:
    """The mnistfc VNNLIB form: ``X_i`` bounds and ``(or (and (>= Y_a Y_b)) ...)``."""
    text = path.read_text()
    lo = torch.full((inputs,), float("nan"), dtype=torch.float64)
    hi = torch.full((inputs,), float("nan"), dtype=torch.float64)
    for op, i, v in re.findall(r"\(assert \((<=|>=) X_(\d+) ([-+0-9.eE]+)\)\)", text):
        (hi if op == "<=" else lo)[int(i)] = float(v)
    if bool(torch.isnan(lo).any() or torch.isnan(hi).any()):
        raise ValueError(f"{path.name}: some input has no bound")
    groups = []
    for a, b in re.findall(r"\(and \(>= Y_(\d+) Y_(\d+)\)\)", text):
        c = torch.zeros(1, outputs, dtype=torch.float64)
        c[0, int(b)], c[0, int(a)] = 1.0, -1.0  # Y_a >= Y_b  <=>  Y_b - Y_a <= 0
        groups.append((c, torch.zeros(1, dtype=torch.float64)))
    return Property(lo, hi, tuple(groups), name=path.name)


def _onnxruntime_unsafe(onnx_path: Path, prop: Property, x: torch.Tensor) -> bool:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    y = sess.run(None, {inp.name: x.numpy().astype(np.float32).reshape(shape)})[0].reshape(1, -1)
    return bool(prop.unsafe(torch.from_numpy(y))[0]) and bool(prop.contains(x.unsqueeze(0).double())[0])


def part_mnistfc(args, out: dict, path: Path) -> None:
    folder = Path(args.vnncomp) / "mnistfc"
    with open(folder / "mnistfc_instances.csv") as f:
        instances = [(r[0], r[1], float(r[2])) for r in csv.reader(f) if r]
    nets = args.nets.split(",")
    done = {(r["network"], r["property"]): r for r in out.get("mnistfc", {}).get("rows", [])}
    rows = list(done.values())
    cache: dict = {}
    for onnx_name, prop_name, timeout in instances:
        if not any(n in onnx_name for n in nets) or (onnx_name, prop_name) in done:
            continue
        if onnx_name not in cache:
            model = onnx_chain(folder / onnx_name)
            cache[onnx_name] = trace(model, torch.zeros(1, 784))
        net = cache[onnx_name]
        prop = vnnlib_box_and_disjuncts(folder / prop_name, 784, 10)
        limit = min(timeout, args.cap) if args.cap else timeout
        load = _load()
        res = verify_property(net, prop, timeout=limit, seed=0)
        checked = _onnxruntime_unsafe(folder / onnx_name, prop, res.counterexample) if res.status == "sat" else None
        row = {"network": onnx_name, "property": prop_name, "timeout_s": timeout, "limit_s": limit,
               "status": res.status, "stage": res.stage, "seconds": res.seconds, "domains": res.domains,
               "domains_per_second": res.domains_per_second, "max_depth": res.max_depth,
               "unstable": res.info.get("unstable"), "open_bound": res.info.get("open_bound"),
               "seconds_by_phase": res.info.get("seconds_by_phase"), "onnxruntime_checked": checked,
               "load_average": load}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "seconds_by_phase"}), flush=True)
        out["mnistfc"] = {"rows": rows, "threads": torch.get_num_threads(), "cap_s": args.cap}
        path.write_text(json.dumps(out, indent=1) + "\n")
    out["mnistfc"] = {"rows": rows, "threads": torch.get_num_threads(), "cap_s": args.cap}


def _tables(out: dict) -> None:
    if "certified" in out:
        c = out["certified"]
        n = c["images"]
        print("\n| method | verified | counterexample | unknown | s per image (mean) | max s |\n|---|---|---|---|---|---|")
        print(f"| BaB | {c['bab']['unsat']} | {c['bab']['sat']} | {c['bab']['timeout'] + c['bab']['unknown']} | "
              f"{c['bab_s_total'] / n:.3f} | {c['bab_s_max']:.2f} |")
        print(f"| MILP | {c['milp']['verified']} | {c['milp']['counterexample']} | {c['milp']['unknown']} | "
              f"{c['milp_s_total'] / n:.3f} | {c['milp_s_max']:.2f} |")
    if "mnistfc" in out:
        rows = out["mnistfc"]["rows"]
        print("\n| network | instances | verified | falsified | timeout / unknown | wrong (onnxruntime) |\n|---|---|---|---|---|---|")
        for net in sorted({r["network"] for r in rows}):
            rs = [r for r in rows if r["network"] == net]
            bad = sum(r["onnxruntime_checked"] is False for r in rs)
            print(f"| {net} | {len(rs)} | {sum(r['status'] == 'unsat' for r in rs)} | "
                  f"{sum(r['status'] == 'sat' for r in rs)} | {sum(r['status'] in ('timeout', 'unknown') for r in rs)} | "
                  f"{bad} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="certified,mnistfc")
    p.add_argument("--model", default="runs/mnist-certified-ibp-40ep")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--time-limit", type=float, default=60.0)
    p.add_argument("--vnncomp", default="../shared/vnncomp2021")
    p.add_argument("--nets", default="256x2,256x4,256x6")
    p.add_argument("--cap", type=float, default=0.0, help="seconds per mnistfc instance at most (0: official)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="benchmarks/results/bab.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.json)
    out = json.loads(path.read_text()) if path.exists() else {}
    out["hardware"] = hardware()
    for part in args.parts.split(","):
        t0 = time.perf_counter()
        if part == "certified":
            part_certified(args, out)
        elif part == "mnistfc":
            part_mnistfc(args, out, path)
        else:
            raise SystemExit(f"unknown part {part!r}")
        out.setdefault("seconds", {})[part] = time.perf_counter() - t0
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")
    _tables(out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
