"""`sae-hedging derive`: the optimum of a small SAE on a feature model (exact, or numeric)."""

from __future__ import annotations

import argparse
import json

from theory.config import add_config_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "derive",
        help="exact optimal SAE on a feature model (theory; --method numeric: no guarantee)",
        description="Optimum of a small SAE on a feature model, in the feature basis: exact by "
        "region enumeration, or numeric (the best of several local searches, no guarantee).",
    )
    add_config_arguments(parser, "theory.derive:DeriveConfig")
    parser.add_argument("--json", action="store_true", help="print JSON (default: a summary)")
    parser.set_defaults(handler=derive_command)


def derive_command(args: argparse.Namespace) -> int:
    from theory.derive import run_derive

    record = run_derive(args.config)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"expected loss {record['expected_loss']:.6g} ({record['method']})")
    for i, (enc, dec, fires) in enumerate(
        zip(record["encoder"], record["decoder"], record["fires_on"], strict=True)
    ):
        print(
            f"latent {i}: decoder {format_vector(dec)} encoder {format_vector(enc)} "
            f"bias {record['encoder_bias'][i]:.4g} fires on {','.join(fires) or 'nothing'}"
        )
    print(f"decoder bias {format_vector(record['decoder_bias'])}")
    if "balance" in record:
        print(f"balancing mu {record['balance']['mu']:.4f}: {record['balance']['balanced']}")
    if "threshold" in record:  # jumprelu, batchtopk (its inference threshold)
        print(f"thresholds {format_vector(record['threshold'])}")
    for name, latex in record.get("symbolic", {}).items():
        print(f"{name}: {latex}")
    return 0


def format_vector(values: list[float]) -> str:
    """A short fixed-precision rendering of a parameter vector for terminal summaries."""
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"
