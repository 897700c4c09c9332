"""Adversarial training side by side: standard, FGSM-regularised, FGSM-RS, PGD-AT, TRADES (and MART).

Each method trains the same architecture from the same seed on the same data, through the one
training loop (:func:`robustlab.training.train`), with a held-out validation split and PGD-10
robust validation picking the best epoch (and stopping on catastrophic overfitting). Every model
is then evaluated on the first ``--n-eval`` test images: clean accuracy, PGD-40 with 10 restarts
(step 2.5 eps / 40), and the worst-case ``standard`` suite (APGD-CE, APGD-T, FMN; Croce & Hein
2020). Trained models are kept in ``--runs`` and reused when their configuration matches, so an
interrupted benchmark continues where it stopped.

    python benchmarks/bench_training.py --dataset fashion-mnist --arch small-cnn --eps 0.1 \
        --methods none,fgsm-reg,fgsm-rs,pgd,trades --epochs 8 --n-eval 1000

Writes ``--out`` (JSON) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import hardware  # noqa: E402

import robustlab as rl  # noqa: E402
from robustlab._io import atomic_write_text  # noqa: E402
from robustlab.training.adversaries import from_args  # noqa: E402


def train_one(method: str, args: argparse.Namespace, train_set, val_set, test_set) -> tuple[torch.nn.Module, dict]:
    """Train (or reuse) the model of ``method``; return it and its training record."""
    folder = Path(args.runs) / f"{args.dataset}-{args.arch}-{method}-eps{args.eps:g}-e{args.epochs}"
    config = {"method": method, "dataset": args.dataset, "arch": args.arch, "eps": args.eps, "epochs": args.epochs,
              "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed, "train_n": len(train_set)}
    if (folder / "metadata.json").is_file():
        model = rl.models.load(folder)
        if model.metadata.get("bench") == config:
            print(f"  reusing {folder}", flush=True)
            return model.eval(), model.metadata
    params = {"eps": args.eps, "norm": "linf"}
    if method == "pgd" or method in ("trades", "mart"):
        params["steps"] = args.pgd_steps
    adversary = from_args(method, params)
    tm = rl.ThreatModel("linf", args.eps)
    evaluate_fn = rl.training.robust_validation(tm, n=500, steps=10) if method not in ("none", "noise") else None
    model = rl.models.create(args.arch, train_set, seed=args.seed)
    print(f"  training {method} ({args.epochs} epochs)", flush=True)
    rl.training.train(model, train_set, adversary=adversary, epochs=args.epochs, batch_size=args.batch_size,
                      optimizer="adam", lr=args.lr, schedule="onecycle", val_data=val_set, test_data=test_set,
                      evaluate_fn=evaluate_fn, out=folder, resume=(folder / "checkpoint").exists(), seed=args.seed,
                      eps_warmup_epochs=args.warmup if method not in ("none", "noise") else 0.0,
                      progress=False, metadata={"bench": config})
    model = rl.models.load(folder)
    return model.eval(), model.metadata


def robust(attack: rl.attacks.Attack, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    ok = torch.cat([attack.attack(model, x[i:i + bs], y[i:i + bs]).robust for i in range(0, len(y), bs)])
    return float(ok.float().mean()), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--arch", default="small-cnn")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--methods", default="none,fgsm-reg,fgsm-rs,pgd,trades")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--warmup", type=float, default=1.0, help="epochs of linear eps warm-up")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--pgd-steps", type=int, default=10, help="inner PGD steps of PGD-AT / TRADES / MART")
    p.add_argument("--val-n", type=int, default=5000)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--no-standard", action="store_true", help="skip the worst-case standard suite")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--runs", default="runs/bench-training")
    p.add_argument("--evaluate", default=None, metavar="DIR[,DIR]",
                   help="evaluate these saved models (e.g. trained with `robustlab train`) instead of training")
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/training_<dataset>.json)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    full = rl.data.load(args.dataset, "train")
    test_set = rl.data.load(args.dataset, "test")
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(args.seed))
    val_set, train_set = full.subset(order[:args.val_n].sort().values), full.subset(order[args.val_n:].sort().values)
    x, y = test_set.images[:args.n_eval], test_set.labels[:args.n_eval]
    tm = rl.ThreatModel("linf", args.eps)
    pgd = rl.attacks.PGD(tm, steps=40, restarts=10, step_size=2.5 * args.eps / 40, seed=0)
    std = rl.attacks.standard(tm)
    rows = []
    if args.evaluate:
        jobs = [(Path(d).name, d) for d in args.evaluate.split(",") if d.strip()]
    else:
        jobs = [(m.strip(), None) for m in args.methods.split(",") if m.strip()]
    for method, folder in jobs:
        if folder is None:
            model, meta = train_one(method, args, train_set, val_set, test_set)
        else:
            model = rl.models.load(folder).eval()
            meta = model.metadata
        history = meta["history"]
        seconds = [h["seconds"] for h in history]
        clean = float((rl.attacks.predict(model, x, 500).argmax(1) == y).float().mean())
        pgd_acc, pgd_s = robust(pgd, model, x, y, 500)
        row = {"method": method, "arch": meta.get("architecture", {}).get("name"), "adversary": meta["training"]["adversary"], "epochs_run": len(history),
               "best_epoch": meta.get("best_epoch"), "stopped_early": meta.get("stopped_early", False),
               "train_seconds": sum(seconds), "seconds_per_epoch": sum(seconds) / len(seconds),
               "test_accuracy_full": meta["metrics"].get("test_accuracy"), "clean": clean,
               "pgd40x10": pgd_acc, "pgd_seconds": pgd_s, "history": history}
        if not args.no_standard:
            row["standard"], row["standard_seconds"] = robust(std, model, x, y, 500)
        rows.append(row)
        print(f"  {method}: clean {100 * clean:.2f}%, PGD-40x10 {100 * pgd_acc:.2f}%"
              + (f", standard {100 * row['standard']:.2f}%" if "standard" in row else "")
              + f", {row['seconds_per_epoch']:.1f} s/epoch", flush=True)
    result = {"dataset": args.dataset, "arch": args.arch, "eps": args.eps, "epochs": args.epochs,
              "n_eval": args.n_eval, "hardware": hardware(), "date": time.strftime("%Y-%m-%d"),
              "config": vars(args), "rows": rows}
    out = Path(args.out or f"benchmarks/results/training_{args.dataset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1))
    print(f"\n| method | clean % | PGD-40x10 % | standard % | s/epoch | epochs (best) | total s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        st = f"{100 * r['standard']:.2f}" if "standard" in r else "-"
        print(f"| {r['method']} | {100 * r['clean']:.2f} | {100 * r['pgd40x10']:.2f} | {st} | "
              f"{r['seconds_per_epoch']:.1f} | {r['epochs_run']} ({r['best_epoch']}) | {r['train_seconds']:.0f} |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
