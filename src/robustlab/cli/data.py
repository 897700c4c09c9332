"""``robustlab data fetch NAME`` / ``robustlab data info NAME`` / ``robustlab data list``."""

from __future__ import annotations

import argparse

_NAMES = ("digits, mnist, fashion-mnist, cifar10, or a 20-image sample: cifar10-sample, cifar100-sample, imagenet-sample "
          "(224x224), imagenet-sample-512 (info: also a .npz file, an image folder or CIFAR binary files)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="fetch datasets into the cache, show what they hold",
                              description="Fetch datasets into the user cache and show what they hold.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    f = sub.add_parser("fetch", help="put a dataset into the user cache and say where it came from")
    f.add_argument("name", help=_NAMES)
    f.add_argument("--root", default=None, help="folder to look in first (default $ROBUSTLAB_DATA)")
    f.add_argument("--no-download", action="store_true", help="never download; use local sources only")
    f.add_argument("--no-progress", action="store_true", help="no download progress bar")
    f.set_defaults(func=_fetch)

    i = sub.add_parser("info", help="size, shape, classes and source of a dataset")
    i.add_argument("name", help=_NAMES)
    i.add_argument("--root", default=None, help="folder to look in first (default $ROBUSTLAB_DATA)")
    i.add_argument("--no-download", action="store_true", help="never download; use local sources only")
    i.set_defaults(func=_info)

    ls = sub.add_parser("list", help="the datasets robustlab knows and where each would be read from")
    ls.add_argument("--root", default=None, help="folder to look in first (default $ROBUSTLAB_DATA)")
    ls.set_defaults(func=_list)


def _fetch(args: argparse.Namespace) -> int:
    from robustlab import data

    info = data.fetch(args.name, args.root, download=not args.no_download, progress=not args.no_progress)
    print(f"{info.name}: {info.path}")
    print(f"  source: {info.source}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from robustlab import data

    d = None
    for split in data.SPLITS:
        d = data.load(args.name, split, args.root, download=not args.no_download)
        counts = d.labels.bincount(minlength=d.num_classes).tolist()
        if d.num_classes > 20:  # many classes: only those present, label: count
            counts = {k: c for k, c in enumerate(counts) if c}
        print(f"{d.name} {d.split}: {len(d)} images of shape {d.shape} (C, H, W), {d.num_classes} classes, "
              f"per class {counts}")
        if d.split != split:  # a path without train/test structure is one set
            break
    assert d is not None
    shown = d.classes if d.num_classes <= 20 else d.classes[:10]
    more = "" if d.num_classes <= 20 else f" ... ({d.num_classes} in all)"
    print(f"  classes: {'; '.join(shown) if d.num_classes > 20 else ', '.join(shown)}{more}")
    print(f"  mean {d.mean}, std {d.std}")
    print(f"  source: {d.source}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from robustlab import data

    for name, where in data.available(args.root).items():
        print(f"{name:<14} {where or 'not on this machine (robustlab data fetch ' + name + ' downloads it)'}")
    return 0
