"""Typed configs: the one way every job, trainer and SAE states its settings.

A config is a frozen dataclass with a docstring under each field. The same object is
- the library call's argument (`run_<job>(config, out)`),
- the run's config.json (`config_to_json`) and back (`config_from_json`),
- the command line: `add_config_arguments` turns the fields into flags whose help is the field's
  docstring (simple_parsing reads those docstrings), so no flag is declared twice.

Configs check their own fields in `__post_init__` with the `require_*` helpers below, so a bad
value is refused, with one line naming it and what is allowed, before any work starts. This
module is pure Python: every floor can import it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

Config = TypeVar("Config")


def config_to_json(config: Any) -> dict[str, Any]:
    """The config as plain JSON-ready data (nested configs become dicts, tuples lists)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a config dataclass instance, got {config!r}")
    return dataclasses.asdict(config)


def config_from_json(cls: type[Config], data: Mapping[str, Any]) -> Config:
    """Rebuild a config from config_to_json's output: nested configs from objects, tuples from
    lists; unknown keys are refused, missing ones take the defaults."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a {cls.__name__} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; allowed: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    return cls(**{name: _decode(hints[name], value) for name, value in data.items()})


def _decode(hint: Any, value: Any) -> Any:
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return config_from_json(hint, value)
    if isinstance(value, list):  # config sequences are tuples (hashable, frozen)
        return tuple(value)
    return value


def add_config_arguments(parser: Any, config: type | str) -> None:
    """One flag per field of a config class (nested configs flattened) on a simple_parsing
    parser; the parsed namespace then holds the config instance at `config`. `config` may be
    "module:Class": it is imported when the command is parsed (parsers that can defer), so a
    command tree names every command without importing every job."""
    if isinstance(config, str):
        parser.add_config_later(lambda: _import(config))
    else:
        parser.add_arguments(config, dest="config")


def _import(name: str) -> type:
    import importlib

    module, attribute = name.split(":")
    return getattr(importlib.import_module(module), attribute)


# --- field checks shared by every config --------------------------------------------------------
def require_positive_int(name: str, value: Any) -> None:
    """An integer >= 1 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def require_nonnegative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def require_positive_ints(name: str, values: Iterable[Any], distinct: bool = False) -> None:
    """A non-empty sequence of integers >= 1 (distinct ones if asked)."""
    values = list(values)
    if not values:
        raise ValueError(f"{name} needs at least one value")
    for value in values:
        require_positive_int(f"each of {name}", value)
    if distinct and len(set(values)) != len(values):
        raise ValueError(f"{name} must be distinct, got {values}")


def require_number(
    name: str, value: Any, low: float = -math.inf, high: float = math.inf, *, open_low: bool = False
) -> None:
    """A finite real number in [low, high] ((low, high] with open_low)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or value > high or (open_low and value == low):
        left = "(" if open_low else "["
        raise ValueError(f"{name} must be in {left}{low:g}, {high:g}], got {value!r}")


def require_numbers(
    name: str,
    values: Iterable[Any],
    low: float = -math.inf,
    high: float = math.inf,
    *,
    allow_empty: bool = False,
) -> None:
    values = list(values)
    if not values and not allow_empty:
        raise ValueError(f"{name} needs at least one value")
    for value in values:
        require_number(f"each of {name}", value, low, high)


def require_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}")
