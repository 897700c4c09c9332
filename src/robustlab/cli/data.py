"""``robustlab data fetch NAME`` / ``robustlab data info NAME``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="fetch datasets into the cache, show what they hold")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    f = sub.add_parser("fetch", help="make a dataset available offline and say where it came from")
    f.add_argument("name", help="digits, mnist, fashion-mnist or cifar10")
    f.add_argument("--root", default=None, help="folder to look in first (default $ROBUSTLAB_DATA)")
    f.add_argument("--no-download", action="store_true", help="never download; use local sources only")
    f.set_defaults(func=_fetch)
    i = sub.add_parser("info", help="size, shape, classes and source of a dataset")
    i.add_argument("name")
    i.add_argument("--root", default=None)
    i.set_defaults(func=_info)


def _fetch(args: argparse.Namespace) -> int:
    from robustlab import data

    info = data.fetch(args.name, args.root, download=not args.no_download)
    print(f"{info.name}: {info.path}")
    print(f"  source: {info.source}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from robustlab import data

    for split in data.SPLITS:
        d = data.load(args.name, split, args.root)
        counts = d.labels.bincount(minlength=d.num_classes).tolist()
        print(f"{d.name} {split}: {len(d)} images of shape {d.shape}, {d.num_classes} classes, per class {counts}")
    print(f"  classes: {', '.join(d.classes)}")
    print(f"  mean {d.mean}, std {d.std}")
    print(f"  source: {d.source}")
    return 0
