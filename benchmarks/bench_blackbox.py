"""Black-box benchmark (issue 13): Square in the ``standard`` preset, Square alone, the L2
gradient-masking lesson, and Square's speed against ART and torchattacks.

Parts (``--parts``, comma-separated):

* ``standard``: ``robustlab.attacks.standard`` (APGD-CE x5, APGD-T, FMN, Square), once per Square
  p-schedule of ``--schedules`` (``rescaled`` / ``absolute``), vs pyautoattack
  ``version="standard"`` (APGD-CE, APGD-T, FAB-T, Square 5000) on the PGD-trained MNIST
  (linf 0.3) and Fashion-MNIST (linf 0.1) models: robust accuracy and wall time, same images;
  ``--standard-norm l2 --standard-eps 2`` for the L2 preset.
* ``schedule-seeds``: the same preset's white-box members once, then its Square with each
  p-schedule and each of ``--seeds`` on the images they left robust (is a difference between the
  schedules larger than the spread over Square's seeds?).
* ``square``: Square alone (linf 0.3, 5000 queries) on the PGD-trained MNIST model against the
  white-box worst case (APGD-CE x5, APGD-T, FMN), with the median queries of its successes.
* ``l2``: the linf-PGD-trained MNIST model in L2 at eps 2.0: PGD-100, APGD-CE, Square (5000)
  and the L2 ``standard`` preset.
* ``speed``: Square linf 0.3 with the same budget on the same images: robustlab vs torchattacks'
  ``Square`` and ART's ``SquareAttack`` (one process, interleaved, best of ``--repeats``).
* ``speed-onepixel``, ``speed-hsj``: one-pixel (k = 1, DE with ART's population and generations)
  vs ART's ``PixelAttack``, HopSkipJump l2 vs ART's ``HopSkipJump`` with robustlab's per-image
  budget set to the model evaluations ART spent; rows the model evaluated are counted for both.
* ``onepixel``: one-pixel success vs k (1, 3, 5) on the standard Fashion-MNIST small-cnn.
* ``hsj``: HopSkipJump l2 median distance vs query budget (``--hsj-budgets``) on a standard
  MNIST small-cnn (runs/mnist-small-cnn), with a white-box minimal-norm reference (DDN).
* ``nattack``: NATTACK success and median queries at the PGD eps (linf 0.3) on the PGD-trained
  and the standard MNIST small-cnn, next to PGD-40.
* ``digits-*`` (no trained MNIST model needed; seconds of CPU): the tests' digits CNN (scikit-learn
  digits, 8x8) trained here with a fixed seed: ``digits-square`` (Square vs APGD-CE, linf 0.1 and
  l2 1.0), ``digits-hsj`` (HopSkipJump median L2 vs query budget), ``digits-onepixel`` (success vs k),
  ``digits-speed`` (Square vs torchattacks and ART, same images and budget).

Writes the raw numbers to ``--json`` (default benchmarks/results/blackbox.json). Run it under the
heavy-job lock with 2 threads, e.g.

    flock /tmp/robustlab-heavy.lock env OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_blackbox.py --n 500
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

MODELS = {"mnist": ("runs/mnist-pgd", "mnist", 0.3), "fmnist": ("runs/fmnist-pgd", "fashion-mnist", 0.1),
          "mnist-std": ("runs/mnist-small-cnn", "mnist", 0.3)}


def images(dataset: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    test = rl.data.load(dataset, "test")
    return test.images[:n].clone(), test.labels[:n].clone()


def run_batched(attack: rl.attacks.Attack, model, x, y, bs: int) -> rl.attacks.AttackResult:
    return rl.attacks.AttackResult.concat([attack.attack(model, x[i : i + bs], y[i : i + bs]) for i in range(0, len(y), bs)])


def robust_accuracy(model, x, y, x_adv, eps: float, norm: str = "linf") -> float:
    """Recomputed here for every library: correct on x, x_adv inside the ball, still correct on x_adv."""
    tm = rl.ThreatModel(norm, eps)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        adv = model(x_adv).argmax(1) == y
    inside = tm.contains(x_adv, x, atol=1e-5)
    return float((clean & (adv | ~inside)).float().mean())


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def standard_with_schedule(tm: rl.ThreatModel, schedule: str) -> rl.attacks.WorstCase:
    """``rl.attacks.standard(tm)`` exactly, with its Square member's p-schedule set to ``schedule``."""
    atk = rl.attacks.standard(tm, seed=0)
    for member in atk.attacks:
        if isinstance(member, rl.attacks.Square):
            member.schedule = schedule
    return atk


