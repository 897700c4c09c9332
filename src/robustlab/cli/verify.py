"""``robustlab verify``: deterministic verification.

Of a model on test images (IBP, CROWN, alpha-CROWN, LP, MILP)::

    robustlab verify --model runs/mnist-ibp --eps 0.1 --method crown [--n-images 1000] [--norm linf] \\
        [--time-limit 60] [--out verify.json]

prints clean and verified accuracy (with the report's 95% Wilson intervals over the test images) and
writes the report (``report.json`` + ``index.html``: a schema-4 model section with the certificate at
``--eps`` and the per-image verification statuses and times) into the folder ``<out>`` without
``.json``, every file atomically; ``<out>`` itself still holds the old JSON, deprecated. ``--model`` is anything
``robustlab attack`` takes (a saved model, ``net.onnx``, a factory with ``--weights``).

Of VNN-COMP instances (an ONNX network and a VNNLIB property)::

    robustlab verify --onnx net.onnx --vnnlib prop.vnnlib --timeout 120 [--method bab] [--out DIR]
    robustlab verify --instances benchmark/instances.csv [--timeout-scale 0.5] [--out DIR] [--resume] [--jobs N]

prints the competition's answer (``sat`` with the counterexample, ``unsat``, ``timeout``,
``unknown``; one line per instance and a table for ``--instances``) and writes one record and one
result file per instance and ``summary.json`` into ``--out`` (:mod:`robustlab.verify.instances`),
and the report (``report.json`` + ``index.html``: per instance verified / falsified / unknown /
timeout and its time).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from robustlab.cli.options import nonnegative_float, positive_float, positive_int

METHODS = ("ibp", "crown", "alpha-crown", "lp", "crown-ibp", "milp", "bab")


def _property_methods() -> tuple:
    from robustlab.verify.methods import PROPERTY_METHODS

    return tuple(PROPERTY_METHODS)


def register(subparsers: argparse._SubParsersAction) -> None:
    from robustlab.cli._common import add_data_args, add_model_args, add_option

    p = subparsers.add_parser(
        "verify", help="deterministic verification: IBP, CROWN, alpha-CROWN, LP dual, complete MILP; VNN-COMP instances",
        description="Prove that a model's prediction cannot change within an Lp ball (intersected with the "
                    "image box): print verified accuracy and write per-image results as JSON. Or answer VNN-COMP "
                    "instances: an ONNX network and a VNNLIB property (--onnx/--vnnlib), or a benchmark's "
                    "instances.csv (--instances).",
    )
    add_model_args(p, required=False)
    p.add_argument("--eps", type=nonnegative_float, default=None,
                   help="radius to verify, in [0, 1] pixel units (with --model)")
    p.add_argument("--method", default=None,
                   help=f"with --model: a bound method, one of {', '.join(METHODS)} (default crown); with --onnx or "
                        "--instances: a method of robustlab.verify.methods.PROPERTY_METHODS: ibp, crown, alpha-crown, "
                        "lp (a search, then bounds: incomplete), milp or bab (complete: branch and bound with beta-CROWN, "
                        "the default)")
    p.add_argument("--norm", default="linf", choices=("linf", "l2", "l1"), help="threat model norm (default linf)")
    add_option(p, "n_images", default=1000, aliases=("--n",), note="default 1000")
    add_data_args(p)
    add_option(p, "batch_size", default=50, note="images per bound computation; default 50")
    p.add_argument("--time-limit", type=positive_float, default=60.0,
                   help="MILP or branch and bound seconds per image (default 60)")
    vnn = p.add_argument_group("VNN-COMP instances")
    vnn.add_argument("--onnx", default=None, help="an ONNX network (with --vnnlib)")
    vnn.add_argument("--vnnlib", default=None, help="a VNNLIB property of the --onnx network")
    vnn.add_argument("--instances", default=None,
                     help="a benchmark's instances CSV (rows: network, property, timeout; paths relative to the file)")
    vnn.add_argument("--timeout", type=positive_float, default=None,
                     help="seconds per instance (--onnx: default 300; --instances: replaces every row's timeout)")
    vnn.add_argument("--timeout-scale", type=positive_float, default=1.0,
                     help="multiply every instance's timeout (default 1; e.g. 0.1 for a quick pass)")
    add_option(vnn, "seed", default=0, note="of the falsification searches; default 0")
    vnn.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                     help="instances answered at once, each in its own process with its full timeout and the CPU "
                          "threads shared out (default 1)")
    add_option(p, "device", default=None)
    add_option(p, "out", default=None,
               note="with --model: a JSON file, default out/verify/<model>-<method>.json; with --onnx or --instances: "
                    "a folder, default out/verify/<name>")
    add_option(p, "resume", note="--model: the finished batches, kept in <out>.parts/; --onnx or --instances: the "
                                 "finished instances, kept in <out>/instances/")
    add_option(p, "no_progress")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustlab.cli._common import run_distributed

    modes = [name for name, on in (("--model", args.model), ("--onnx/--vnnlib", args.onnx or args.vnnlib),
                                   ("--instances", args.instances)) if on]
    if len(modes) != 1:
        raise ValueError("give one of --model (test images), --onnx with --vnnlib (one VNN-COMP instance) or "
                         f"--instances (a benchmark){'; got ' + ' and '.join(modes) if modes else ''}")
    if args.model:
        if args.eps is None:
            raise ValueError("--eps is required with --model (the radius to verify)")
        args.method = args.method or "crown"
        if args.method not in METHODS:
            raise ValueError(f"--method with --model must be one of {', '.join(METHODS)}, got {args.method}")
        return run_distributed(args, _run)  # under torchrun: the images shared out over the processes
    return _run_instances(args)


def _run_instances(args: argparse.Namespace) -> int:
    """``--onnx/--vnnlib`` or ``--instances``: answer VNN-COMP instances."""
    import logging

    from robustlab.cli._common import check_out_dir, resolve_device
    from robustlab.verify.instances import Instance, read_instances, result_text, run_instances
    from robustlab.verify.methods import DEFAULT_PROPERTY_METHOD

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.method = args.method or DEFAULT_PROPERTY_METHOD
    if args.method not in _property_methods():
        raise ValueError(f"--method with --onnx or --instances must be one of {', '.join(_property_methods())}, "
                         f"got {args.method}")
    if args.timeout is not None and not args.timeout > 0:
        raise ValueError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.onnx or args.vnnlib:
        if not (args.onnx and args.vnnlib):
            raise ValueError("--onnx and --vnnlib go together (a network and its property)")
        for opt, value in (("--onnx", args.onnx), ("--vnnlib", args.vnnlib)):
            if not Path(value).is_file():
                raise FileNotFoundError(f"{opt} {value}: no such file")
        instances = [Instance(Path(args.onnx), Path(args.vnnlib), args.timeout or 300.0)]
        name = f"{Path(args.onnx).stem}-{Path(args.vnnlib).stem}"
    else:
        instances = read_instances(args.instances)
        if args.timeout is not None:
            instances = [Instance(i.network, i.property, args.timeout, i.index) for i in instances]
        name = Path(args.instances).stem
    out = check_out_dir(args.out or Path("out") / "verify" / name)
    summary = run_instances(instances, out, method=args.method, seed=args.seed, timeout_scale=args.timeout_scale,
                            resume=args.resume, progress=not args.no_progress, device=resolve_device(args.device),
                            jobs=args.jobs)
    _instances_report(args, summary, out)
    if len(instances) == 1 and args.onnx:
        print(result_text(summary["records"][0]), end="")
    else:
        _print_table(summary)
    print(f"wrote {out / 'summary.json'}, {len(instances)} record(s) in {out / 'instances'} and the report "
          f"{out / 'report.json'} (and index.html)")
    if summary["unsound"]:
        print(f"robustlab verify: error: {summary['unsound']} unsat answer(s) contradicted by a confirmed counterexample "
              "(unsound bounds; see the records' warnings)")
        return 1
    return 0


def _instances_report(args: argparse.Namespace, summary: dict, out: Path) -> None:
    """The report of VNN-COMP instances (no labelled images: the clean accuracy is null) into ``out``."""
    from robustlab.cli._outputs import write_report
    from robustlab.evaluate.sections import CommandRun, Sections, model_section, verification

    records = summary["records"]
    options = {k: summary.get(k) for k in ("seed", "timeout_scale", "unsound", "per_network")}
    section = verification(method=summary["method"], norm=None, eps=None, options=options,
                           items=[f"{Path(r['network']).name} / {Path(r['property']).name}" for r in records],
                           statuses=[r["status"] for r in records], seconds=[r["seconds"] for r in records])
    networks = sorted({Path(r["network"]).name for r in records})
    name = Path(args.onnx).stem if args.onnx else Path(args.instances).stem
    run = CommandRun("verify", name, {"class": "ONNX networks", "networks": networks}, None, len(records),
                     {"method": summary["method"], "instances": len(records)}, seed=args.seed,
                     device=str(summary.get("device", "cpu")), seconds=summary["seconds"])
    m = model_section(run, Sections(verification=[section]))
    write_report(m, out, f"robustlab verify: {name} ({summary['method']})")


def _print_table(summary: dict) -> None:
    print(f"{'network':<28} {'instances':>9} {'unsat':>6} {'sat':>5} {'timeout':>8} {'unknown':>8}")
    for net, c in summary["per_network"].items():
        print(f"{net:<28} {c['instances']:>9} {c['unsat']:>6} {c['sat']:>5} {c['timeout']:>8} {c['unknown']:>8}")
    c = summary["counts"]
    print(f"{'total':<28} {summary['instances']:>9} {c['unsat']:>6} {c['sat']:>5} {c['timeout']:>8} {c['unknown']:>8}"
          f"   ({summary['seconds']:.1f} s, method {summary['method']})")


def _per_image(units: list, starts: list) -> tuple[list, list, list]:
    """Per image of every unit: its record (index, label, prediction, correct, verified, status),
    the statuses and the seconds spent on it."""
    from robustlab._io import tensor_json

    per_image, statuses, seconds_per = [], [], []
    for u, rec in enumerate(units):
        status = tensor_json(rec["status_json"])
        for i in range(rec["label"].shape[0]):
            per_image.append({"index": starts[u] + i, "label": int(rec["label"][i]),
                              "prediction": int(rec["prediction"][i]),
                              "correct": bool(rec["prediction"][i] == rec["label"][i]),
                              "verified": bool(rec["verified"][i]), "status": status[i]})
        statuses += status
        seconds_per += [float(v) for v in rec["seconds"].tolist()]
    return per_image, statuses, seconds_per


def _run(args: argparse.Namespace, info) -> int:
    import torch
    from tqdm.auto import tqdm

    from robustlab import data
    from robustlab._io import json_tensor
    from robustlab.cli._common import load_model
    from robustlab.cli._outputs import report_folder, write_outputs
    from robustlab.threat import ThreatModel
    from robustlab.evaluate.shards import UnitFiles, config_hash, run_units
    from robustlab.verify import certify

    for name in ("n_images", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.time_limit > 0:
        raise ValueError(f"--time-limit must be > 0 seconds, got {args.time_limit}")
    if args.method in ("milp", "bab") and args.norm != "linf":
        raise ValueError(f"--method {args.method} needs --norm linf, got --norm {args.norm}")
    tm = ThreatModel(args.norm, args.eps)
    out = Path(args.out) if args.out else Path("out") / "verify" / f"{Path(args.model).name}-{args.method}.json"
    folder = report_folder(out)
    device = info.device if info.distributed else torch.device(args.device or "cpu")
    model = load_model(args, device)
    name = args.dataset or getattr(model, "metadata", {}).get("dataset")
    if not name:
        raise ValueError(f"{args.model} records no dataset; pass --dataset")
    images = data.load(name, args.split, args.root)
    images = images.subset(min(args.n_images, len(images.labels)))
    x_all, y_all = images.images, images.labels
    n = len(y_all)
    t0 = time.perf_counter()
    starts = list(range(0, n, args.batch_size))

    def verify_batch(u: int) -> dict:
        x = x_all[starts[u] : starts[u] + args.batch_size].to(device)
        y = y_all[starts[u] : starts[u] + args.batch_size].to(device)
        t_batch = time.perf_counter()
        with torch.no_grad():
            pred = model(x).argmax(1)
        cert = certify(model, x, y, tm, args.method, time_limit=args.time_limit)
        status = cert.info.get("status") or ["verified" if not a else "not verified" for a in cert.abstain.tolist()]
        # MILP times each image; a bound method's batch time is shared out over its images
        secs = cert.info.get("seconds") or [(time.perf_counter() - t_batch) / x.shape[0]] * x.shape[0]
        return {"label": y, "prediction": pred, "verified": ~cert.abstain.bool(),
                "seconds": torch.tensor(secs, dtype=torch.float64), "status_json": json_tensor(list(status))}

    config = {k: v for k, v in vars(args).items() if k not in ("func", "no_progress", "resume", "out", "device")}
    config.update(weights=getattr(model, "metadata", {}).get("weights_sha256"), n_images=n, unit_seconds=True)
    parts_dir = out.parent / (out.name + ".parts")
    bar = tqdm(total=n, unit="img", desc=f"verify {args.method}", disable=args.no_progress or not info.is_main)
    units = run_units(len(starts), verify_batch, UnitFiles(parts_dir, config_hash(config), args.resume),
                      done=lambda u: bar.update(min(args.batch_size, n - starts[u])))
    bar.close()
    if not info.is_main:
        return 0
    per_image, statuses, seconds_per = _per_image(units, starts)
    seconds = time.perf_counter() - t0
    section = _images_section(args, model, images, units, statuses, seconds_per, seconds, device)
    clean_rate, ver_rate = section.clean, section.certificates[0].certified_accuracy[0]
    print(f"{name} ({args.split}): {n} images, {args.norm} eps={args.eps}, method={args.method}, "
          f"{seconds / n:.3f} s per image")
    print(f"clean accuracy     {clean_rate.value:.4f}  95% CI [{clean_rate.ci_low:.4f}, {clean_rate.ci_high:.4f}]")
    print(f"verified accuracy  {ver_rate.value:.4f}  95% CI [{ver_rate.ci_low:.4f}, {ver_rate.ci_high:.4f}]")
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    if args.method in ("milp", "bab"):
        print("outcomes: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    payload = _old_payload(args, section, per_image, counts, name, seconds)
    write_outputs(section, folder, f"robustlab verify: {args.method} on {section.name}", out, payload, parts=parts_dir,
                  note=f" ({info.world_size} processes)" if info.distributed else "")
    return 0


def _old_payload(args: argparse.Namespace, section, per_image: list, counts: dict, name: str, seconds: float) -> dict:
    """The deprecated ``robustlab-verify`` JSON (one more release): the section's numbers, one record per image."""
    n = len(per_image)
    clean, ver = section.clean, section.certificates[0].certified_accuracy[0]
    return {
        "format": "robustlab-verify", "format_version": 1,
        "model": str(args.model), "dataset": name, "split": args.split, "norm": args.norm, "eps": args.eps,
        "method": args.method, "time_limit": args.time_limit if args.method in ("milp", "bab") else None,
        "device": section.device, "seconds": seconds, "seconds_per_image": seconds / n, "n": n,
        "clean_accuracy": clean.value, "clean_accuracy_ci95": [clean.ci_low, clean.ci_high],
        "verified_accuracy": ver.value, "verified_accuracy_ci95": [ver.ci_low, ver.ci_high],
        "outcomes": counts, "per_image": per_image,
    }


