"""The reports floor's subcommands of `sae-hedging`: building PDF reports from run folders."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report",
        help="build a PDF report from run folders (nothing is retrained)",
        description="Build a PDF report (config, metrics, tables, figures, formulas, provenance) "
        "from one or more run folders written by the toolkit's experiments.",
    )
    report.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="a run folder")
    report.add_argument("--out", type=Path, required=True, help="the PDF to write")
    report.add_argument("--title", default=None, help="the report's title")
    report.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from reports.pdf import build_report

    print(build_report(args.runs, args.out, title=args.title))
    return 0
