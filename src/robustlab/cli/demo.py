"""``robustlab demo``: train (or reuse) a standard and an adversarially trained MNIST model,
evaluate both under the same attacks, write JSON and an HTML page under ``out/demo/``.

Configurations (measured on a 2-core CPU, see docs/demo.md):
- standard: Madry et al.'s ``cnn``, Adam, 2 epochs on the full training set (>= 99% test accuracy);
- robust: ``small-cnn`` trained with FGSM-RS (Wong et al. 2020) at eps 0.3 with eps warm-up,
  the CPU-feasible adversarial training configuration.
``--quick`` uses a 10,000-image training subset, fewer epochs and 200 test images.
Models are cached in ``<cache>/models`` (``$ROBUSTLAB_CACHE``) and reused on later runs.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

STANDARD = {"name": "mnist-cnn", "arch": "cnn", "epochs": 2, "adversary": None}
ROBUST = {"name": "mnist-small-cnn-fgsmrs", "arch": "small-cnn", "epochs": 15, "adversary": "fgsm-rs", "eps": 0.3}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="train/reuse MNIST models, evaluate them, write out/demo/")
    p.add_argument("--quick", action="store_true", help="small training subset and 200 test images (< 2 min)")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--n", type=int, default=None, help="test images to evaluate (default 1000; quick 200)")
    p.add_argument("--models", default=None, help="where trained models are cached (default <cache>/models)")
    p.add_argument("--retrain", action="store_true", help="ignore cached models")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _model(cfg: dict, train_set, test_set, folder: Path, quick: bool, retrain: bool, progress: bool):
    from robustlab import ThreatModel, defenses, models

    name = cfg["name"] + ("-quick" if quick else "")
    path = folder / name
    if (path / "metadata.json").is_file() and not retrain:
        model = models.load(path)
        print(f"  reusing {path} (test accuracy {model.metadata['metrics'].get('val_accuracy', float('nan')):.4f})")
        return model, name
    adversary, evaluate_fn = None, None
    if cfg["adversary"] == "fgsm-rs":
        tm = ThreatModel("linf", cfg["eps"])
        adversary = defenses.FGSMRS(tm)
        evaluate_fn = defenses.robust_validation(tm, n=500, steps=10)
    epochs = max(1, cfg["epochs"] // 3) if quick else cfg["epochs"]
    data = train_set.subset(10_000) if quick else train_set
    print(f"  training {name}: {cfg['arch']}, {epochs} epochs, adversary {cfg['adversary'] or 'none'}")
    model = models.create(cfg["arch"], train_set, seed=0)
    t0 = time.perf_counter()
    # Validation images come from the end of the test set; the evaluation uses its beginning.
    val = test_set[len(test_set) - 2000 :]
    defenses.train(model, data, adversary=adversary, epochs=epochs, val_data=val, evaluate_fn=evaluate_fn, out=path,
                   seed=0, progress=progress, eps_warmup_epochs=epochs / 3 if adversary is not None else 0.0)
    print(f"  trained {name} in {time.perf_counter() - t0:.0f} s")
    return models.load(path), name


def run(args: argparse.Namespace) -> int:
    from robustlab import data, evaluate, report
    from robustlab.data.sources import cache_dir

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    t_start = time.perf_counter()
    out = Path(args.out)
    folder = Path(args.models) if args.models else cache_dir() / "models"
    n = args.n or (200 if args.quick else 1000)
    progress = not args.no_progress
    print("robustlab demo: MNIST, offline")
    train_set, test_set = data.load("mnist", "train"), data.load("mnist", "test")
    print(f"  data: {train_set.source}")
    suite = evaluate.preset("quick", "linf", (0.1, 0.2, 0.3))
    evaluations = {}
    for cfg in (STANDARD, ROBUST):
        model, name = _model(cfg, train_set, test_set, folder, args.quick, args.retrain, progress)
        ev = evaluate.run(model, test_set, suite, n=n, out=out / name, progress=progress)
        ev.info.update(model=name, training=model.metadata.get("training", {}))
        ev.save(out / name)
        evaluations[name] = (model, ev)
        print(f"\n{name}\n{ev.table()}\n")
    page = report.write_comparison(out, evaluations, test_set, title="robustlab demo: standard vs FGSM-RS training on MNIST",
                                   wall_seconds=time.perf_counter() - t_start)
    print(f"wrote {page} and the JSON evaluations in {out}/ ({time.perf_counter() - t_start:.0f} s in all)")
    return 0
