"""``robustlab report report.json [--out DIR]`` re-renders a report (of any verb: evaluate, attack,
certify, verify, detect) without rerunning anything; ``robustlab compare a.json b.json [--out DIR]``
puts the models of several reports side by side (HTML + table), e.g. an evaluation and a certification.

``register`` adds both subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="re-render a report.json as HTML (no rerun)",
                              description="Read a report.json and write index.html and the figures again.")
    p.add_argument("report", help="a report.json (or the folder holding it)")
    p.add_argument("--out", default=None, help="output folder (default: the report's folder)")
    p.set_defaults(func=run_report)

    c = subparsers.add_parser("compare", help="several reports side by side (HTML + terminal table)",
                              description="Combine the models of several report.json files into one comparison page.")
    c.add_argument("reports", nargs="+", help="two or more report.json files (or their folders)")
    c.add_argument("--out", default="out/compare", help="output folder (default out/compare)")
    c.add_argument("--title", default=None)
    c.set_defaults(func=run_compare)


def run_report(args: argparse.Namespace) -> int:
    from robustlab.cli._common import check_out_dir
    from robustlab.report import load
    from robustlab.report.assemble import moved

    src = Path(args.report)
    folder = src if src.is_dir() else src.parent
    out = check_out_dir(args.out) if args.out else folder
    rep = moved(load(args.report), folder, out)
    rep.save(out)
    print(rep.table())
    print(f"wrote {out / 'index.html'}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from robustlab.cli._common import check_out_dir
    from robustlab.report import combine, compare_table, load
    from robustlab.report.assemble import moved

    if len(args.reports) < 2:
        raise ValueError(f"compare needs at least two reports, got {len(args.reports)}")
    out = check_out_dir(args.out)  # before reading and combining the reports
    rep = combine([moved(load(p), p if Path(p).is_dir() else Path(p).parent, out) for p in args.reports], args.title)
    rep.save(out)
    print(compare_table(rep))
    print(f"wrote {out / 'index.html'}")
    return 0
