"""``robustlab detect``: how well detectors catch adversarial examples, non-adaptive and adaptive.

    robustlab detect --model runs/mnist-cnn --detector squeeze,magnet --attacks fgsm,pgd,cw-l2 --eps 0.3 --adaptive

For each detector: it is built on the first ``--n-train`` training images (kNN/LID reference,
MagNet's auto-encoder), fitted at ``--fpr`` on ``--n-fit`` held-out test images, and judged on the
first ``--n-images`` test images (disjoint from the fitting ones): per attack, the detection rate (the
fraction of successful adversarial examples flagged) at the fitted threshold, the achieved false
positive rate on the clean versions, and the ROC AUC of adversarial vs clean scores. With
``--adaptive`` each attack is rerun in its adaptive form: PGD with ``--steps`` steps, CW-L2 as
``--steps`` steps in an L2 ball of radius ``--l2-eps``, for the kNN detector as
:class:`robustlab.attacks.KNNFeaturePGD`, which pulls the input's features toward the nearest
reference features of another class so that the neighbours and the classifier agree on it
(Sitawarin & Wagner 2019, arXiv:1903.08333), for the others as
:class:`robustlab.attacks.DetectorAwarePGD` against the detector's differentiable score (Carlini
& Wagner 2017, arXiv:1705.07263; CW-L2: on the CW margin); FGSM as one DetectorAwarePGD step.

Writes the report (``report.json`` + ``index.html``: schema 4's ``detection`` section, every rate
with the report's 95% interval, the ROC curves) into the folder ``<out>`` without ``.json``, every
file atomically. ``--out`` itself still holds the old JSON (``format: robustlab-detect``, one
record per (detector, attack, adaptive)), deprecated, and ``--html DIR`` its old page;
``robustlab.evaluate.detection`` is the Python side (``evaluate_detector``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional

from robustlab.cli.options import nonnegative_float, positive_float, positive_int, probability
from robustlab.evaluate.detection import (DETECTION_ATTACKS as ATTACKS, DETECTORS, build_detector,  # noqa: F401
                                          detection_record, evaluate_detector, make_attack, run_attack)


def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in allowed]
    if not names or bad:
        raise ValueError(f"--{what} must be a comma-separated list of {', '.join(allowed)}, got {text!r}")
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "detect", help="detection rate and ROC AUC of adversarial-example detectors, non-adaptive and adaptive",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    from robustlab.cli._common import add_data_args, add_model_args, add_option

    add_model_args(p)
    p.add_argument("--detector", required=True, help="comma-separated: " + ", ".join(DETECTORS))
    p.add_argument("--attacks", default="fgsm,pgd,cw-l2", help="comma-separated: " + ", ".join(ATTACKS))
    p.add_argument("--adaptive", action="store_true", help="also run the detector-aware version of each attack")
    p.add_argument("--eps", type=nonnegative_float, required=True, help="linf radius of FGSM and PGD")
    p.add_argument("--l2-eps", type=positive_float, default=3.0,
                   help="L2 radius of the adaptive CW-L2 attack (default 3.0)")
    p.add_argument("--steps", type=positive_int, default=40)
    p.add_argument("--fpr", type=probability, default=0.05, help="false-positive rate the threshold is fitted at")
    add_option(p, "n_images", default=200, aliases=("--n",), note="of the test split, attacked; default 200")
    p.add_argument("--n-fit", type=positive_int, default=500, help="held-out clean test images for the threshold")
    p.add_argument("--n-train", type=positive_int, default=5000,
                   help="training images for references / the auto-encoder")
    add_data_args(p, split=False)
    add_option(p, "device")
    add_option(p, "batch_size", default=100, note="images per batch; default 100")
    add_option(p, "seed", default=0)
    add_option(p, "out", required=True, note="a JSON file of the deprecated format; the report (report.json, "
                                              "index.html) goes into the folder of the same name without .json")
    add_option(p, "no_progress")
    p.add_argument("--html", default=None, metavar="DIR",
                   help="also write the detection page (table and ROC curves: detection.html, detection_roc.png) into DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, *, model: Optional[Any] = None) -> int:
    from robustlab import __version__, data
    from tqdm.auto import tqdm

    from robustlab.cli._common import dataset_name, load_model, resolve_device
    from robustlab.cli._outputs import report_folder, write_outputs
    from robustlab.cli.evaluate import model_label
    from robustlab.evaluate.sections import CommandRun, Sections, detection, model_section
    from robustlab.models.metrics import predictions

    detectors = _names(args.detector, DETECTORS, "detector")
    attacks = _names(args.attacks, ATTACKS, "attacks")
    for flag in ("n_images", "n_fit", "n_train", "steps", "batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if not 0.0 < args.fpr < 1.0:
        raise ValueError(f"--fpr must be in (0, 1), got {args.fpr}")
    device = resolve_device(getattr(args, "device", None))
    model = (load_model(args, device) if model is None else model.to(device)).eval()
    dataset = dataset_name(args, model)
    test = data.load(dataset, "test", args.root)
    train = data.load(dataset, "train", args.root)
    n = args.n_images
    if n + args.n_fit > len(test.labels):
        raise ValueError(f"--n-images + --n-fit = {n + args.n_fit} exceeds the {len(test.labels)} test images")
    x, y = test.images[:n].to(device), test.labels[:n].to(device)
    fit_x = test.images[n : n + args.n_fit].to(device)
    tr_x, tr_y = train.images[: args.n_train].to(device), train.labels[: args.n_train].to(device)

    folder = report_folder(args.out)  # before any work: an unwritable report folder fails now
    t0 = time.perf_counter()
    records = []
    bar = tqdm(total=len(detectors) * len(attacks) * (2 if args.adaptive else 1), unit="run", desc="detect",
               disable=getattr(args, "no_progress", False))
    for dname in detectors:
        det = build_detector(dname, model, tr_x, tr_y, seed=args.seed).fit(fit_x, fpr=args.fpr, batch_size=args.batch_size)
        for aname in attacks:
            for adaptive in ((False, True) if args.adaptive else (False,)):
                attack = make_attack(aname, args.eps, detector=det if adaptive else None, steps=args.steps,
                                     l2_eps=args.l2_eps, seed=args.seed)
                rec = evaluate_detector(det, model, attack, x, y, batch_size=args.batch_size)
                rec.update(detector=dname, detector_config=det.config(), attack_name=aname, adaptive=adaptive)
                records.append(rec)
                bar.update(1)
                rate = "n/a" if rec["detection_rate"] is None else f"{rec['detection_rate']:.3f}"
                auc = "n/a" if rec["auc"] is None else f"{rec['auc']:.3f}"
                print(f"{dname:8s} {aname:6s} {'adaptive' if adaptive else 'plain':8s} detection {rate} at "
                      f"FPR {args.fpr:g} (fit {det.fit_fpr:.3f}), AUC {auc}, evasion {rec['evasion_rate']:.3f} "
                      f"({rec['attack_success']} adversarial of {rec['n']})")
    bar.close()
    out = {
        "format": "robustlab-detect", "format_version": 1, "robustlab": __version__, "model": str(args.model),
        "dataset": dataset, "eps": args.eps, "l2_eps": args.l2_eps, "fpr": args.fpr, "n": n,
        "n_fit": args.n_fit, "n_train": args.n_train, "seed": args.seed, "records": records,
    }
    settings = {"detectors": detectors, "attacks": attacks, "adaptive": bool(args.adaptive), "eps": args.eps,
                "fpr": args.fpr}
    run = CommandRun("detect", model_label(str(args.model)), model, test, n, settings, seed=args.seed,
                     batch_size=args.batch_size, seconds=time.perf_counter() - t0)
    options = {"l2_eps": args.l2_eps, "steps": args.steps, "n": n, "n_fit": args.n_fit, "n_train": args.n_train}
    section = model_section(run, Sections(detection=detection(records, target_fpr=args.fpr, eps=args.eps,
                                                              options=options)),
                            y, predictions(model, (x, y), args.batch_size))
    write_outputs(section, folder, f"robustlab detect: {', '.join(detectors)} on {section.name}", Path(args.out), out)
    if getattr(args, "html", None):
        from robustlab.report.detection import save_detection

        print(f"wrote {save_detection(json.loads(json.dumps(out, default=str)), args.html) / 'detection.html'}")
    return 0
