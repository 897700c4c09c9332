"""``standard`` vs pyautoattack ``version="standard"`` (issue 24): robust accuracy, time and the
forward/backward passes of both, on the same images in one process.

For each model (``--models``; the PGD-trained MNIST small-cnn at linf 0.3 and the PGD-trained
Fashion-MNIST small-cnn at linf 0.1, first ``--n`` test images) three evaluations run in turn:

* ``robustlab standard`` (the default, ``budget="adaptive"``: the triage after APGD-CE's first run);
* ``robustlab standard[full]`` (``budget="full"``: every member on every image still robust, the
  preset before issue 24) -- the before/after robust accuracy on the same images;
* pyautoattack ``AutoAttack(version="standard")`` (APGD-CE, APGD-T, FAB-T, Square 5000).

Each sees the model through :class:`robustlab.testing.CountingModel`: ``forward_rows`` are the
images the model evaluated (every forward pass, with or without gradient), ``backward_rows`` the
images a backward pass went through. Robust accuracy is recomputed here for every library
(correct on x, x_adv inside the ball, still correct on x_adv); wall and CPU seconds of the process.
Per image, the script also lists the images one evaluation broke and the other left robust.

``--l2-n N`` adds the L2 lesson of docs/benchmarks/blackbox.md for both budgets (no AutoAttack):
the linf-PGD-trained MNIST model at l2 eps 2.0, where Square breaks images the gradient members
leave at a large margin, so the triage must not keep Square from the settled images.

Run it under the heavy-job lock, one thread (``--threads 1``), e.g.

    flock /tmp/robustlab-heavy.lock env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_standard.py \\
        --n 1000 --json benchmarks/results/standard_1000.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import sys
import time
from pathlib import Path

import torch

import robustlab as rl
from robustlab.testing import CountingModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import hardware  # noqa: E402

MODELS = {"mnist": ("runs/mnist-pgd", "mnist", 0.3), "fmnist": ("runs/fmnist-pgd", "fashion-mnist", 0.1)}


def robust_mask(model, x, y, x_adv, eps: float) -> torch.Tensor:
    """Bool (N,): correct on x and (still correct on x_adv or x_adv outside the ball)."""
    tm = rl.ThreatModel("linf", eps)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        adv = model(x_adv).argmax(1) == y
    return clean & (adv | ~tm.contains(x_adv, x, atol=1e-5))


def measured(fn, model) -> tuple[torch.Tensor, dict]:
    """``fn(counting_model) -> x_adv``, with wall/CPU seconds and the forward/backward rows."""
    counting = CountingModel(model).eval()
    c0, t0 = time.process_time(), time.perf_counter()
    x_adv = fn(counting)
    row = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
           "forward_rows": counting.rows, "backward_rows": counting.backward_rows}
    return x_adv, row


EVALUATIONS = ("robustlab standard", "pyautoattack standard", "robustlab standard[full]")


class ModelBench:
    """One model's images and the evaluations run on them so far (:meth:`summary` after each)."""

    def __init__(self, key: str, args) -> None:
        self.key = key
        self.path, self.dataset, self.eps = MODELS[key]
        self.model = rl.models.load(self.path).eval()
        test = rl.data.load(self.dataset, "test")
        self.x, self.y = test.images[: args.n].clone(), test.labels[: args.n].clone()
        self.bs = args.batch_size
        self.rows: dict = {}
        self.robust: dict = {}
        self.results: dict = {}

    def run(self, name: str) -> None:
        x, y, bs, eps = self.x, self.y, self.bs, self.eps

        def robustlab_run(m):
            atk = rl.attacks.standard(rl.ThreatModel("linf", eps), seed=0,
                                      budget="full" if name.endswith("[full]") else "adaptive")
            res = rl.attacks.AttackResult.concat([atk.attack(m, x[i : i + bs], y[i : i + bs]) for i in range(0, len(y), bs)])
            self.results[name] = res
            return res.x_adv

        def autoattack(m):
            from pyautoattack import AutoAttack

            aa = AutoAttack(m, norm="Linf", eps=eps, version="standard", seed=0, device="cpu")
            aa.verbose = False
            return aa.run_standard_evaluation(x, y, batch_size=bs)[0]

        x_adv, row = measured(autoattack if name.startswith("pyautoattack") else robustlab_run, self.model)
        self.robust[name] = robust_mask(self.model, x, y, x_adv, eps)
        row["robust_accuracy"] = float(self.robust[name].float().mean())
        self.rows[name] = row
        print(f"{self.key}/{name}: {100 * row['robust_accuracy']:.2f}% in {row['seconds']:.1f} s "
              f"({row['cpu_seconds']:.1f} s CPU), {row['forward_rows']} forward / {row['backward_rows']} backward rows",
              flush=True)

    def summary(self) -> dict:
        rows, robust = self.rows, self.robust
        out: dict = {"model": self.path, "dataset": self.dataset, "eps": self.eps, "n": len(self.y), "evaluations": rows}
        aa = rows.get("pyautoattack standard")
        if aa is not None:
            for row in rows.values():
                row["time_vs_autoattack"] = row["seconds"] / aa["seconds"]
                row["cpu_vs_autoattack"] = row["cpu_seconds"] / aa["cpu_seconds"]
                row["forward_vs_autoattack"] = row["forward_rows"] / max(aa["forward_rows"], 1)
                row["backward_vs_autoattack"] = row["backward_rows"] / max(aa["backward_rows"], 1)
                row["points_above_autoattack"] = 100 * (row["robust_accuracy"] - aa["robust_accuracy"])
        res = self.results.get("robustlab standard")
        if res is not None:
            out["clean_accuracy"] = float(res.clean_correct.float().mean())
            out["settled_by_triage"] = int(res.info["settled"].sum())
            out["reached_triage"] = int((~res.info["margin_ratio"].isnan()).sum())
            out["broken_by_members"] = {f"{i}: {a}": int((res.info["broken_by"] == i).sum()) for i, a in enumerate(res.info["attacks"])}
        ours, full, ref = (robust.get(k) for k in EVALUATIONS)
        # Per image: robust to one evaluation, broken by the other.
        if ref is not None:
            for label, mine in (("standard", ours), ("standard[full]", full)):
                if mine is not None:
                    out.setdefault("robust_here_broken_by_autoattack", {})[label] = (mine & ~ref).nonzero().squeeze(1).tolist()
                    out.setdefault("broken_here_robust_to_autoattack", {})[label] = (~mine & ref).nonzero().squeeze(1).tolist()
            if res is not None:  # the triage's margin ratio of the images AutoAttack broke and standard left robust
                out["margin_ratio_of_those"] = [round(float(v), 4) for v in res.info["margin_ratio"][ours & ~ref]]
        if ours is not None and full is not None:
            out["robust_to_standard_broken_by_full"] = (ours & ~full).nonzero().squeeze(1).tolist()
            out["broken_by_standard_robust_to_full"] = (~ours & full).nonzero().squeeze(1).tolist()
        return out


