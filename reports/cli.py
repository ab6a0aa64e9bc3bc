"""The `sae-hedging` command line: one subcommand group per floor, assembled here.

Each floor's cli module offers `register(subparsers)`; a command's config class and job are
imported only when that command runs, so `derive` starts without torch. Bad input (ValueError)
becomes exit status 2 with one line naming the problem, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

import simple_parsing

# scipy's bundled OpenBLAS slows small problems 10-50x when it spins threads on a busy machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

FLOORS = ("theory.cli", "toymodels.cli", "llm.cli", "reports.commands")


class OneLineErrorParser(simple_parsing.ArgumentParser):
    """Flags from typed configs (simple_parsing: help = the field's docstring, dashes in names);
    usage errors are one line on stderr and exit status 2 (no usage dump)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("add_option_string_dash_variants", simple_parsing.DashVariant.DASH)
        kwargs.setdefault("add_config_path_arg", False)
        super().__init__(*args, **kwargs)
        self._load_config: Callable[[], type] | None = None

    def add_config_later(self, load: Callable[[], type]) -> None:
        """Add the flags of the config `load()` returns when this (sub)command is parsed, so
        that building the whole command tree imports no job module (torch, transformers)."""
        self._load_config = load

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._load_config is not None:
            load, self._load_config = self._load_config, None
            self.add_arguments(load(), dest="config")
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # usage errors and --help: a status, not an exception
        return int(exit_.code or 0)
    except ValueError as err:  # a config refused one of its fields while being built
        print(f"sae-hedging: error: {err}", file=sys.stderr)
        return 2
    try:
        return int(args.handler(args) or 0)
    except ValueError as err:
        print(f"sae-hedging {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