def standard_models(args, part: str):
    """``(key, path, model, x, y, threat)`` for each model of ``--models`` that exists: its first
    ``--n`` test images and the threat ``--standard-norm`` at ``--standard-eps`` (default: the
    model's linf radius)."""
    for key in args.models.split(","):
        path, dataset, eps = MODELS[key]
        if not (Path(path) / "metadata.json").is_file():
            print(f"{part}/{key}: {path} not found; skipped", flush=True)
            continue
        x, y = images(dataset, args.n)
        eps = args.standard_eps if args.standard_eps is not None else eps
        yield key, path, rl.models.load(path).eval(), x, y, rl.ThreatModel(args.standard_norm, eps)


def part_standard(args, out: dict) -> None:
    """``standard`` with each Square p-schedule of ``--schedules`` (the whole preset each time, same
    images and seed) and pyautoattack's ``standard`` on the same images."""
    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    norm = args.standard_norm
    rows = {}
    for key, path, model, x, y, tm in standard_models(args, "standard"):
        eps = tm.eps
        row: dict = {"model": path, "norm": norm, "eps": eps, "n": len(y), "schedules": {}}
        robust = {}
        for schedule in args.schedules.split(","):
            atk = standard_with_schedule(tm, schedule)
            res, t_rl = timed(lambda: run_batched(atk, model, x, y, args.batch_size))
            broken_by = res.info["broken_by"]
            sq = len(atk.attacks) - 1  # Square is the last member
            white = res.clean_correct & ~((broken_by >= 0) & (broken_by < sq))
            robust[schedule] = res.robust
            row["clean_accuracy"] = float(res.clean_correct.float().mean())
            row["schedules"][schedule] = {
                "square": {"queries": atk.attacks[sq].queries, "p_init": atk.attacks[sq].p_init, "schedule": schedule},
                "robust_accuracy": res.robust_accuracy,
                "white_box_only": float(white.float().mean()),
                "broken_by_square": int((broken_by == sq).sum()),
                "square_median_queries_of_its_successes": (float(res.queries[broken_by == sq].float().median())
                                                           if bool((broken_by == sq).any()) else None),
                "seconds": t_rl,
            }
            print(f"standard/{key} {norm} {eps} schedule={schedule}: {100 * res.robust_accuracy:.2f}% in {t_rl:.1f} s "
                  f"(white-box members {100 * float(white.float().mean()):.2f}%, Square broke "
                  f"{int((broken_by == sq).sum())})", flush=True)
        names = list(robust)
        for a in names:
            for b in names:
                if a != b:
                    row[f"broken_by_{a}_only"] = (robust[b] & ~robust[a]).nonzero().flatten().tolist()
        if not args.no_autoattack:
            aa = AutoAttack(model, norm={"linf": "Linf", "l2": "L2", "l1": "L1"}[norm], eps=eps, version="standard",
                            seed=0, device="cpu")
            aa.verbose = False
            (x_aa, _), t_aa = timed(lambda: aa.run_standard_evaluation(x, y, batch_size=args.batch_size))
            row["autoattack_robust_accuracy"] = robust_accuracy(model, x, y, x_aa, eps, norm)
            row["autoattack_seconds"] = t_aa
            print(f"standard/{key}: AutoAttack {100 * row['autoattack_robust_accuracy']:.2f}% in {t_aa:.1f} s", flush=True)
        rows[f"{key}-{norm}" if norm != "linf" else key] = row
    out.setdefault("standard", {}).update(rows)


