"""Branch and bound (issue 22): robustlab's complete verifier (beta-CROWN, ``verify_property``)
against its MILP on the MNIST certified-training benchmark of docs/benchmarks/verify.md
(``--model``, IBP-trained small-cnn): exact robust accuracy on the first ``--n`` test images at
linf ``--eps``, the time per image of BaB and of the MILP (``verify_milp``), image by image in the
same process (interleaved), with ``--time-limit`` each. Every BaB counterexample is re-checked by
the model's own forward pass. (VNN-COMP instances, BaB included: ``bench_vnncomp.py``.)

    python benchmarks/bench_bab.py --model runs/mnist-certified-ibp-40ep --threads 1

Writes ``--json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import hardware  # noqa: E402

import robustlab as rl  # noqa: E402
from robustlab.verify import trace, verify_milp  # noqa: E402
from robustlab.verify.bab import verify_property  # noqa: E402
from robustlab.verify.bounds import InputSet  # noqa: E402
from robustlab.verify.spec import robustness_property  # noqa: E402


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


def _tables(out: dict) -> None:
    if "certified" in out:
        c = out["certified"]
        n = c["images"]
        print("\n| method | verified | counterexample | unknown | s per image (mean) | max s |\n|---|---|---|---|---|---|")
        print(f"| BaB | {c['bab']['unsat']} | {c['bab']['sat']} | {c['bab']['timeout'] + c['bab']['unknown']} | "
              f"{c['bab_s_total'] / n:.3f} | {c['bab_s_max']:.2f} |")
        print(f"| MILP | {c['milp']['verified']} | {c['milp']['counterexample']} | {c['milp']['unknown']} | "
              f"{c['milp_s_total'] / n:.3f} | {c['milp_s_max']:.2f} |")

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="certified")
    p.add_argument("--model", default="runs/mnist-certified-ibp-40ep")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--time-limit", type=float, default=60.0)
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
        else:
            raise SystemExit(f"unknown part {part!r}")
        out.setdefault("seconds", {})[part] = time.perf_counter() - t0
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")
    _tables(out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
