"""``robustlab evaluate --model runs/mnist-cnn --attack pgd --eps 0.1,0.2,0.3``."""

from __future__ import annotations

import argparse
from pathlib import Path


def parse_floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="clean and robust accuracy of a model per eps (JSON)")
    p.add_argument("--model", required=True, help="a saved robustlab model (directory or .safetensors)")
    p.add_argument("--attack", default=None, help="comma-separated attack names (default: the suite's)")
    p.add_argument("--suite", default="quick", help="quick, standard or a .toml file")
    p.add_argument("--norm", default="linf", help="linf, l2, l1 or l0")
    p.add_argument("--eps", type=parse_floats, default=None, help="comma-separated radii, e.g. 0.1,0.2,0.3")
    p.add_argument("--dataset", default=None, help="default: the dataset in the model's metadata")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--n", type=int, default=None, help="evaluate the first N images (default all)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default=None, help="dataset folder")
    p.add_argument("--out", default=None, help="output folder (default out/evaluate/<model name>)")
    p.add_argument("--resume", action="store_true", help="reuse finished batches in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustlab import data, evaluate, models

    model = models.load(args.model)
    name = args.dataset or model.metadata.get("dataset")
    if not name:
        raise ValueError(f"{args.model} records no dataset; pass --dataset")
    suite = evaluate.load_suite(args.suite, args.norm, args.eps)
    if args.attack:
        suite = evaluate.Suite(f"custom:{args.attack}", suite.norm, suite.eps, tuple(a.strip() for a in args.attack.split(",")))
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    test = data.load(name, args.split, args.root)
    out = Path(args.out) if args.out else Path("out") / "evaluate" / Path(args.model).name.replace(".safetensors", "")
    ev = evaluate.run(model, test, suite, n=args.n, batch_size=args.batch_size, out=out, resume=args.resume,
                      seed=args.seed, progress=not args.no_progress)
    ev.info["model"] = str(args.model)
    print(ev.table())
    print(f"wrote {ev.save(out)} ({ev.seconds:.1f} s)")
    return 0