def part_schedule_seeds(args, out: dict) -> None:
    """The ``standard`` preset's Square with each p-schedule and several Square seeds: the white-box
    members (APGD-CE x5, APGD-T, FMN, seed 0, as in the preset) run once; Square (the preset's
    budget) then runs on the images they left robust, per schedule and seed. Robust accuracy of the
    whole preset per (schedule, seed), and the images each schedule breaks."""
    norm = args.standard_norm
    rows = {}
    for key, path, model, x, y, tm in standard_models(args, "schedule-seeds"):
        eps = tm.eps
        preset = rl.attacks.standard(tm, seed=0)
        white = rl.attacks.WorstCase(preset.attacks[:-1])
        square = preset.attacks[-1]
        wb, t_wb = timed(lambda: run_batched(white, model, x, y, args.batch_size))
        left = wb.robust.nonzero().flatten()
        row: dict = {"model": path, "norm": norm, "eps": eps, "n": len(y), "queries": square.queries,
                     "white_box_robust_accuracy": wb.robust_accuracy, "white_box_seconds": t_wb, "runs": {}}
        for schedule in args.schedules.split(","):
            for seed in [int(v) for v in args.seeds.split(",")]:
                sq = rl.attacks.Square(tm, queries=square.queries, p_init=square.p_init, schedule=schedule, seed=seed)
                res, t = timed(lambda: run_batched(sq, model, x[left], y[left], args.batch_size))
                broken = left[res.success].tolist()
                row["runs"][f"{schedule}/{seed}"] = {
                    "schedule": schedule, "seed": seed, "broken": broken, "seconds": t,
                    "robust_accuracy": (int(left.numel()) - len(broken)) / len(y)}
                print(f"schedule-seeds/{key} {norm} {eps} {schedule} seed {seed}: Square broke {len(broken)} of "
                      f"{left.numel()} ({100 * row['runs'][f'{schedule}/{seed}']['robust_accuracy']:.2f}% robust), "
                      f"{t:.1f} s", flush=True)
        for schedule in args.schedules.split(","):
            accs = [r["robust_accuracy"] for r in row["runs"].values() if r["schedule"] == schedule]
            row[f"mean_robust_accuracy_{schedule}"] = sum(accs) / len(accs)
        rows[f"{key}-{norm}" if norm != "linf" else key] = row
    out.setdefault("schedule_seeds", {}).update(rows)


def part_square(args, out: dict) -> None:
    path, dataset, eps = MODELS["mnist"]
    if not (Path(path) / "metadata.json").is_file():
        print(f"square: {path} not found; skipped", flush=True)
        return
    model = rl.models.load(path).eval()
    x, y = images(dataset, args.square_n)
    tm = rl.ThreatModel("linf", eps)
    sq, t_sq = timed(lambda: run_batched(rl.attacks.Square(tm, queries=5000, seed=0), model, x, y, args.batch_size))
    white = rl.attacks.WorstCase([rl.attacks.get(n, tm, seed=0, **o) for n, o in rl.attacks.STANDARD["standard"][:3]])
    wb, t_wb = timed(lambda: run_batched(white, model, x, y, args.batch_size))
    ok = sq.success & sq.clean_correct
    out["square"] = {
        "model": path, "eps": eps, "n": len(y), "queries": 5000,
        "square_robust_accuracy": sq.robust_accuracy, "square_seconds": t_sq,
        "square_median_queries_successes": float(sq.queries[ok].float().median()) if bool(ok.any()) else None,
        "square_mean_queries_all": float(sq.queries[sq.clean_correct].float().mean()),
        "white_box_robust_accuracy": wb.robust_accuracy, "white_box_seconds": t_wb,
        "union_robust_accuracy": float((sq.robust & wb.robust).float().mean()),
    }
    r = out["square"]
    print(f"square: Square-5000 {100 * r['square_robust_accuracy']:.2f}% ({t_sq:.1f} s, median queries "
          f"{r['square_median_queries_successes']}), white-box {100 * r['white_box_robust_accuracy']:.2f}%", flush=True)


def part_l2(args, out: dict) -> None:
    path, dataset, _ = MODELS["mnist"]
    if not (Path(path) / "metadata.json").is_file():
        print(f"l2: {path} not found; skipped", flush=True)
        return
    model = rl.models.load(path).eval()
    x, y = images(dataset, args.l2_n)
    tm = rl.ThreatModel("l2", 2.0)
    attacks = {
        "pgd-100": rl.attacks.PGD(tm, steps=100, step_size=0.1, seed=0),
        "apgd-ce": rl.attacks.APGD(tm, steps=100, seed=0),
        "square-5000": rl.attacks.Square(tm, queries=5000, seed=0),
        "standard": rl.attacks.standard(tm, seed=0),
    }
    rows, robust = {}, {}
    for name, atk in attacks.items():
        res, t = timed(lambda: run_batched(atk, model, x, y, args.batch_size))
        rows[name] = {"robust_accuracy": res.robust_accuracy, "seconds": t}
        robust[name] = res.robust
        print(f"l2/{name}: {100 * res.robust_accuracy:.2f}% in {t:.1f} s", flush=True)
        if name == "standard":
            ok = res.queries > 0
            rows[name]["broken_by_square"] = int((res.info["broken_by"] == 3).sum())
            rows[name]["square_median_queries"] = float(res.queries[ok].float().median()) if bool(ok.any()) else None
    union = {"standard or square-5000": float((robust["standard"] & robust["square-5000"]).float().mean()),
             "all four": float(torch.stack(list(robust.values())).all(dim=0).float().mean())}
    print(f"l2/union: {union}", flush=True)
    out["l2"] = {"model": path, "eps": 2.0, "n": len(y), "clean_accuracy": float(res.clean_correct.float().mean()),
                 "attacks": rows, "worst_case_of": union}