def l2_lesson(args) -> dict:
    path, dataset, _ = MODELS["mnist"]
    model = rl.models.load(path).eval()
    test = rl.data.load(dataset, "test")
    x, y = test.images[: args.l2_n].clone(), test.labels[: args.l2_n].clone()
    tm = rl.ThreatModel("l2", 2.0)
    rows = {}
    for budget in ("adaptive", "full"):
        atk = rl.attacks.standard(tm, seed=0, budget=budget)
        res, row = None, {}

        def run(m, atk=atk):
            nonlocal res
            res = atk.attack(m, x, y)
            return res.x_adv

        _, row = measured(run, model)
        row["robust_accuracy"] = res.robust_accuracy
        row["broken_by_members"] = {f"{i}: {a.name}": int((res.info["broken_by"] == i).sum()) for i, a in enumerate(atk.attacks)}
        if "settled" in res.info:
            row["settled_by_triage"] = int(res.info["settled"].sum())
        rows[budget] = row
        print(f"l2/{budget}: {100 * row['robust_accuracy']:.2f}% ({row['cpu_seconds']:.1f} s CPU)", flush=True)
    return {"model": path, "norm": "l2", "eps": 2.0, "n": len(y), "budgets": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mnist,fmnist")
    ap.add_argument("--mnist-model", default=MODELS["mnist"][0], help="the linf-PGD-trained MNIST model (eps 0.3)")
    ap.add_argument("--fmnist-model", default=MODELS["fmnist"][0], help="the PGD-trained Fashion-MNIST model (eps 0.1)")
    ap.add_argument("--n", type=int, default=1000, help="first n test images")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--l2-n", type=int, default=0, help="images for the L2 lesson (both budgets; 0: skip)")
    ap.add_argument("--json", default="benchmarks/results/standard.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    MODELS["mnist"] = (args.mnist_model, *MODELS["mnist"][1:])
    MODELS["fmnist"] = (args.fmnist_model, *MODELS["fmnist"][1:])
    out: dict = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "hardware": hardware(),
                 "command": " ".join(sys.argv), "models": {}}
    path = Path(args.json)
    benches = {}
    for key in [k.strip() for k in args.models.split(",") if k.strip()]:
        if not (Path(MODELS[key][0]) / "metadata.json").is_file():
            print(f"{key}: {MODELS[key][0]} not found; skipped (train it: see docs/benchmarks/standard.md)", flush=True)
            continue
        benches[key] = ModelBench(key, args)
    # The comparison with AutoAttack on every model first, then the full preset (the "before"):
    # every evaluation's numbers are written as soon as it ends.
    for names in (EVALUATIONS[:2], EVALUATIONS[2:]):
        for key, bench in benches.items():
            for name in names:
                bench.run(name)
                out["models"][key] = bench.summary()
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(out, indent=2) + "\n")
            r = out["models"][key]["evaluations"]["robustlab standard"]
            if names == EVALUATIONS[:2]:
                print(f"{key}: standard {100 * r['robust_accuracy']:.2f}% ({r['points_above_autoattack']:+.2f} points vs "
                      f"AutoAttack) at {r['time_vs_autoattack']:.3f}x its time ({r['cpu_vs_autoattack']:.3f}x CPU)", flush=True)
    if args.l2_n > 0:
        out["l2_lesson"] = l2_lesson(args)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