def _images_section(args: argparse.Namespace, model, images, units: list, statuses: list, seconds_per: list,
                    seconds: float, device) -> "object":
    """The report's model section of ``verify --model``: the certificate at ``--eps`` (radius eps
    where verified) and the per-image statuses and times."""
    import torch

    from robustlab.certificates import Certificate
    from robustlab.cli.evaluate import model_label
    from robustlab.evaluate.sections import CommandRun, Sections, cert_report, model_section, verification

    labels = torch.cat([rec["label"].cpu() for rec in units])
    pred = torch.cat([rec["prediction"].cpu() for rec in units])
    verified = torch.cat([rec["verified"].cpu() for rec in units])
    options = {"time_limit": args.time_limit} if args.method in ("milp", "bab") else {}
    proven = Certificate(torch.where(verified, pred, torch.full_like(pred, -1)),
                         torch.where(verified, torch.full(verified.shape, float(args.eps), dtype=torch.float64), 0.0),
                         ~verified, norm=args.norm)  # radius eps where verified
    cert = cert_report(proven, labels, [0.0, float(args.eps)], method=args.method, certifies="model",
                       label=f"{args.method} ({args.norm} eps {args.eps:g})", options={"eps": args.eps, **options},
                       seconds=seconds)
    section = verification(method=args.method, norm=args.norm, eps=args.eps, options=options,
                           items=[str(i) for i in range(len(statuses))], statuses=statuses, seconds=seconds_per)
    run = CommandRun("verify", model_label(str(args.model)), model, images, len(statuses),
                     {"method": args.method, "norm": args.norm, "eps": args.eps, "split": args.split},
                     batch_size=args.batch_size, device=str(device), seconds=seconds)
    return model_section(run, Sections(certificates=[cert], verification=[section]), labels, pred)
