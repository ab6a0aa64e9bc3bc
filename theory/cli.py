"""`sae-hedging derive`: exact optimum of a small SAE on a two- or three-feature model."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "derive",
        help="exact optimal SAE on a feature model (theory)",
        description="Exact optimum of a small SAE on a feature model, in the feature basis.",
    )
    add_model_arguments(parser)
    add_spec_arguments(parser)
    parser.add_argument("--symbolic", action="store_true", help="include closed forms in LaTeX")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON (default: a summary)")
    parser.set_defaults(handler=run_derive)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--joint or --scenario (with its probability overrides): the feature model."""
    world = parser.add_mutually_exclusive_group(required=True)
    world.add_argument(
        "--joint",
        help="state table, e.g. 00:0.6,10:0.2,01:0.05,11:0.15 "
        "(a pattern's i-th character is feature i's firing bit)",
    )
    world.add_argument(
        "--scenario", help="independent | hierarchical | correlated | anticorrelated"
    )
    parser.add_argument("--p-parent", type=float, default=0.25)
    parser.add_argument("--p-child-given-parent", type=float)
    parser.add_argument("--p-child-given-not-parent", type=float)


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """--width, --l1, --tied, --no-decoder-bias: the SAE variant."""
    parser.add_argument("--width", type=int, default=1)
    parser.add_argument("--l1", type=float, default=0.0)
    parser.add_argument("--tied", action="store_true", help="encoder = decoder transpose")
    parser.add_argument("--no-decoder-bias", action="store_true")


def model_from_args(args: argparse.Namespace):  # noqa: ANN201 (FeatureModel, imported lazily)
    """The feature model named by --joint or --scenario (shared with `toy train`)."""
    from theory.features import from_table, scenario

    if args.joint is not None:
        return from_table(args.joint)
    return scenario(
        args.scenario, args.p_parent, args.p_child_given_parent, args.p_child_given_not_parent
    )


def spec_from_args(args: argparse.Namespace):  # noqa: ANN201
    from theory.sae import SAESpec

    return SAESpec(args.width, args.l1, tied=args.tied, decoder_bias=not args.no_decoder_bias)


def run_derive(args: argparse.Namespace) -> int:
    from theory.derive import derive

    record = derive(model_from_args(args), spec_from_args(args), args.symbolic, args.seed)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"expected loss {record['expected_loss']:.6g}")
    for i, (enc, dec, fires) in enumerate(
        zip(record["encoder"], record["decoder"], record["fires_on"], strict=True)
    ):
        print(
            f"latent {i}: decoder {_fmt(dec)} encoder {_fmt(enc)} "
            f"bias {record['encoder_bias'][i]:.4g} fires on {','.join(fires) or 'nothing'}"
        )
    print(f"decoder bias {_fmt(record['decoder_bias'])}")
    for name, latex in record.get("symbolic", {}).items():
        print(f"{name}: {latex}")
    return 0


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"
