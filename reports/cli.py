"""The `sae-hedging` command line: one subcommand group per floor, assembled here.

Each floor's cli module offers `register(subparsers)`; handlers import their heavy libraries
lazily so `derive` starts without torch. Bad input (ValueError) becomes exit status 2 with one
line naming the problem, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

FLOORS = ("theory.cli", "toymodels.cli", "llm.cli", "reports.commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-hedging",
        description="Predict, measure and report feature hedging and absorption in SAEs.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in FLOORS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue  # a floor not built yet
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ValueError as err:
        print(f"sae-hedging {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
