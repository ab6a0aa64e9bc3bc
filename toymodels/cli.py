"""`sae-hedging toy ...`: train toy SAEs against theory and run the toy experiments."""

from __future__ import annotations

import argparse
import json
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    toy = subparsers.add_parser(
        "toy",
        help="toy-model training and experiments (theory vs trained SAEs)",
        description="Train toy SAEs on theory's feature models and run the toy experiments.",
    )
    commands = toy.add_subparsers(dest="toy_command", required=True, metavar="TOY_COMMAND")
    _register_train(commands)
    for name, handler, help_, defaults in (
        (
            "scenarios",
            run_scenarios_command,
            "two-feature scenarios x L1 x width 1, 2 against theory's optimum",
            {"samples": 300_000, "seeds": None},
        ),
        (
            "hedging-width",
            run_hedging_width_command,
            "hedging degree vs width on the paper's 50-feature world (BatchTopK)",
            {"samples": 150_000, "seeds": 2},
        ),
        (
            "absorption",
            run_absorption_command,
            "absorption in a wide SAE on the 4-feature hierarchy vs theory's offset",
            {"samples": 1_000_000, "seeds": 2},
        ),
        (
            "matryoshka",
            run_matryoshka_command,
            "balance matryoshka: hedging and absorption vs mu",
            {"samples": 400_000, "seeds": 3},
        ),
    ):
        parser = commands.add_parser(name, help=help_, description=help_)
        parser.add_argument("--out", help=f"run folder (default runs/toy-{name})")
        parser.add_argument(
            "--samples",
            type=int,
            default=defaults["samples"],
            help="training samples per SAE (per stage for hedging-width)",
        )
        if defaults["seeds"] is None:
            parser.add_argument(
                "--restarts",
                type=int,
                default=16,
                help="initialisations per configuration (best held-out loss)",
            )
        else:
            parser.add_argument(
                "--seeds",
                type=int,
                default=defaults["seeds"],
                help="independent initialisations per configuration",
            )
        parser.add_argument("--seed", type=int, default=0)
        if name == "hedging-width":
            parser.add_argument(
                "--new-latents",
                type=int,
                default=5,
                help="N, latents added by the hedging protocol",
            )
        parser.set_defaults(handler=handler, out_default=f"runs/toy-{name}")


def _register_train(commands: argparse._SubParsersAction) -> None:
    from theory.cli import add_model_arguments, add_spec_arguments

    parser = commands.add_parser(
        "train",
        help="train one ReLU-L1 SAE on a feature model and compare with `derive`",
        description="Train a ReLU-L1 SAE on a feature model embedded orthonormally in d_in "
        "dimensions; print its parameters in the feature basis next to theory's optimum.",
    )
    add_model_arguments(parser)
    add_spec_arguments(parser)
    parser.add_argument("--d-in", type=int, default=50)
    parser.add_argument("--samples", type=int, default=2_000_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument(
        "--restarts",
        type=int,
        default=1,
        help="initialisations trained side by side; the best held-out loss wins",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON (default: a summary)")
    parser.set_defaults(handler=run_train)


def _small_torch() -> None:
    """Toy tensors are tiny: one thread avoids synchronisation stalls on a shared CPU."""
    import torch

    torch.set_num_threads(1)


def run_train(args: argparse.Namespace) -> int:
    from theory.cli import model_from_args, spec_from_args
    from theory.derive import optimum_record

    model, spec = model_from_args(args), spec_from_args(args)
    for name in ("samples", "batch_size", "d_in", "restarts"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.lr <= 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    _small_torch()
    from theory.optimum import global_optimum
    from toymodels.experiments.scenarios import Schedule, compare, train_relu_l1

    start = time.perf_counter()
    schedule = Schedule(
        n_samples=args.samples,
        batch_size=args.batch_size,
        lr=args.lr,
        restarts=args.restarts,
        d_in=args.d_in,
        seed=args.seed,
    )
    (trained,) = train_relu_l1(
        [model],
        [(0, float(spec.l1), spec.width)],
        schedule,
        tied=spec.tied,
        decoder_bias=spec.decoder_bias,
    )
    optimum = global_optimum(model, spec, seed=args.seed)
    theory = optimum_record(model, spec, optimum)
    result = compare(model, float(spec.l1), trained, optimum)
    record = {
        **result["params"].to_json(),
        "expected_loss": result["expected_loss"],
        "theory": theory,
        "difference": {
            "decoder_cosine_distance": result["decoder_cosine_distance"],
            "decoder_child_components": result["decoder_child_components"],
            "loss_gap": result["loss_gap"],
        },
        "training": {
            **vars(schedule),
            "architecture": "relu-l1",
            "tied": spec.tied,
            "decoder_bias": spec.decoder_bias,
        },
        "seconds": time.perf_counter() - start,
    }
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(
        f"expected loss {record['expected_loss']:.6g} (theory {theory['expected_loss']:.6g}, "
        f"gap {result['loss_gap']:.3g})"
    )
    for i, (dec, opt) in enumerate(zip(record["decoder"], theory["decoder"], strict=True)):
        print(
            f"latent {i}: decoder {_fmt(dec)} theory {_fmt(opt)} cosine distance "
            f"{result['decoder_cosine_distance'][i]:.4f}"
        )
    return 0


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


def _check_sizes(args: argparse.Namespace) -> str:
    for name in ("samples", "seeds", "restarts", "new_latents"):
        if getattr(args, name, 1) < 1:
            flag = name.replace("_", "-")
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, name)}")
    _small_torch()
    return args.out or args.out_default


def _report(run) -> int:  # noqa: ANN001 (toymodels.runs.Run)
    metrics = json.loads((run.folder / "metrics.json").read_text())
    summary = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    print(f"wrote {run.folder}: " + ", ".join(f"{k} = {v:.4g}" for k, v in summary.items()))
    return 0


def run_scenarios_command(args: argparse.Namespace) -> int:
    out = _check_sizes(args)
    from toymodels.experiments.scenarios import Schedule, run_scenarios

    return _report(
        run_scenarios(out, Schedule(n_samples=args.samples, restarts=args.restarts, seed=args.seed))
    )


def run_hedging_width_command(args: argparse.Namespace) -> int:
    out = _check_sizes(args)
    from toymodels.experiments.hedging_width import run_hedging_width

    return _report(
        run_hedging_width(
            out, n_samples=args.samples, n_seeds=args.seeds, n_new=args.new_latents, seed=args.seed
        )
    )


def run_absorption_command(args: argparse.Namespace) -> int:
    out = _check_sizes(args)
    from toymodels.experiments.absorption import run_absorption

    return _report(run_absorption(out, n_samples=args.samples, n_seeds=args.seeds, seed=args.seed))


def run_matryoshka_command(args: argparse.Namespace) -> int:
    out = _check_sizes(args)
    from toymodels.experiments.matryoshka import run_matryoshka

    return _report(run_matryoshka(out, n_samples=args.samples, n_seeds=args.seeds, seed=args.seed))
