"""``robustlab evaluate --model runs/mnist-cnn --attack pgd --eps 0.1,0.2,0.3``: clean and robust
accuracy per eps, the gradient-masking checks, ``report.json`` and ``index.html``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def parse_floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def parse_names(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected at least one name")
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="robust accuracy per eps, gradient-masking checks, JSON + HTML report",
        description="Evaluate a model (saved by robustlab, or your own: docs/byo.md) with a suite of attacks (and certifiers), print clean and robust "
                    "accuracy per eps and write report.json and a self-contained index.html.")
    from robustlab.cli._common import add_memory_arg, add_model_args

    add_model_args(p)
    p.add_argument("--suite", default="quick", help="quick, standard or a .toml file (default quick)")
    p.add_argument("--attack", type=parse_names, default=None, help="comma-separated attack names, replacing the suite's")
    p.add_argument("--norm", default=None, help="linf, l2, l1 or l0 (presets only; default linf)")
    p.add_argument("--eps", type=parse_floats, default=None, help="comma-separated radii, e.g. 0.1,0.2,0.3")
    p.add_argument("--transfer", type=parse_names, default=None,
                   help="comma-separated saved models whose adversarial examples are tried on this one")
    p.add_argument("--smoothing", type=float, default=None, metavar="SIGMA",
                   help="also certify with randomized smoothing at this sigma (L2)")
    p.add_argument("--smoothing-n", type=int, default=1000, help="noise samples per image for --smoothing")
    p.add_argument("--no-checks", action="store_true", help="skip the gradient-masking checks")
    p.add_argument("--defense", default=None, metavar="NAME[:VALUE]",
                   help="evaluate the model behind an input transformation: bit-depth:BITS, threshold:T, median:K, "
                        "blur:SIGMA or jpeg:QUALITY (robustlab.defenses.transforms). Adaptively: forward passes are "
                        "the defended model's, gradients of the non-differentiable ones go through BPDA's "
                        "straight-through surrogate")
    p.add_argument("--dataset", default=None,
                   help="a dataset name, a .npz file (images, labels), an image folder (one sub-folder per class) or "
                        "CIFAR-10/100 binary files (default: the dataset in the model's metadata)")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--root", default=None, help="dataset folder")
    p.add_argument("--n", "--n-images", dest="n", type=int, default=None,
                   help="evaluate the first N images (default all; under torchrun write --n-images: torchrun reads --n "
                        "as an ambiguous option of its own)")
    p.add_argument("--batch-size", type=int, default=256)
    add_memory_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: where the model loads, cpu)")
    p.add_argument("--name", default=None, help="the model's name in the report (default: its folder name)")
    p.add_argument("--out", default=None, help="output folder (default out/evaluate/<model name>)")
    p.add_argument("--resume", action="store_true", help="reuse the finished batches in --out")
    p.add_argument("--no-html", action="store_true", help="write report.json only")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def build_suite(args: argparse.Namespace, dataset: str):
    """The suite the arguments describe (preset or file, with --attack/--smoothing/--transfer/--no-checks)."""
    from robustlab import evaluate

    suite = evaluate.load_suite(args.suite, args.norm, args.eps, dataset)
    changes: dict = {}
    if args.attack:
        keep = {a: o for a, o in suite.attack_options.items() if a in args.attack}
        changes.update(attacks=args.attack, attack_options=keep,
                       threats=tuple(dataclasses.replace(t, attacks=None) for t in suite.threats),
                       name=f"{suite.name}: {', '.join(args.attack)}")
    if args.smoothing is not None:
        changes["certifiers"] = (*suite.certifiers, evaluate.CertifierSpec(
            "smoothing", {"sigma": args.smoothing, "n": args.smoothing_n}))
    if args.transfer:
        changes["transfer"] = {**suite.transfer, **{Path(p).name.replace(".safetensors", ""): p for p in args.transfer}}
    if args.no_checks:
        changes["checks"] = dataclasses.replace(suite.checks, enabled=False)
    return dataclasses.replace(suite, **changes) if changes else suite


def model_label(spec: str) -> str:
    """A short name for ``--model``: the folder or file name, or a factory's attribute."""
    from robustlab.models.external import looks_like_factory

    if looks_like_factory(spec):
        return spec.rsplit(":", 1)[1].rsplit(".", 1)[-1]
    return Path(spec).name.replace(".safetensors", "") or "model"


def run(args: argparse.Namespace) -> int:
    from robustlab.cli._common import run_distributed

    return run_distributed(args, _run)  # under torchrun: the images shared out over the processes


def _run(args: argparse.Namespace, info) -> int:

    from robustlab import data, evaluate
    from robustlab.cli._common import (check_model_data, check_out_dir, dataset_name, fit_batch, load_model,
                                       resolve_device)

    device = info.device if info.distributed else resolve_device(args.device)
    model_name = args.name or model_label(args.model)
    model = load_model(args, device)
    name = dataset_name(args, model)
    if args.defense is not None:  # the defended model, attacked through BPDA where it is not differentiable
        from robustlab.defenses.transforms import defended

        spec = args.defense.strip()
        model = defended(model, spec).bpda()
        model_name = args.name or f"{model_name}+{spec}"
    folder = model_name.replace(":", "-").replace("+", "-")
    out = check_out_dir(args.out if args.out else Path("out") / "evaluate" / folder)  # before data and attacks
    suite = build_suite(args, name)
    test = data.load(name, args.split, args.root)
    check_model_data(model, test, device)
    batch_size = fit_batch(args, model, test.shape, device)
    report = evaluate.run(model, test, suite, n=args.n, batch_size=batch_size, out=out, resume=args.resume,
                          seed=args.seed, progress=not args.no_progress, name=model_name, html=not args.no_html,
                          device=device)
    if not info.is_main:
        return 0
    print(report.table())
    wrote = "report.json" + ("" if args.no_html else " and index.html")
    ranks = f" on {info.world_size} processes" if info.distributed else ""
    print(f"wrote {wrote} in {out}/ ({report.models[0].seconds:.1f} s{ranks})")
    return 0