def part_speed(args, out: dict) -> None:
    import numpy as np

    path, dataset, eps = MODELS["mnist"]
    if not (Path(path) / "metadata.json").is_file():
        print(f"speed: {path} not found; skipped", flush=True)
        return
    model = rl.models.load(path).eval()
    x, y = images(dataset, args.speed_n)
    q = args.speed_queries

    def ours(m):
        return rl.attacks.Square(rl.ThreatModel("linf", eps), queries=q, seed=0).attack(m, x, y).x_adv

    def torchattacks_square(m):
        import torchattacks

        return torchattacks.Square(m, norm="Linf", eps=eps, n_queries=q, n_restarts=1, p_init=0.8, seed=0)(x, y)

    def art_square(m):
        from art.attacks.evasion import SquareAttack

        atk = SquareAttack(_art_classifier(m, x), norm=np.inf, eps=eps, max_iter=q, p_init=0.8, nb_restarts=1,
                           batch_size=len(y), verbose=False)
        return torch.from_numpy(atk.generate(x.numpy(), y=y.numpy()))

    libs = {"robustlab": ours, "torchattacks": torchattacks_square, "art": art_square}
    runs: dict = {k: [] for k in libs}
    for _ in range(args.repeats):
        for name, fn in libs.items():
            row = _run_counted(f"speed/{name}", fn, model, x, y)
            row["robust_accuracy"] = robust_accuracy(model, x, y, row["x_adv"], eps)
            runs[name].append(row)
    rows = {k: _best_of(v) for k, v in runs.items()}
    for r in rows.values():
        r["cpu_vs_robustlab"] = r["cpu_seconds"] / rows["robustlab"]["cpu_seconds"]
        r["time_vs_robustlab"] = r["seconds"] / rows["robustlab"]["seconds"]
        r["cpu_us_per_model_row"] = 1e6 * r["cpu_seconds"] / max(r["model_rows"], 1)
    out["speed"] = {"repeats": args.repeats, "libraries": rows, "model": path, "eps": eps, "n": len(y), "queries": q}


