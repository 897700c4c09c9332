"""``robustlab demo [--quick] [--out out/demo]``: on real MNIST, offline, train (or reuse) a standard
and a robust model and a Gaussian-noise model for randomized smoothing, evaluate them with the same
suite (adversarial examples transferred between the first two), certify the noise model, and write
one HTML report with the comparison under ``out/demo/``.

Models (cached in ``<cache>/models``, ``$ROBUSTLAB_CACHE``; retrained when their configuration
changes or with ``--retrain``):

- ``mnist-standard``: ``small-cnn`` (two conv layers, 166k parameters), standard training, 3 epochs;
- ``mnist-robust``: the same network with the adversarial training :func:`robust_training` returns
  (PGD-10 at linf eps 0.3, Madry et al. 2018, 5 epochs -- the CPU-feasible configuration); its
  robustness interval per image puts the largest radius IBP proves (Gowal et al. 2018) next to the
  smallest one the attacks break;
- ``mnist-noise``: the same network trained with Gaussian noise (sigma 0.25), certified with
  randomized smoothing (Cohen et al. 2019).

Full: 55,000 training images (5,000 held out for validation), the ``standard`` suite (with the
black-box Square) on the first 500 test images. ``--quick``: 10,000 training images, fewer epochs, the ``quick`` suite on 200
test images, fewer noise samples (the page says so).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

EPS_GRID = (0.1, 0.2, 0.3)
SIGMA = 0.25


def robust_training(eps: float = 0.3, steps: int = 10) -> tuple[str, Any, Optional[Callable]]:
    """THE HOOK for the demo's robust model: ``(description, adversary, evaluate_fn)``.

    PGD adversarial training (Madry et al. 2018, arXiv:1706.06083) at linf ``eps`` with ``steps``
    steps of size ``2.5 eps / steps`` from a random start, and PGD-10 robust validation on 500 held-out
    images that picks the best epoch (and stops on catastrophic overfitting). FGSM-RS (Wong et al.
    2020) is cheaper per epoch but overfits catastrophically on the small network at eps 0.3 (its
    robust accuracy collapses); PGD-10 on ``small-cnn`` costs a few minutes on 2 cores. Switch the
    demo to TRADES or FGSM-RS here.
    """
    from robustlab import ThreatModel, defenses

    tm = ThreatModel("linf", eps)
    return (f"PGD-{steps} adversarial training at linf eps {eps:g} (Madry et al. 2018)",
            defenses.PGDAdversary(tm, steps=steps),
            defenses.robust_validation(tm, n=500, steps=10))


@dataclass(frozen=True)
class DemoModel:
    name: str
    arch: str
    epochs: int
    quick_epochs: int
    kind: str  # "standard", "robust" or "noise"


#: The same architecture three ways, so the page compares training methods, not networks.
MODELS = (
    DemoModel("mnist-standard", "small-cnn", 3, 2, "standard"),
    DemoModel("mnist-robust", "small-cnn", 5, 5, "robust"),
    DemoModel("mnist-noise", "small-cnn", 4, 2, "noise"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="train/reuse MNIST models, evaluate and certify them, write out/demo/",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="10k training images, short training, 200 test images (< 2 min)")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--n", type=int, default=None, help="test images to evaluate (default 500; quick 200)")
    p.add_argument("--models", default=None, help="where trained models are cached (default <cache>/models)")
    p.add_argument("--retrain", action="store_true", help="ignore cached models")
    p.add_argument("--resume", action="store_true", help="reuse finished evaluation batches in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _adversary(spec: DemoModel) -> tuple[str, Any, Optional[Callable]]:
    from robustlab import defenses

    if spec.kind == "robust":
        return robust_training()
    if spec.kind == "noise":
        return f"Gaussian-noise training, sigma {SIGMA:g} (Cohen et al. 2019)", defenses.GaussianNoise(SIGMA), None
    return "standard training", None, None


def _get_model(spec: DemoModel, train_set, val_set, test_set, folder: Path, quick: bool, retrain: bool, progress: bool):
    """A cached model whose recorded demo configuration matches, else a freshly trained one."""
    from robustlab import defenses, models

    what, adversary, evaluate_fn = _adversary(spec)
    epochs = spec.quick_epochs if quick else spec.epochs
    config = {"name": spec.name, "arch": spec.arch, "epochs": epochs, "training": what, "train_size": len(train_set)}
    name = spec.name + ("-quick" if quick else "")
    path = folder / name
    if (path / "metadata.json").is_file() and not retrain:
        try:
            model = models.load(path)
        except (ValueError, OSError) as exc:
            print(f"  cannot reuse {path} ({exc}); training again")
        else:
            if model.metadata.get("demo") == config:
                acc = model.metadata.get("metrics", {}).get("test_accuracy")
                print(f"  reusing {path}" + (f" (test accuracy {100 * acc:.2f}%)" if acc is not None else ""))
                return model, what
    print(f"  training {name}: {spec.arch}, {what}, {epochs} epoch(s) on {len(train_set):,} images")
    model = models.create(spec.arch, train_set, seed=0)
    t0 = time.perf_counter()
    result = defenses.train(model, train_set, adversary=adversary, epochs=epochs, val_data=val_set, test_data=test_set,
                            evaluate_fn=evaluate_fn, out=path, seed=0, progress=progress,
                            schedule="onecycle", lr=3e-3,
                            eps_warmup_epochs=epochs / 3 if spec.kind == "robust" else 0.0,
                            metadata={"demo": config})
    acc = result.metrics.get("test_accuracy")
    print(f"  trained {name} in {time.perf_counter() - t0:.0f} s" + (f", test accuracy {100 * acc:.2f}%" if acc else ""))
    return models.load(path), what


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from robustlab import data, evaluate
    from robustlab.data.sources import cache_dir
    from robustlab.cli._common import check_out_dir
    from robustlab.report import build

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    t_start = time.perf_counter()
    out = check_out_dir(args.out)  # a file, or an unwritable place, fails before any training
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    quick = args.quick
    n_eval = args.n or (200 if quick else 500)
    folder = Path(args.models) if args.models else cache_dir() / "models"
    progress = not args.no_progress
    print(f"robustlab demo{' --quick' if quick else ''}: MNIST, offline")
    full_train, test_set = data.load("mnist", "train"), data.load("mnist", "test")
    print(f"  data: {full_train.source}")
    train_size, val_size = (10_000, 1_000) if quick else (55_000, 5_000)
    train_set = full_train[:train_size]
    val_set = full_train[train_size : train_size + val_size]
    trained = {}
    for spec in MODELS:
        trained[spec.name] = _get_model(spec, train_set, val_set, test_set, folder, quick, args.retrain, progress)
    t_train = time.perf_counter() - t_start

    base = evaluate.preset("quick" if quick else "standard", "linf", EPS_GRID)
    base = dataclasses.replace(base, checks=dataclasses.replace(base.checks, n=50 if quick else 100))
    standard, robust, noise = (trained[s.name][0] for s in MODELS)
    suites = {
        "mnist-standard": dataclasses.replace(base, transfer={"mnist-robust": robust}, transfer_eps=(0.1, 0.2, 0.3)),
        # The robustness interval: the largest linf radius IBP proves (bisection) next to the smallest
        # one the attacks break; PGD training leaves most of it unproven (the lecture's point).
        "mnist-robust": dataclasses.replace(base, transfer={"mnist-standard": standard}, transfer_eps=(0.1, 0.2, 0.3),
                                            certifiers=(evaluate.CertifierSpec("ibp", {"eps": 0.3, "search_steps": 8}),)),
        "mnist-noise": dataclasses.replace(base, certifiers=(evaluate.CertifierSpec(
            "smoothing", {"sigma": SIGMA, "n0": 50 if quick else 100, "n": 200 if quick else 1000, "alpha": 0.001}),)),
    }
    parts = []
    for spec in MODELS:
        model, what = trained[spec.name]
        print(f"  evaluating {spec.name} ({suites[spec.name].name} suite, {n_eval} test images)")
        rep = evaluate.run(model, test_set, suites[spec.name], n=n_eval, out=out / spec.name, name=spec.name,
                           progress=progress, resume=args.resume, html=False)
        m = rep.models[0]
        m.model["role"] = what
        parts.append(m)
        print("\n".join("    " + line for line in rep.table().splitlines()))
    wall = time.perf_counter() - t_start
    notes = [
        f"Data: MNIST ({full_train.source}). Models trained on {train_size:,} training images ({val_size:,} more held "
        f"out for validation); robust accuracy on the first {n_eval:,} test images; the training runs' test accuracy "
        "is on all 10,000.",
        f"Wall time: {wall:.0f} s in all, {t_train:.0f} s of it training or loading the cached models.",
    ]
    if quick:
        notes.insert(0, "Quick mode (--quick): short training on 10,000 images, the quick suite (FGSM, PGD-40) on 200 "
                        "test images and 200 noise samples per certificate. The numbers are indicative only; run "
                        "`robustlab demo` for the full evaluation.")
    title = "robustlab demo: standard vs adversarial training on MNIST" + (" (quick)" if quick else "")
    report = build.report(parts, title, notes)
    report.save(out)
    print()
    print(build.compare_table(report))
    print(f"\nwrote {out / 'index.html'} and {out / 'report.json'} ({time.perf_counter() - t_start:.0f} s in all)")
    return 0
