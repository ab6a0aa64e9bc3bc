"""`sae-hedging toy ...`: train toy SAEs against theory and run the toy experiments.

Each command parses its typed config (flags generated from the config's fields) and calls the
library job; nothing here orchestrates work.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from theory.cli import format_vector
from theory.config import add_config_arguments

# name -> (config "module:Class", help, job "module:function"): imported when the command runs
EXPERIMENTS: dict[str, tuple[str, str, str]] = {
    "scenarios": (
        "toymodels.experiments.scenarios:ScenariosConfig",
        "two-feature scenarios x L1 x width 1, 2 against theory's optimum",
        "toymodels.experiments.scenarios:run_scenarios",
    ),
    "hedging-width": (
        "toymodels.experiments.hedging_width:HedgingWidthConfig",
        "hedging degree vs width on the paper's 50-feature world (BatchTopK)",
        "toymodels.experiments.hedging_width:run_hedging_width",
    ),
    "absorption": (
        "toymodels.experiments.absorption:ToyAbsorptionConfig",
        "absorption in a wide SAE on the 4-feature hierarchy vs theory's offset",
        "toymodels.experiments.absorption:run_absorption",
    ),
    "matryoshka": (
        "toymodels.experiments.matryoshka:ToyMatryoshkaConfig",
        "balance matryoshka: hedging and absorption vs mu",
        "toymodels.experiments.matryoshka:run_matryoshka",
    ),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    toy = subparsers.add_parser(
        "toy",
        help="toy-model training and experiments (theory vs trained SAEs)",
        description="Train toy SAEs on theory's feature models and run the toy experiments.",
    )
    commands = toy.add_subparsers(dest="toy_command", required=True, metavar="TOY_COMMAND")
    train = commands.add_parser(
        "train",
        help="train one SAE on a feature model and compare with `derive`",
        description="Train an SAE (--architecture relu-l1 | topk | batchtopk | jumprelu) on a "
        "feature model embedded orthonormally in d_in "
        "dimensions; print its parameters in the feature basis next to theory's optimum.",
    )
    add_config_arguments(train, "toymodels.experiments.scenarios:ToyTrainConfig")
    train.add_argument("--json", action="store_true", help="print JSON (default: a summary)")
    train.set_defaults(handler=train_command)
    for name, (config, help_, job) in EXPERIMENTS.items():
        parser = commands.add_parser(name, help=help_, description=help_)
        add_config_arguments(parser, config)
        parser.add_argument(
            "--out", type=Path, default=Path(f"runs/toy-{name}"), help="the run folder"
        )
        parser.set_defaults(handler=_experiment_command(job))


def train_command(args: argparse.Namespace) -> int:
    from toymodels.experiments.scenarios import train_against_theory

    record = train_against_theory(args.config)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    theory, difference = record["theory"], record["difference"]
    print(
        f"expected loss {record['expected_loss']:.6g} (theory {theory['expected_loss']:.6g}, "
        f"gap {difference['loss_gap']:.3g})"
    )
    for i, (dec, opt) in enumerate(zip(record["decoder"], theory["decoder"], strict=True)):
        print(
            f"latent {i}: decoder {format_vector(dec)} theory {format_vector(opt)} cosine "
            f"distance {difference['decoder_cosine_distance'][i]:.4f}"
        )
    return 0


def _experiment_command(job: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        """Run the job; under torchrun every rank trains its share of each batch in one process
        group held for the whole job, and rank 0 alone writes the run and prints it."""
        import importlib

        from toymodels import distributed

        module, function = job.split(":")
        train = args.config.fit.train if hasattr(args.config, "fit") else args.config.train
        with distributed.job(train.device) as me:
            run = getattr(importlib.import_module(module), function)(args.config, args.out)
        if not me.is_main:
            return 0
        metrics = json.loads((run.folder / "metrics.json").read_text())
        summary = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        print(f"wrote {run.folder}: " + ", ".join(f"{k} = {v:.4g}" for k, v in summary.items()))
        return 0

    return handler