class Float32(torch.nn.Module):
    """Casts the input to float32 (ART's HopSkipJump hands float64 arrays to the classifier)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.float())


def _art_classifier(model, x):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=Float32(model), loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                             nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")


def _run_counted(name: str, fn, model, x, y) -> dict:
    """One timed run of ``fn(counting_model) -> x_adv``: wall and CPU seconds, rows evaluated."""
    counting = CountingModel(model).eval()
    c0, t0 = time.process_time(), time.perf_counter()
    x_adv = fn(counting)
    row = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "model_rows": counting.rows}
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        adv = model(x_adv).argmax(1) != y
    row["success_on_correct"] = float((clean & adv).sum() / clean.sum().clamp_min(1))
    row["x_adv"] = x_adv
    print(f"{name}: {row['seconds']:.2f} s wall, {row['cpu_seconds']:.2f} s CPU, {row['model_rows']} model rows, "
          f"success {100 * row['success_on_correct']:.1f}%", flush=True)
    return row


def _best_of(rows: list[dict]) -> dict:
    best = dict(min(rows, key=lambda r: r["cpu_seconds"]))
    best["seconds"] = min(r["seconds"] for r in rows)
    best.pop("x_adv", None)
    return best


def part_speed_onepixel(args, out: dict) -> None:
    from art.attacks.evasion import PixelAttack

    path, dataset, _ = MODELS["mnist"]
    model = rl.models.load(path).eval()
    x, y = images(dataset, args.speed_onepixel_n)
    k, gens = 1, args.onepixel_speed_generations
    pop = max(1, 400 // (2 + x.shape[1]) // k) * (2 + x.shape[1]) * k  # ART's DE population for k pixels

    def ours(m):
        return rl.attacks.OnePixel(k, population=pop, generations=gens, seed=0).attack(m, x, y).x_adv

    def art(m):
        atk = PixelAttack(_art_classifier(m, x), th=k, es=1, max_iter=gens, targeted=False, verbose=False)
        return torch.from_numpy(atk.generate(x.numpy(), y=y.numpy())).float()

    runs: dict = {"robustlab": [], "art": []}
    for _ in range(args.repeats):
        runs["robustlab"].append(_run_counted("speed-onepixel/robustlab", ours, model, x, y))
        runs["art"].append(_run_counted("speed-onepixel/art", art, model, x, y))
    rows = {k_: _best_of(v) for k_, v in runs.items()}
    for r in rows.values():
        r["cpu_vs_robustlab"] = r["cpu_seconds"] / rows["robustlab"]["cpu_seconds"]
        r["time_vs_robustlab"] = r["seconds"] / rows["robustlab"]["seconds"]
    out["speed_onepixel"] = {"model": path, "n": len(y), "pixels": k, "population": pop, "generations": gens,
                             "repeats": args.repeats, "libraries": rows}


def part_speed_hsj(args, out: dict) -> None:
    from art.attacks.evasion import HopSkipJump as ArtHSJ

    path, dataset, _ = MODELS["mnist"]
    model = rl.models.load(path).eval()
    x, y = images(dataset, args.speed_hsj_n)
    iters = args.hsj_speed_iterations

    def art(m):
        atk = ArtHSJ(_art_classifier(m, x), batch_size=64, targeted=False, norm=2, max_iter=iters, max_eval=10_000,
                     init_eval=100, init_size=100, verbose=False)
        return torch.from_numpy(atk.generate(x.numpy(), y=y.numpy())).float()

    runs: dict = {"robustlab": [], "art": []}
    budget = None
    for _ in range(args.repeats):
        runs["art"].append(_run_counted("speed-hsj/art", art, model, x, y))
        if budget is None:  # robustlab gets, per image, the model evaluations ART spent per image
            budget = max(2, -(-runs["art"][0]["model_rows"] // len(y)))
        runs["robustlab"].append(_run_counted(
            "speed-hsj/robustlab", lambda m: rl.attacks.HopSkipJump("l2", queries=budget, seed=0).attack(m, x, y).x_adv,
            model, x, y))
    for name, rs in runs.items():
        for r in rs:
            with torch.no_grad():
                ok = (model(r["x_adv"]).argmax(1) != y) & (model(x).argmax(1) == y)
            r["median_l2_successes"] = float((r["x_adv"] - x).flatten(1).norm(dim=1)[ok].median()) if bool(ok.any()) else None
    rows = {k_: _best_of(v) for k_, v in runs.items()}
    for r in rows.values():
        r["cpu_vs_robustlab"] = r["cpu_seconds"] / rows["robustlab"]["cpu_seconds"]
        r["time_vs_robustlab"] = r["seconds"] / rows["robustlab"]["seconds"]
    out["speed_hsj"] = {"model": path, "n": len(y), "norm": "l2", "art_max_iter": iters,
                        "robustlab_queries_per_image": budget, "repeats": args.repeats, "libraries": rows}


def part_onepixel(args, out: dict) -> None:
    path = args.onepixel_model
    model = rl.models.load(path).eval()
    x, y = images("fashion-mnist", args.onepixel_n)
    rows = {}
    for k in (1, 3, 5):
        atk = rl.attacks.OnePixel(k, population=args.onepixel_population, generations=args.onepixel_generations, seed=0)
        res, t = timed(lambda: run_batched(atk, model, x, y, args.batch_size))
        ok = res.success & res.clean_correct
        rows[str(k)] = {"success_on_correct": float(ok.sum() / res.clean_correct.sum()),
                        "robust_accuracy": res.robust_accuracy,
                        "median_queries_successes": float(res.queries[ok].float().median()) if bool(ok.any()) else None,
                        "seconds": t}
        print(f"onepixel/k={k}: success {100 * rows[str(k)]['success_on_correct']:.1f}% ({t:.1f} s)", flush=True)
    out["onepixel"] = {"model": path, "n": len(y), "clean_accuracy": float(res.clean_correct.float().mean()),
                       "population": args.onepixel_population, "generations": args.onepixel_generations,
                       "max_queries": args.onepixel_population * (args.onepixel_generations + 1), "pixels": rows}


def part_hsj(args, out: dict) -> None:
    path = args.hsj_model
    model = rl.models.load(path).eval()
    x, y = images("mnist", args.hsj_n)
    rows = {}
    for budget in [int(b) for b in args.hsj_budgets.split(",")]:
        res, t = timed(lambda: rl.attacks.HopSkipJump("l2", queries=budget, seed=0).attack(model, x, y))
        ok = res.success & res.clean_correct
        d = res.distance[ok]
        rows[str(budget)] = {"median_l2": float(d.median()), "mean_l2": float(d.mean()), "success": float(ok.float().mean()),
                             "mean_queries": float(res.queries[res.clean_correct].float().mean()), "seconds": t}
        print(f"hsj/{budget}: median L2 {rows[str(budget)]['median_l2']:.3f} ({t:.1f} s)", flush=True)
    dd, t_dd = timed(lambda: rl.attacks.get("ddn", "l2").attack(model, x, y))
    ok = dd.success & dd.clean_correct
    rows["white-box DDN"] = {"median_l2": float(dd.distance[ok].median()), "mean_l2": float(dd.distance[ok].mean()),
                             "success": float(ok.float().mean()), "seconds": t_dd}
    print(f"hsj/DDN: median L2 {rows['white-box DDN']['median_l2']:.3f}", flush=True)
    out["hsj"] = {"model": path, "n": len(y), "clean_accuracy": float(dd.clean_correct.float().mean()), "budgets": rows}


def part_nattack(args, out: dict) -> None:
    rows = {}
    for key in args.nattack_models.split(","):
        path, dataset, eps = MODELS[key]
        model = rl.models.load(path).eval()
        x, y = images(dataset, args.nattack_n)
        tm = rl.ThreatModel("linf", eps)
        na, t = timed(lambda: run_batched(rl.attacks.NATTACK(tm, queries=args.nattack_queries, seed=0), model, x, y,
                                          args.batch_size))
        ok = na.success & na.clean_correct
        pgd = run_batched(rl.attacks.PGD(tm, steps=40, seed=0), model, x, y, args.batch_size)
        rows[key] = {"model": path, "eps": eps, "n": len(y), "queries": args.nattack_queries,
                     "clean_accuracy": float(na.clean_correct.float().mean()),
                     "success_on_correct": float(ok.sum() / na.clean_correct.sum()),
                     "robust_accuracy": na.robust_accuracy,
                     "median_queries_successes": float(na.queries[ok].float().median()) if bool(ok.any()) else None,
                     "seconds": t, "pgd40_robust_accuracy": pgd.robust_accuracy,
                     "pgd40_success_on_correct": float((pgd.success & pgd.clean_correct).sum() / pgd.clean_correct.sum())}
        r = rows[key]
        print(f"nattack/{key}: success {100 * r['success_on_correct']:.1f}% (median queries {r['median_queries_successes']}), "
              f"robust {100 * r['robust_accuracy']:.1f}% vs PGD-40 {100 * r['pgd40_robust_accuracy']:.1f}% ({t:.1f} s)", flush=True)
    out["nattack"] = rows


# -- digits (8x8): the tests' model, no MNIST training needed ------------------------------------
_DIGITS: dict = {}


def digits_model():
    """The tests' DigitsNet (tests/conftest.py) trained with the same seed, and the test split."""
    if not _DIGITS:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import DigitsNet, _train

        train, test = rl.data.load("digits", "train"), rl.data.load("digits", "test")
        with torch.random.fork_rng():
            torch.manual_seed(0)
            _DIGITS["model"] = _train(DigitsNet(), train.images, train.labels, epochs=15, seed=0)
        _DIGITS["test"] = test
    return _DIGITS["model"], _DIGITS["test"]


