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

    run = subparsers.add_parser(
        "run",
        help="the whole chain on the embedded defaults: theory, toy models, the LLM, a report",
        description="Theory, toy experiments, activations of the embedded LLM, SAEs trained on "
        "them and the hedging protocol, then one PDF report. Finished stages are skipped, so an "
        "interrupted run resumes.",
    )
    run.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder of the runs")
    run.add_argument("--model", default="gemma3-270m", help="offline name, HF id or folder")
    run.add_argument("--layer", type=int, default=6, help="hooked layer (resid_post)")
    run.add_argument("--tokens", type=int, default=60_000, help="activation tokens to cache")
    run.add_argument("--no-llm", action="store_true", help="theory and toy models only")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from reports.pipeline import demo_stages, run_pipeline

    if args.tokens < 1 or args.layer < 0:
        raise ValueError(f"need --tokens >= 1 and --layer >= 0, got {args.tokens}, {args.layer}")
    stages = demo_stages(args.out, args.model, args.layer, args.tokens, not args.no_llm)
    pdf = run_pipeline(args.out, stages, title="Feature hedging and absorption: theory vs SAEs")
    print(pdf)
    return 0


def _report(args: argparse.Namespace) -> int:
    from reports.pdf import build_report

    print(build_report(args.runs, args.out, title=args.title))
    return 0
