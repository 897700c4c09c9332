"""Verification benchmark (issue 12): robustlab.verify against auto_LiRPA, bound times, verified
accuracy of standard / PGD / certified-trained MNIST models, and complete MILP.

Parts (``--parts``, comma separated):

* ``lirpa``: CROWN and IBP margin bounds (``C = e_y - e_j``) of robustlab and auto_LiRPA 0.3 on
  the same models and images (an MLP 784-100-100-10 and the ``small-cnn``), max |difference| and
  seconds per image for each library (same process, interleaved).
* ``timing``: IBP / CROWN / alpha-CROWN / LP seconds per image on the MNIST ``cnn`` and an MLP.
* ``accuracy``: clean (first ``--clean-n``) and verified accuracy at linf eps for each model in
  ``--models``: IBP on the first ``--n`` test images, CROWN on the first ``--crown-n`` (in batches
  of ``--crown-batch``), IBP on those and either certificate; PGD-40 robust accuracy on the first
  ``--pgd-n`` (an upper bound).
* ``milp``: complete verification of ``--milp-model`` on the first ``--milp-n`` images with a
  ``--time-limit`` per image: verified / counterexample / unknown against CROWN alone and PGD.

auto_LiRPA 0.3 predates numpy 2 and torch 2.13; :func:`import_auto_lirpa` installs the small
adapters it needs (``numpy.lib.arraysetops``, ``appdirs``, ``torch.onnx`` opset setter,
``torch._C.Node.__getitem__``, ``_named_members(remove_duplicate=)``) in this process only.

    python benchmarks/bench_verify.py --parts lirpa,timing,accuracy,milp \
        --models runs/mnist-cnn,runs/mnist-pgd,runs/mnist-ibp --milp-model runs/mnist-ibp

Writes ``--json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import hardware  # noqa: E402

import robustlab as rl  # noqa: E402
from robustlab.verify import bounds, certify, verify_milp  # noqa: E402


def import_auto_lirpa():
    """Import auto_LiRPA 0.3 on numpy 2 / torch 2.13 (adapters in this process only)."""
    if "numpy.lib.arraysetops" not in sys.modules:
        m = types.ModuleType("numpy.lib.arraysetops")
        m.isin = np.isin
        sys.modules["numpy.lib.arraysetops"] = m
    if "appdirs" not in sys.modules:
        a = types.ModuleType("appdirs")
        a.user_data_dir = lambda name: str(Path(tempfile.gettempdir()) / name)
        sys.modules["appdirs"] = a
    import torch.onnx.symbolic_helper as sh

    if not hasattr(sh, "_set_opset_version"):
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

        sh._set_opset_version = lambda v: setattr(GLOBALS, "export_onnx_opset_version", v)
    if not hasattr(torch._C.Node, "__getitem__"):
        torch._C.Node.__getitem__ = lambda self, k: getattr(self, self.kindOf(k))(k)
    import auto_LiRPA
    from auto_LiRPA.perturbations import PerturbationLpNorm

    members = auto_LiRPA.BoundedModule._named_members
    if not getattr(members, "_robustlab_adapter", False):  # torch >= 2.0 passes remove_duplicate
        def _named_members(self, get_members_fn, prefix="", recurse=True, **_):
            return members(self, get_members_fn, prefix, recurse)
        _named_members._robustlab_adapter = True
        auto_LiRPA.BoundedModule._named_members = _named_members

    return auto_LiRPA, PerturbationLpNorm


def _mnist(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    test = rl.data.load("mnist", split="test")
    return test.images[:n].clone(), test.labels[:n].clone()


def _mlp() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.05 if p.dim() > 1 else 0.01))
    return net.eval()


def _margin_c(y: torch.Tensor, k: int) -> torch.Tensor:
    eye = torch.eye(k)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)  # (N, K, K): row j is e_y - e_j


def part_lirpa(args, out: dict) -> None:
    auto_lirpa, ptb_cls = import_auto_lirpa()
    x, y = _mnist(args.lirpa_n)
    models = {"mlp 784-100-100-10 (random init)": (_mlp(), 0.02)}
    cnn_path = Path(args.lirpa_cnn)
    cnn = rl.models.load(cnn_path).eval() if cnn_path.exists() else rl.models.create("small-cnn", dataset="mnist", seed=0)
    models[f"small-cnn ({cnn_path if cnn_path.exists() else 'random init'})"] = (cnn, args.eps)
    rows = []
    for name, (model, eps) in models.items():
        tm = rl.ThreatModel("linf", eps)
        # Matrix mode: auto_LiRPA 0.3's patches mode asserts on the elementwise Normalize in front.
        bm = auto_lirpa.BoundedModule(model, torch.zeros(1, *x.shape[1:]), device="cpu",
                                      bound_opts={"conv_mode": "matrix"})
        with torch.no_grad():
            pred = model(x).argmax(1)
        c = _margin_c(pred, 10)
        for method, lirpa_method in (("ibp", "IBP"), ("crown", "CROWN")):
            diffs, t_rl, t_li = [], 0.0, 0.0
            for s in range(0, x.shape[0], args.batch):
                xb, pb, cb = x[s : s + args.batch], pred[s : s + args.batch], c[s : s + args.batch]
                t0 = time.perf_counter()
                lo, hi = bounds(model, xb, tm, method, "margin", pb)
                t_rl += time.perf_counter() - t0
                ptb = ptb_cls(norm=float("inf"), eps=eps, x_L=(xb - eps).clamp(0, 1), x_U=(xb + eps).clamp(0, 1))
                t0 = time.perf_counter()
                with torch.no_grad():
                    llo, lhi = bm.compute_bounds(x=(auto_lirpa.BoundedTensor(xb, ptb),), method=lirpa_method, C=cb)
                t_li += time.perf_counter() - t0
                diffs.append(float(torch.maximum((llo - lo).abs(), (lhi - hi).abs()).max()))
            row = {"model": name, "eps": eps, "method": method, "images": int(x.shape[0]), "max_abs_diff": max(diffs),
                   "robustlab_s_per_image": t_rl / x.shape[0], "auto_lirpa_s_per_image": t_li / x.shape[0]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out["lirpa"] = rows


def part_timing(args, out: dict) -> None:
    rows = []
    cnn_path = Path(args.cnn)
    targets = {"mlp 784-256-256-10": (rl.models.create("mlp", dataset="mnist", seed=0).eval(), args.timing_n)}
    if cnn_path.exists():
        targets[f"cnn ({cnn_path})"] = (rl.models.load(cnn_path).eval(), args.timing_cnn_n)
    for name, (model, n) in targets.items():
        x, y = _mnist(n)
        for method in ("ibp", "crown", "alpha-crown", "lp"):
            t0 = time.perf_counter()
            for s in range(0, n, args.batch):
                bounds(model, x[s : s + args.batch], rl.ThreatModel("linf", args.timing_eps), method, "margin",
                       y[s : s + args.batch])
            row = {"model": name, "method": method, "eps": args.timing_eps, "images": n,
                   "s_per_image": (time.perf_counter() - t0) / n}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out["timing"] = rows


def _pgd_robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    tm = rl.ThreatModel("linf", eps)
    res = rl.attacks.PGD(tm, steps=40, step_size=eps / 4, restarts=1, seed=0).attack(model, x, y)
    with torch.no_grad():
        return (model(res.x_adv).argmax(1) == y) & (model(x).argmax(1) == y)


def part_accuracy(args, out: dict) -> None:
    rows = []
    clean_n = args.clean_n or args.n
    x_all, y_all = _mnist(max(args.n, clean_n))
    x, y = x_all[: args.n], y_all[: args.n]
    for path in args.models.split(","):
        if not Path(path).exists():
            print(f"skip {path}: not found", flush=True)
            continue
        model = rl.models.load(path).eval()
        arch = rl.models.load_metadata(path).get("architecture", {}).get("name", "?")
        with torch.no_grad():
            clean = float(torch.cat([model(x_all[s : s + 1000]).argmax(1) == y_all[s : s + 1000]
                                     for s in range(0, clean_n, 1000)])[:clean_n].double().mean())
        row: dict = {"model": path, "arch": arch, "eps": args.eps, "images": args.n, "clean_images": clean_n,
                     "clean": clean, "threads": torch.get_num_threads()}
        tm = rl.ThreatModel("linf", args.eps)
        crown_n = args.crown_n_cnn if arch == "cnn" else args.crown_n
        proven = {}
        for method, m, bs in (("ibp", args.n, args.batch), ("crown", min(args.n, crown_n), args.crown_batch or args.batch)):
            t0 = time.perf_counter()
            ok = torch.cat([~certify(model, x[s : min(s + bs, m)], y[s : min(s + bs, m)], tm, method).abstain
                            for s in range(0, m, bs)])
            proven[method] = ok
            row[f"verified_{method}"] = {"images": m, "verified": float(ok.double().mean()),
                                         "s_per_image": (time.perf_counter() - t0) / m, "batch": bs}
            print(json.dumps({"model": path, "eps": args.eps, method: row[f"verified_{method}"]}), flush=True)
        m = proven["crown"].shape[0]  # IBP on the CROWN images, and either certificate (both are sound)
        row["verified_ibp_on_crown_images"] = float(proven["ibp"][:m].double().mean())
        row["verified_ibp_or_crown"] = {"images": m, "verified": float((proven["ibp"][:m] | proven["crown"]).double().mean())}
        t0 = time.perf_counter()
        m = min(args.n, args.pgd_n)
        row["pgd40"] = {"images": m, "robust": float(torch.cat([_pgd_robust(model, x[s : min(s + 100, m)],
                        y[s : min(s + 100, m)], args.eps) for s in range(0, m, 100)]).double().mean())}
        row["seconds_pgd"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
    done = {(q["model"], q["eps"]) for q in rows}
    kept = [r for r in out.get("accuracy", []) if (r["model"], r["eps"]) not in done]
    out["accuracy"] = kept + rows  # several invocations accumulate, one row per (model, eps)


def part_milp(args, out: dict) -> None:
    if not Path(args.milp_model).exists():
        print(f"skip milp: {args.milp_model} not found", flush=True)
        return
    model = rl.models.load(args.milp_model).eval()
    x, y = _mnist(args.milp_n)
    tm = rl.ThreatModel("linf", args.eps)
    t0 = time.perf_counter()
    res = verify_milp(model, x, y, tm, time_limit=args.time_limit)
    seconds = time.perf_counter() - t0
    pgd = _pgd_robust(model, x, y, args.eps)
    counts = {s: res.status.count(s) for s in ("verified", "counterexample", "unknown")}
    cex = [i for i, s in enumerate(res.status) if s == "counterexample"]
    with torch.no_grad():  # re-check every counterexample here, in float32, independently of verify_milp
        clean_pred = model(x).argmax(1)
        adv_pred = model(res.x_adv.float()).argmax(1)
    dist = (res.x_adv - x).flatten(1).abs().amax(1)
    in_box = bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all())
    row = {"model": args.milp_model, "eps": args.eps, "images": args.milp_n, "time_limit_s": args.time_limit,
           "threads": torch.get_num_threads(), "outcomes": counts, "crown_verified": int(res.crown.sum()),
           "pgd40_robust": int(pgd.sum()), "clean_correct": int((clean_pred == y).sum()),
           "seconds_total": seconds, "seconds_max": float(res.seconds.max()),
           "counterexamples_misclassified_clean": [i for i in cex if int(clean_pred[i]) != int(y[i])],
           "counterexamples_found_by_milp": [i for i in cex if int(clean_pred[i]) == int(y[i])],
           "counterexamples_flip": bool(all(int(adv_pred[i]) != int(y[i]) for i in cex)),
           "counterexamples_in_ball": bool(all(float(dist[i]) <= args.eps + 1e-6 for i in cex)) and in_box,
           "counterexamples_linf": [float(dist[i]) for i in cex],
           "unknown_indices": [i for i, s in enumerate(res.status) if s == "unknown"],
           "pgd_robust_but_unknown": [i for i, s in enumerate(res.status) if s == "unknown" and bool(pgd[i])],
           "milp_info": res.info, "min_margin": [float(m) for m in res.min_margin],
           "status": res.status, "seconds": [float(t) for t in res.seconds]}
    print(json.dumps({k: v for k, v in row.items() if k not in ("status", "seconds", "min_margin")}), flush=True)
    out["milp"] = row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="lirpa,timing,accuracy,milp")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--lirpa-n", type=int, default=20)
    p.add_argument("--lirpa-cnn", default="runs/mnist-pgd")
    p.add_argument("--cnn", default="runs/mnist-cnn")
    p.add_argument("--timing-n", type=int, default=50)
    p.add_argument("--timing-cnn-n", type=int, default=2)
    p.add_argument("--timing-eps", type=float, default=0.01)
    p.add_argument("--models", default="runs/mnist-cnn,runs/mnist-pgd,runs/mnist-ibp")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--clean-n", type=int, default=0, help="clean accuracy on the first N test images (0: --n)")
    p.add_argument("--crown-batch", type=int, default=0, help="CROWN batch size (0: --batch; the intermediate "
                   "bounds back-substitute the union over the batch of the unstable neurons)")
    p.add_argument("--crown-n", type=int, default=100, help="CROWN on the first N of the --n images")
    p.add_argument("--crown-n-cnn", type=int, default=5, help="the same for the (large) Madry cnn")
    p.add_argument("--pgd-n", type=int, default=200, help="PGD-40 on the first N of the --n images")
    p.add_argument("--milp-model", default="runs/mnist-ibp")
    p.add_argument("--milp-n", type=int, default=100)
    p.add_argument("--time-limit", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="benchmarks/results/verify.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.json)
    out = json.loads(path.read_text()) if path.exists() else {}
    out["hardware"] = hardware()
    for part in args.parts.split(","):
        t0 = time.perf_counter()
        {"lirpa": part_lirpa, "timing": part_timing, "accuracy": part_accuracy, "milp": part_milp}[part](args, out)
        out.setdefault("seconds", {})[part] = time.perf_counter() - t0
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