def part_digits_square(args, out: dict) -> None:
    model, test = digits_model()
    x, y = test.images[: args.digits_n], test.labels[: args.digits_n]
    rows = {}
    for norm, eps in (("linf", 0.1), ("l2", 1.0)):
        tm = rl.ThreatModel(norm, eps)
        sq, t_sq = timed(lambda: rl.attacks.Square(tm, queries=1000, seed=0).attack(model, x, y))
        ap, t_ap = timed(lambda: rl.attacks.APGD(tm, steps=100, seed=0).attack(model, x, y))
        ok = sq.success & sq.clean_correct
        rows[f"{norm}-{eps}"] = {
            "square_1000_robust_accuracy": sq.robust_accuracy, "square_seconds": t_sq,
            "square_median_queries_successes": float(sq.queries[ok].float().median()) if bool(ok.any()) else None,
            "apgd_ce_100_robust_accuracy": ap.robust_accuracy, "apgd_seconds": t_ap,
            "union_robust_accuracy": float((sq.robust & ap.robust).float().mean()),
        }
        print(f"digits-square/{norm} {eps}: Square {100 * sq.robust_accuracy:.1f}% APGD-CE {100 * ap.robust_accuracy:.1f}%", flush=True)
    out["digits_square"] = {"n": len(y), "clean_accuracy": float(sq.clean_correct.float().mean()), "threats": rows}


