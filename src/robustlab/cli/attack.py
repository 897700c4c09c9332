"""``robustlab attack``: run one attack on the first N images of a dataset and save the results.

    robustlab attack --model runs/mnist-cnn --attack cw-l2 --n 500 --out adv.safetensors
    robustlab attack --model runs/mnist-cnn --attack pgd --eps 0.3 --option steps=100 --out pgd.safetensors
    robustlab attack --model runs/mnist-pgd --attack square --eps 0.3 --queries 5000 --out square.safetensors

Writes ``--out`` (safetensors: ``x_adv``, ``labels``, ``indices``, ``success``, ``clean_correct``,
``distance``, ``iterations``) and the report (``report.json`` + ``index.html``, schema 4's
``attack_runs`` section: robust accuracy and success rate with their 95% intervals, distances and
norms of the adversarial examples found, iterations, queries, the examples' path) into the folder
``<out>`` without its suffix (``adv.safetensors`` -> ``adv/``), every file atomically. The JSON
summary ``<out>`` with suffix ``.json`` is still written in its old format, deprecated. Minimal-norm attacks (cw-*, deepfool, fmn, ddn) need no ``--eps``: they report the
smallest perturbation they found; with ``--eps`` their result is kept inside that ball.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

#: The norm a minimal-norm attack measures when --norm is not given.
DEFAULT_NORM = {"cw-l2": "l2", "cw-linf": "linf", "cw-l0": "l0", "deepfool": "l2", "fmn": "l2", "ddn": "l2",
                "hopskipjump": "l2", "onepixel": "l0"}
#: Black-box attacks whose per-image model-query budget ``--queries`` sets (one-pixel: population x generations).
QUERY_ATTACKS = ("square", "nattack", "hopskipjump")


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, true/false), else a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    if not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a parameter name as KEY, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def register(subparsers: argparse._SubParsersAction) -> None:
    from robustlab.attacks import registry

    p = subparsers.add_parser(
        "attack", help="run one attack on a saved model and save the adversarial examples",
        description="Attack the first N images of a dataset and save the adversarial examples (safetensors) "
                    "with a JSON summary. Attacks: " + ", ".join(registry.available()) + ".",
    )
    from robustlab.cli._common import add_memory_arg, add_model_args

    add_model_args(p)
    p.add_argument("--attack", required=True, help="attack name (see robustlab.attacks.available())")
    p.add_argument("--eps", type=float, default=None,
                   help="radius of the threat model (required for fixed-budget attacks)")
    p.add_argument("--norm", default=None, help="linf, l2, l1 or l0 (default: linf, or the attack's own norm)")
    p.add_argument("--queries", type=int, default=None,
                   help="model queries per image for the black-box attacks (" + ", ".join(QUERY_ATTACKS) + ")")
    p.add_argument("--fast", default=None, choices=("bf16", "fp32", "compile"),
                   help="the fast path of fgsm, bim, pgd and apgd-* (robustlab.attacks.FastPath): bf16 autocast (or "
                        "fp32), channels_last, success checked every 8 steps, 'compile' adds torch.compile; success "
                        "is still judged by the model in fp32 (default: off)")
    p.add_argument("--option", "-o", type=parse_option, action="append", default=[], metavar="KEY=VALUE",
                   help="attack hyperparameter, e.g. -o steps=100 -o restarts=5 (repeatable)")
    p.add_argument("--dataset", default=None,
                   help="a dataset name, a .npz file, an image folder or CIFAR binary files (default: the dataset in "
                        "the model's metadata)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--root", default=None, help="dataset folder")
    p.add_argument("--n", type=int, default=500, help="attack the first N images (default 500)")
    p.add_argument("--batch-size", type=int, default=250)
    add_memory_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .safetensors file; the report (report.json, index.html) goes into the folder of the same "
                        "name without .safetensors (the deprecated JSON summary next to it, suffix .json)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _percentiles(values: "Any") -> dict:
    import torch

    if values.numel() == 0:
        return {}
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    p = torch.quantile(values.double(), q).tolist()
    return {"p10": p[0], "p25": p[1], "median": p[2], "p75": p[3], "p90": p[4],
            "mean": float(values.double().mean()), "min": float(values.min()), "max": float(values.max())}


def run(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save as st_save
    from tqdm.auto import tqdm

    from robustlab import data
    from robustlab.cli._outputs import DEPRECATED, report_folder
    from robustlab.cli._common import (check_model_data, check_out_file, dataset_name, fit_batch, load_model,
                                       resolve_device)
    from robustlab._io import atomic_write_bytes, atomic_write_text
    from robustlab.attacks import AttackResult, registry
    from robustlab.threat import ThreatModel

    name = args.attack.lower()
    registry.describe(name)  # unknown names fail before any work
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = check_out_file(args.out, "--out", ".safetensors")  # before any work: a bad --out fails now
    check_out_file(out.with_suffix(".json"), "--out (its .json summary)")
    folder = report_folder(out)
    device = resolve_device(args.device)
    norm = args.norm or DEFAULT_NORM.get(name, "linf")
    if args.eps is not None:
        threat: "ThreatModel | str" = ThreatModel(norm, args.eps)
    elif registry.minimal(name):
        threat = ThreatModel(norm, 0.0).norm  # validated norm name: unbounded minimal-norm search
    else:
        raise ValueError(f"attack {name!r} has a fixed budget: pass --eps (and --norm, default linf)")
    options = dict(args.option)
    options.setdefault("seed", args.seed)
    if args.fast is not None:
        options.setdefault("fast", args.fast)
    if args.queries is not None:
        if name not in QUERY_ATTACKS:
            raise ValueError(f"--queries applies to the query-based attacks {', '.join(QUERY_ATTACKS)}, not {name!r}")
        if args.queries < 1:
            raise ValueError(f"--queries must be >= 1, got {args.queries}")
        options.setdefault("queries", args.queries)
    try:
        attack = registry.get(name, threat, **options)
    except (TypeError, ValueError) as exc:
        given = " ".join(f"-o {k}={v!r}" for k, v in args.option) or "no options"
        raise ValueError(f"attack {name!r} with {given}: {exc}") from None

    model = load_model(args, device)
    dataset = dataset_name(args, model)
    images = data.load(dataset, args.split, args.root)
    check_model_data(model, images, device)  # channels, size, classes: named before any attack
    args.batch_size = fit_batch(args, model, images.shape, device)
    n = min(args.n, len(images.labels))
    x_all, y_all = images.images[:n].to(device), images.labels[:n].to(device)

    parts = []
    t0 = time.perf_counter()
    bar = tqdm(total=n, unit="img", desc=f"attack {name}", disable=args.no_progress)
    for start in range(0, n, args.batch_size):
        x, y = x_all[start : start + args.batch_size], y_all[start : start + args.batch_size]
        parts.append(attack.attack(model, x, y))
        bar.update(x.shape[0])
    bar.close()
    seconds = time.perf_counter() - t0
    res = AttackResult.concat(parts)

    tensors = {
        "x_adv": res.x_adv.contiguous(),
        "labels": y_all.contiguous(),
        "indices": torch.arange(n, dtype=torch.int64),
        "success": res.success.contiguous(),
        "clean_correct": res.clean_correct.contiguous(),  # type: ignore[union-attr]
        "distance": res.distance.contiguous(),
        "iterations": res.iterations.contiguous(),
    }
    if isinstance(res.info.get("broken_by"), torch.Tensor):
        tensors["broken_by"] = res.info["broken_by"].contiguous()  # index of the ensemble member that succeeded
    if res.queries is not None:
        tensors["queries"] = res.queries.contiguous()  # model queries spent per image (black-box attacks)
    tensors = {k: v.cpu().contiguous() for k, v in tensors.items()}
    header = {"format": "robustlab-attack", "attack": name, "model": str(args.model), "dataset": dataset,
              "split": args.split, "norm": res.norm}
    atomic_write_bytes(out, st_save(tensors, metadata=header))

    summary = _old_summary(args, res, attack, threat, dataset, seconds, out)
    summary_path = out.with_suffix(".json")
    atomic_write_text(summary_path, json.dumps(summary, indent=2, default=str) + "\n")
    section = _write_report(args, model, images, res, attack, seconds, out, folder)

    clean, run = section.clean, section.attack_runs[0].result  # the printed numbers are the report's
    print(f"{name} on {dataset} ({args.split}), {n} images, {res.norm}"
          f"{f' eps={args.eps}' if args.eps is not None else ' (minimal norm)'}: clean accuracy {clean.value:.4f}, "
          f"robust accuracy {run.robust.value:.4f} [{run.robust.ci_low:.4f}, {run.robust.ci_high:.4f}], "
          f"success on correct {run.success.value:.4f}")
    dist = run.distance
    if dist.count:
        print(f"{res.norm} distance of successful perturbations: median {dist.median:.4g}, "
              f"p10 {dist.p10:.4g}, p90 {dist.p90:.4g}, mean {dist.mean:.4g}")
    print(f"{seconds:.1f} s ({n / seconds:.1f} images/s); wrote {out} and the report {folder / 'report.json'} (and "
          f"index.html); {summary_path.name}: {DEPRECATED.format(folder=folder)}")
    return 0


def _old_summary(args: argparse.Namespace, res: Any, attack: Any, threat: Any, dataset: str, seconds: float,
                 out: Path) -> dict:
    """The deprecated ``robustlab-attack-summary`` JSON (one more release; report.json's ``attack_runs`` holds the same)."""
    from robustlab import __version__
    from robustlab.threat import ThreatModel

    name, n = args.attack.lower(), int(res.success.shape[0])
    found = res.success & res.clean_correct  # type: ignore[operator]
    correct = int(res.clean_correct.sum())  # type: ignore[union-attr]
    return {
        "format": "robustlab-attack-summary", "format_version": 1, "robustlab": __version__,
        "attack": name, "config": attack.config(), "model": str(args.model), "dataset": dataset,
        "split": args.split, "n": n, "norm": res.norm,
        "threat": threat.to_dict() if isinstance(threat, ThreatModel) else {"norm": threat, "eps": None},
        "clean_accuracy": correct / n,
        "robust_accuracy": res.robust_accuracy,
        "success_rate": res.success_rate,
        "success_rate_on_correct": (int(found.sum()) / correct) if correct else None,
        "distance": _percentiles(res.distance[found]),
        "iterations": {"mean": float(res.iterations.double().mean()), "max": int(res.iterations.max())},
        "queries": None if res.queries is None else _percentiles(res.queries[res.clean_correct]),  # type: ignore[index]
        "seconds": seconds, "images_per_s": n / seconds if seconds > 0 else None,
        "adversarial_examples": out.name,
    }


def _write_report(args: argparse.Namespace, model: Any, images: Any, res: Any, attack: Any, seconds: float, out: Path,
                  folder: Path) -> Any:
    """The report of this run (schema 4's ``attack_runs`` section: the first ``len(res)`` images) into
    ``folder``; returns its model section."""
    import os

    from robustlab.cli._outputs import write_report
    from robustlab.cli.evaluate import model_label
    from robustlab.evaluate.sections import CommandRun, Sections, attack_run, model_section
    from robustlab.models.metrics import predictions

    name, n = args.attack.lower(), int(res.success.shape[0])
    x, y = images.images[:n], images.labels[:n]
    section = attack_run(name, res, x, eps=args.eps, config=attack.config(), seconds=seconds,
                         examples=os.path.relpath(out.resolve(), folder.resolve()))
    settings = {"attack": name, "norm": res.norm, "eps": args.eps, "split": args.split, "options": dict(args.option)}
    run = CommandRun("attack", model_label(str(args.model)), model, images, n, settings, seed=args.seed,
                     batch_size=args.batch_size, device=str(res.x_adv.device), seconds=seconds)
    m = model_section(run, Sections(attack_runs=[section]), y, predictions(model, (x, y), args.batch_size))
    write_report(m, folder, f"robustlab attack: {name} on {m.name}")
    return m
