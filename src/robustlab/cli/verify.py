"""``robustlab verify``: deterministic verification of a saved model (IBP, CROWN, alpha-CROWN, LP, MILP).

    robustlab verify --model runs/mnist-ibp --eps 0.1 --method crown [--n 1000] [--norm linf] \\
        [--time-limit 60] [--out verify.json]

Prints clean and verified accuracy (with 95% Clopper-Pearson intervals over the test images) and
writes JSON (atomically) with the settings and one record per image.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

METHODS = ("ibp", "crown", "alpha-crown", "lp", "crown-ibp", "milp")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "verify", help="deterministic verification: IBP, CROWN, alpha-CROWN, LP dual, complete MILP",
        description="Prove that a model's prediction cannot change within an Lp ball (intersected with the "
                    "image box): print verified accuracy and write per-image results as JSON.",
    )
    p.add_argument("--model", required=True, help="a saved robustlab model (a ReLU network)")
    p.add_argument("--eps", type=float, required=True, help="radius to verify, in [0, 1] pixel units")
    p.add_argument("--method", choices=METHODS, default="crown", help="bound method (default crown)")
    p.add_argument("--norm", default="linf", choices=("linf", "l2", "l1"), help="threat model norm (default linf)")
    p.add_argument("--n", "--n-images", dest="n", type=int, default=1000,
                   help="verify the first N test images (default 1000; --n-images under torchrun)")
    p.add_argument("--dataset", default=None, help="default: the dataset in the model's metadata")
    p.add_argument("--split", default="test", help="dataset split (default test)")
    p.add_argument("--batch-size", type=int, default=50, help="images per bound computation (default 50)")
    p.add_argument("--time-limit", type=float, default=60.0, help="MILP seconds per image (default 60)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--out", default=None, help="JSON file (default out/verify/<model>-<method>.json)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the finished batches of an interrupted run with the same arguments (kept in <out>.parts/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustlab.cli._common import run_distributed

    return run_distributed(args, _run)  # under torchrun: the images shared out over the processes


def _run(args: argparse.Namespace, info) -> int:
    import shutil

    import torch
    from tqdm.auto import tqdm

    from robustlab import data, models
    from robustlab._io import atomic_write_text, json_tensor, tensor_json
    from robustlab.stats import clopper_pearson
    from robustlab.threat import ThreatModel
    from robustlab.evaluate.shards import config_hash, run_units
    from robustlab.verify import certify


    for name in ("n", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.time_limit > 0:
        raise ValueError(f"--time-limit must be > 0 seconds, got {args.time_limit}")
    if args.method == "milp" and args.norm != "linf":
        raise ValueError(f"--method milp needs --norm linf, got --norm {args.norm}")
    tm = ThreatModel(args.norm, args.eps)
    if not Path(args.model).exists():
        raise FileNotFoundError(f"no model at {args.model}")
    out = Path(args.out) if args.out else Path("out") / "verify" / f"{Path(args.model).name}-{args.method}.json"
    device = info.device if info.distributed else torch.device(args.device or "cpu")
    model = models.load(args.model, map_location=device).eval()
    name = args.dataset or getattr(model, "metadata", {}).get("dataset")
    if not name:
        raise ValueError(f"{args.model} records no dataset; pass --dataset")
    images = data.load(name, args.split)
    images = images.subset(min(args.n, len(images.labels)))
    x_all, y_all = images.images, images.labels
    n = len(y_all)
    t0 = time.perf_counter()
    starts = list(range(0, n, args.batch_size))

    def verify_batch(u: int) -> dict:
        x = x_all[starts[u] : starts[u] + args.batch_size].to(device)
        y = y_all[starts[u] : starts[u] + args.batch_size].to(device)
        with torch.no_grad():
            pred = model(x).argmax(1)
        cert = certify(model, x, y, tm, args.method, time_limit=args.time_limit)
        status = cert.info.get("status") or ["verified" if not a else "not verified" for a in cert.abstain.tolist()]
        return {"label": y, "prediction": pred, "verified": ~cert.abstain.bool(),
                "status_json": json_tensor(list(status))}

    config = {k: v for k, v in vars(args).items() if k not in ("func", "no_progress", "resume", "out", "device")}
    config.update(weights=getattr(model, "metadata", {}).get("weights_sha256"), n_images=n)
    parts_dir = out.parent / (out.name + ".parts")
    bar = tqdm(total=n, unit="img", desc=f"verify {args.method}", disable=args.no_progress or not info.is_main)
    units = run_units(len(starts), verify_batch, parts=parts_dir, config=config_hash(config), resume=args.resume,
                      done=lambda u: bar.update(min(args.batch_size, n - starts[u])))
    bar.close()
    if not info.is_main:
        return 0
    per_image, statuses = [], []
    for u, rec in enumerate(units):
        status = tensor_json(rec["status_json"])
        for i in range(rec["label"].shape[0]):
            per_image.append({"index": starts[u] + i, "label": int(rec["label"][i]),
                              "prediction": int(rec["prediction"][i]),
                              "correct": bool(rec["prediction"][i] == rec["label"][i]),
                              "verified": bool(rec["verified"][i]), "status": status[i]})
        statuses += status
    seconds = time.perf_counter() - t0
    clean = sum(r["correct"] for r in per_image)
    ver = sum(r["verified"] for r in per_image)
    (c_lo, v_lo), (c_hi, v_hi) = clopper_pearson([clean, ver], n, 0.05)
    print(f"{name} ({args.split}): {n} images, {args.norm} eps={args.eps}, method={args.method}, "
          f"{seconds / n:.3f} s per image")
    print(f"clean accuracy     {clean / n:.4f}  95% CI [{c_lo:.4f}, {c_hi:.4f}]")
    print(f"verified accuracy  {ver / n:.4f}  95% CI [{v_lo:.4f}, {v_hi:.4f}]")
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    if args.method == "milp":
        print("outcomes: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    payload = {
        "format": "robustlab-verify", "format_version": 1,
        "model": str(args.model), "dataset": name, "split": args.split, "norm": args.norm, "eps": args.eps,
        "method": args.method, "time_limit": args.time_limit if args.method == "milp" else None,
        "device": str(device), "seconds": seconds, "seconds_per_image": seconds / n, "n": n,
        "clean_accuracy": clean / n, "clean_accuracy_ci95": [float(c_lo), float(c_hi)],
        "verified_accuracy": ver / n, "verified_accuracy_ci95": [float(v_lo), float(v_hi)],
        "outcomes": counts, "per_image": per_image,
    }
    atomic_write_text(out, json.dumps(payload) + "\n")
    shutil.rmtree(parts_dir, ignore_errors=True)  # the report holds everything the unit files did
    print(f"wrote {out}" + (f" ({info.world_size} processes)" if info.distributed else ""))
    return 0