def part_digits_hsj(args, out: dict) -> None:
    model, test = digits_model()
    x, y = test.images[: args.digits_hsj_n], test.labels[: args.digits_hsj_n]
    rows = {}
    for budget in (200, 1000, 5000):
        res, t = timed(lambda: rl.attacks.HopSkipJump("l2", queries=budget, seed=0).attack(model, x, y))
        ok = res.success & res.clean_correct
        rows[str(budget)] = {"median_l2": float(res.distance[ok].median()), "success": float(ok.float().mean()),
                             "mean_queries": float(res.queries[res.clean_correct].float().mean()), "seconds": t}
        print(f"digits-hsj/{budget}: median L2 {rows[str(budget)]['median_l2']:.3f} ({t:.1f} s)", flush=True)
    dd, t_dd = timed(lambda: rl.attacks.get("ddn", "l2").attack(model, x, y))
    rows["white-box DDN-100"] = {"median_l2": float(dd.distance[dd.success & dd.clean_correct].median()), "seconds": t_dd}
    out["digits_hsj"] = {"n": len(y), "budgets": rows}


def part_digits_onepixel(args, out: dict) -> None:
    model, test = digits_model()
    x, y = test.images[: args.digits_n], test.labels[: args.digits_n]
    rows = {}
    for k in (1, 3, 5):
        res, t = timed(lambda: rl.attacks.OnePixel(k, population=100, generations=30, seed=0).attack(model, x, y))
        ok = res.success & res.clean_correct
        rows[str(k)] = {"success_on_correct": float(ok.sum() / res.clean_correct.sum()),
                        "median_queries_successes": float(res.queries[ok].float().median()) if bool(ok.any()) else None,
                        "seconds": t}
        print(f"digits-onepixel/k={k}: success {100 * rows[str(k)]['success_on_correct']:.1f}% ({t:.1f} s)", flush=True)
    out["digits_onepixel"] = {"n": len(y), "population": 100, "generations": 30, "pixels": rows}


def part_digits_speed(args, out: dict) -> None:
    import numpy as np

    model, test = digits_model()
    x, y = test.images[: args.digits_n], test.labels[: args.digits_n]
    eps, q = 0.1, args.speed_queries

    def ours():
        return rl.attacks.Square(rl.ThreatModel("linf", eps), queries=q, seed=0).attack(model, x, y).x_adv

    def torchattacks_square():
        import torchattacks

        return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=q, n_restarts=1, p_init=0.8, seed=0)(x, y)

    def art_square():
        from art.attacks.evasion import SquareAttack
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
        atk = SquareAttack(clf, norm=np.inf, eps=eps, max_iter=q, p_init=0.8, nb_restarts=1, batch_size=len(y), verbose=False)
        return torch.from_numpy(atk.generate(x.numpy(), y=y.numpy()))

    out["digits_speed"] = _race({"robustlab": ours, "torchattacks": torchattacks_square, "art": art_square},
                                model, x, y, eps, args.repeats)
    out["digits_speed"].update({"n": len(y), "eps": eps, "queries": q})


