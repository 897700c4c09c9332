"""Branch and bound (issue 22): robustlab's complete verifier (beta-CROWN, ``verify_property``)
against its MILP on the MNIST certified-training benchmark of docs/benchmarks/verify.md
(``--model``, IBP-trained small-cnn): exact robust accuracy on the first ``--n`` test images at
linf ``--eps``, the time per image of BaB and of the MILP (``verify_milp``), image by image in the
same process (interleaved), with ``--time-limit`` each. Every BaB counterexample is re-checked by
the model's own forward pass. (VNN-COMP instances, BaB included: ``bench_vnncomp.py``.)

Part ``input-split``: a network with few inputs, the kind input splitting is for (ACAS Xu has 5):
an MLP of ACAS Xu's shape (4 -> 50 x 6 -> 3, ReLU) trained on scikit-learn's iris (real, offline; features scaled to
[0, 1]), robustness of its correct predictions on the ``--n`` held-out flowers at each linf radius
of ``--radii``, decided by ``verify_property`` with ``split="relu"`` and ``split="input"`` (the
default for so few inputs), ``--time-limit`` seconds each; every answer checked as above.

    python benchmarks/bench_bab.py --model runs/mnist-certified-ibp-40ep --threads 1
    python benchmarks/bench_bab.py --parts input-split --n 30 --radii 0.05,0.1,0.2 --time-limit 10 --threads 1

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


def _iris_mlp(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The iris MLP (trained here: Adam, 400 full-batch steps on 100 flowers) and the 50 held out."""
    from sklearn.datasets import load_iris

    data = load_iris()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.min(0).values) / (x.max(0).values - x.min(0).values)
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    train, test = order[:100], order[100:]
    torch.manual_seed(seed)
    layers: list = [torch.nn.Linear(4, 50), torch.nn.ReLU()]
    for _ in range(5):
        layers += [torch.nn.Linear(50, 50), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(50, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(400):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[train]), y[train]).backward()
        opt.step()
    return model.eval(), x[test], y[test]


def part_input_split(args, out: dict) -> None:
    model, x, y = _iris_mlp()
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).nonzero().squeeze(1)[: args.n]
    net = trace(model, x[:1])
    rows = []
    for radius in (float(r) for r in args.radii.split(",")):
        for split in ("relu", "input"):
            counts = {"unsat": 0, "sat": 0, "timeout": 0, "unknown": 0}
            seconds = []
            for i in correct.tolist():
                lo, hi = (x[i] - radius).clamp(0, 1).double(), (x[i] + radius).clamp(0, 1).double()
                prop = robustness_property(lo, hi, int(y[i]), 3)
                res = verify_property(net, prop, timeout=args.time_limit, split=split)
                if res.status == "sat":
                    with torch.no_grad():
                        assert bool(prop.unsafe(model(res.counterexample[None].float()))[0])
                counts[res.status] += 1
                seconds.append(res.seconds)
            rows.append({"radius": radius, "split": split, **counts, "s_total": sum(seconds), "s_max": max(seconds),
                         "load": _load()})
            print(rows[-1], flush=True)
    out["input-split"] = {"images": int(correct.numel()), "time_limit": args.time_limit,
                          "test_accuracy": float((model(x).argmax(1) == y).float().mean()), "rows": rows}


def _tables(out: dict) -> None:
    if "certified" in out:
        c = out["certified"]
        n = c["images"]
        print("\n| method | verified | counterexample | unknown | s per image (mean) | max s |\n|---|---|---|---|---|---|")
        print(f"| BaB | {c['bab']['unsat']} | {c['bab']['sat']} | {c['bab']['timeout'] + c['bab']['unknown']} | "
              f"{c['bab_s_total'] / n:.3f} | {c['bab_s_max']:.2f} |")
        print(f"| MILP | {c['milp']['verified']} | {c['milp']['counterexample']} | {c['milp']['unknown']} | "
              f"{c['milp_s_total'] / n:.3f} | {c['milp_s_max']:.2f} |")
    if "input-split" in out:
        c = out["input-split"]
        print(f"\n{c['images']} iris flowers, {c['time_limit']:g} s each\n")
        print("| linf radius | split | verified | falsified | timeout | unknown | s per flower (mean) | max s |")
        print("|---|---|---|---|---|---|---|---|")
        for r in c["rows"]:
            print(f"| {r['radius']:g} | {r['split']} | {r['unsat']} | {r['sat']} | {r['timeout']} | {r['unknown']} | "
                  f"{r['s_total'] / c['images']:.3f} | {r['s_max']:.2f} |")

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="certified")
    p.add_argument("--model", default="runs/mnist-certified-ibp-40ep")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--time-limit", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--radii", default="0.05,0.1,0.2", help="linf radii (input-split)")
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
        elif part == "input-split":
            part_input_split(args, out)
        else:
            raise SystemExit(f"unknown part {part!r}")
        out.setdefault("seconds", {})[part] = time.perf_counter() - t0
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")
    _tables(out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
