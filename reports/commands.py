"""The reports floor's subcommands of `sae-hedging`: PDF reports from run folders, and `run`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import simple_parsing

from theory.config import add_config_arguments


@dataclass(frozen=True)
class ReportConfig:
    """`report`: a PDF giving every claim of the two papers a verdict (held, failed,
    inconclusive, not run) with its numbers, formula and figure, rebuilt from run folders
    written by the toolkit's jobs; nothing is retrained."""

    runs: tuple[str, ...] = simple_parsing.field(positional=True, nargs="+", metavar="RUN")
    """Run folders."""
    title: str | None = None
    """The report's title."""

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("a report needs at least one run folder")


def register(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report",
        help="build a PDF report from run folders (nothing is retrained)",
        description=ReportConfig.__doc__,
    )
    add_config_arguments(report, ReportConfig)
    report.add_argument("--out", type=Path, required=True, help="the PDF to write")
    report.set_defaults(handler=report_command)

    run = subparsers.add_parser(
        "run",
        help="the whole chain on the embedded defaults: theory, toy models, the LLM, a report",
        description="Theory, toy experiments, activations of a language model, SAEs trained on "
        "them and the hedging protocol, then one PDF report. Finished stages are skipped, so an "
        "interrupted run resumes.",
    )
    add_config_arguments(run, "reports.pipeline:PipelineConfig")
    run.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder of the runs")
    run.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    from reports.pipeline import plan_pipeline, run_pipeline

    if not args.config.dry_run:
        print(run_pipeline(args.config, args.out))
        return 0
    from reports.pipeline import ASSUMED_GPU_FLOPS

    gpus = args.config.gpus
    total, gpu_total = 0.0, 0.0
    for plan in plan_pipeline(args.config, args.out):
        disk = "" if plan.disk_bytes is None else f", cache {plan.disk_bytes / 2**30:.2f} GiB"
        time = (
            "CPU time not measured"
            if plan.cpu_seconds is None
            else (f"~{plan.cpu_seconds / 60:.1f} min on this CPU")
        )
        if plan.flops is not None:
            gpu_seconds = plan.flops / (ASSUMED_GPU_FLOPS * gpus)
            gpu_total += gpu_seconds
            time += f", {_duration(gpu_seconds)} on {gpus} GPU(s)"
        total += plan.cpu_seconds or 0.0
        print(f"{plan.name}: {plan.work}{disk}; {time}")
    print(f"expected CPU time of the stages with a measured rate: ~{total / 60:.0f} min")
    print(
        f"expected GPU time of the language-model stages on {gpus} GPU(s): "
        f"{_duration(gpu_total)} of compute (estimated from their floating-point work at an "
        f"assumed {ASSUMED_GPU_FLOPS:.0e} FLOP/s per GPU, no GPU rate measured yet; every "
        "pass over the cache also reads it from disk)"
    )
    return 0


def _duration(seconds: float) -> str:
    """A rough duration: 'under 1 s', '~42 s', '~3.1 min' or '~5.2 h'."""
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"~{seconds:.0f} s"
    return f"~{seconds / 60:.1f} min" if seconds < 5400 else f"~{seconds / 3600:.2g} h"


def report_command(args: argparse.Namespace) -> int:
    from reports.pdf import build_report

    config = args.config
    print(build_report([Path(r) for r in config.runs], args.out, title=config.title))
    return 0