def _race(libs: dict, model, x, y, eps: float, repeats: int) -> dict:
    best = {k: float("inf") for k in libs}
    cpu = {k: float("inf") for k in libs}
    acc: dict = {}
    for _ in range(repeats):
        for name, fn in libs.items():
            c0 = time.process_time()
            try:
                x_adv, t = timed(fn)
            except ImportError as exc:
                print(f"speed/{name}: not installed ({exc})", flush=True)
                continue
            cpu[name] = min(cpu[name], time.process_time() - c0)  # CPU time: steadier on a shared machine
            best[name] = min(best[name], t)
            acc[name] = robust_accuracy(model, x, y, x_adv, eps)
    rows = {k: {"seconds": best[k], "cpu_seconds": cpu[k], "robust_accuracy": acc.get(k)} for k in libs if best[k] < float("inf")}
    for k, r in rows.items():
        r["time_vs_robustlab"] = r["seconds"] / rows["robustlab"]["seconds"]
        r["cpu_vs_robustlab"] = r["cpu_seconds"] / rows["robustlab"]["cpu_seconds"]
        print(f"speed/{k}: {r['seconds']:.2f} s wall, {r['cpu_seconds']:.2f} s CPU, robust "
              f"{100 * (r['robust_accuracy'] or 0):.2f}%, {r['cpu_vs_robustlab']:.2f}x robustlab's CPU time", flush=True)
    return {"repeats": repeats, "libraries": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="standard,square,l2,speed")
    ap.add_argument("--models", default="mnist,fmnist", help="for the standard part")
    ap.add_argument("--mnist-model", default=MODELS["mnist"][0], help="the linf-PGD-trained MNIST model")
    ap.add_argument("--fmnist-model", default=MODELS["fmnist"][0], help="the PGD-trained Fashion-MNIST model")
    ap.add_argument("--n", type=int, default=500, help="images for standard vs AutoAttack")
    ap.add_argument("--schedules", default="rescaled,absolute", help="Square p-schedules tried inside standard")
    ap.add_argument("--standard-norm", default="linf", help="threat model norm of the standard part")
    ap.add_argument("--standard-eps", type=float, default=None, help="its radius (default: the model's linf eps)")
    ap.add_argument("--no-autoattack", action="store_true", help="standard part: skip pyautoattack")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="Square seeds of the schedule-seeds part")
    ap.add_argument("--square-n", type=int, default=500)
    ap.add_argument("--l2-n", type=int, default=500)
    ap.add_argument("--speed-n", type=int, default=100)
    ap.add_argument("--speed-queries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--speed-onepixel-n", type=int, default=20)
    ap.add_argument("--onepixel-speed-generations", type=int, default=10)
    ap.add_argument("--speed-hsj-n", type=int, default=20)
    ap.add_argument("--hsj-speed-iterations", type=int, default=5, help="ART max_iter; robustlab gets ART's queries")
    ap.add_argument("--onepixel-model", default="runs/fmnist-small-cnn")
    ap.add_argument("--onepixel-n", type=int, default=100)
    ap.add_argument("--onepixel-population", type=int, default=400)
    ap.add_argument("--onepixel-generations", type=int, default=50)
    ap.add_argument("--hsj-model", default="runs/mnist-small-cnn")
    ap.add_argument("--hsj-n", type=int, default=20)
    ap.add_argument("--hsj-budgets", default="1000,5000,20000")
    ap.add_argument("--nattack-models", default="mnist,mnist-std")
    ap.add_argument("--nattack-n", type=int, default=100)
    ap.add_argument("--nattack-queries", type=int, default=30_000)
    ap.add_argument("--digits-n", type=int, default=200, help="digits test images (digits-* parts)")
    ap.add_argument("--digits-hsj-n", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="benchmarks/results/blackbox.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    MODELS["mnist"] = (args.mnist_model, *MODELS["mnist"][1:])
    MODELS["fmnist"] = (args.fmnist_model, *MODELS["fmnist"][1:])
    out: dict = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "hardware": hardware(),
                 "command": " ".join(sys.argv)}
    path = Path(args.json)
    if path.is_file():  # parts run separately accumulate in one file
        out = {**json.loads(path.read_text()), **{k: out[k] for k in ("date", "hardware", "command")}}
    for part in [p.strip() for p in args.parts.split(",") if p.strip()]:
        {"standard": part_standard, "schedule-seeds": part_schedule_seeds, "square": part_square, "l2": part_l2, "speed": part_speed,
         "speed-onepixel": part_speed_onepixel, "speed-hsj": part_speed_hsj, "onepixel": part_onepixel,
         "hsj": part_hsj, "nattack": part_nattack,
         "digits-square": part_digits_square, "digits-hsj": part_digits_hsj, "digits-onepixel": part_digits_onepixel,
         "digits-speed": part_digits_speed}[part](args, out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
