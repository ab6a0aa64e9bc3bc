"""`sae-hedging llm ...`: extract activations, train and evaluate SAEs on them, measure hedging.

Each command parses its typed config (flags generated from the config's fields), calls the
library job (llm.jobs, llm.hedging) and prints a summary. Defaults finish in minutes on a laptop
CPU; the flags scale them up on a GPU (device auto picks CUDA when present).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from theory.config import add_config_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    llm = subparsers.add_parser(
        "llm",
        help="real language models: activations, SAE training, evaluation, hedging",
        description="Extract activations from a language model, train and evaluate SAEs on "
        "them, and measure hedging on real SAEs.",
    )
    commands = llm.add_subparsers(dest="llm_command", required=True, metavar="LLM_COMMAND")
    for name, config, help_, handler in (  # configs "module:Class", imported when run
        (
            "extract",
            "llm.cache:ExtractConfig",
            "cache one hook point's activations",
            extract_command,
        ),
        ("train", "llm.jobs:SAETrainConfig", "train one SAE on cached activations", train_command),
        (
            "eval",
            "llm.jobs:EvalConfig",
            "evaluate an SAE: held-out reconstruction, CE loss recovered, KL",
            eval_command,
        ),
        (
            "hedging",
            "llm.hedging:LLMHedgingConfig",
            "hedging degree vs width (BatchTopK, L1) and vs matryoshka mu",
            hedging_command,
        ),
        (
            "absorption",
            "llm.absorption.job:AbsorptionConfig",
            "first-letter absorption of SAEs at one hook point",
            absorption_command,
        ),
        (
            "hedging-scan",
            "llm.hedging_scan:HedgingScanConfig",
            "hedging degree vs N (latents added) and vs layer",
            hedging_scan_command,
        ),
        (
            "absorption-sweep",
            "llm.absorption.sweep:AbsorptionSweepConfig",
            "TopK SAEs of every width x k on a cache, then their first-letter absorption",
            absorption_sweep_command,
        ),
    ):
        parser = commands.add_parser(name, help=help_, description=help_)
        add_config_arguments(parser, config)
        parser.add_argument(
            "--out", type=Path, default=Path(f"runs/llm-{name}"), help="the run folder"
        )
        parser.set_defaults(handler=handler)
    commands.choices["train"].add_argument(
        "--restart",
        action="store_true",
        help="discard the run's checkpoint (e.g. a damaged one) and train from step 0",
    )


def _metrics(run: object) -> dict:
    return json.loads((run.folder / "metrics.json").read_text())


def extract_command(args: argparse.Namespace) -> int:
    from llm.jobs import run_extract

    config = args.config
    run = run_extract(config, args.out)
    print(
        f"cached {_metrics(run)['n_tokens']} activations of {config.model} layer "
        f"{config.layer} {config.hook} in {run.artefacts['cache']}"
    )
    return 0


def train_command(args: argparse.Namespace) -> int:
    from llm.jobs import run_train

    config = args.config
    run = run_train(config, args.out, restart=args.restart)
    quality = _metrics(run)
    print(
        f"{config.architecture} SAE width {config.width}: held-out explained variance "
        f"{quality['explained_variance']:.4f}, L0 {quality['l0']:.1f}, dead "
        f"{quality['dead_fraction']:.3f}; saved to {run.artefacts['sae']}"
    )
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from llm.jobs import run_eval

    metrics = _metrics(run_eval(args.config, args.out))
    print(
        f"explained variance {metrics['explained_variance']:.4f}, L0 {metrics['l0']:.1f}, "
        f"CE loss recovered {metrics['ce_loss_recovered']:.4f}, KL {metrics['kl']:.4f}"
    )
    return 0


def hedging_command(args: argparse.Namespace) -> int:
    """Under torchrun every stack trains data-parallel; rank 0 writes the run and prints."""
    from llm.hedging import run_llm_hedging
    from toymodels import distributed

    with distributed.job(args.config.train.device) as me:
        run = run_llm_hedging(args.config, args.out)
    if not me.is_main:
        return 0
    print(f"hedging tables in {run.folder / 'tables'}; metrics in {run.folder / 'metrics.json'}")
    return 0


def absorption_command(args: argparse.Namespace) -> int:
    from llm.absorption.job import run_absorption

    run = run_absorption(args.config, args.out)
    metrics = _metrics(run)
    print(f"absorption tables in {run.folder / 'tables'}; metrics in {run.folder / 'metrics.json'}")
    for name, failure in (metrics.get("failures") or {}).items():
        print(f"  {name} failed: {failure['error']}")
    return 0


def hedging_scan_command(args: argparse.Namespace) -> int:
    from llm.hedging_scan import run_hedging_scan

    run = run_hedging_scan(args.config, args.out)
    print(f"hedging vs N and layer in {run.folder / 'tables' / 'hedging_by_n_and_layer.csv'}")
    return 0


def absorption_sweep_command(args: argparse.Namespace) -> int:
    import pandas as pd

    from llm.absorption.sweep import run_absorption_sweep

    run = run_absorption_sweep(args.config, args.out)
    table = pd.read_csv(run.folder / "tables" / "sweep.csv")
    columns = ["width", "k", "status", "mean_absorption_fraction", "full_absorption_rate",
               "main_precision", "main_recall", "explained_variance", "l0"]  # fmt: skip
    print(table[columns].to_string(index=False, float_format="{:.3f}".format))
    print(f"sweep tables in {run.folder / 'tables'}; metrics in {run.folder / 'metrics.json'}")
    for name, failure in (_metrics(run).get("failures") or {}).items():
        print(f"  {name} failed ({failure['stage']}): {failure['error']}")
    return 0
