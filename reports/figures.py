"""The plot registry: which figure a report draws for which tidy table, and how.

A plot rule names what it is for (a table name, a run kind, the numeric columns a table must have,
or several of these) and a function that turns the table into a matplotlib Figure. The report asks
`plots_for(kind, table_name, table)` for every table of every run, so a new experiment gets its
figures by registering a rule here, without touching the report builder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.image
import pandas as pd
from matplotlib.figure import Figure

PLOT_SIZE = (11.69, 8.27)  # A4 landscape, inches
PlotFunction = Callable[[pd.DataFrame], Figure]


@dataclass(frozen=True)
class PlotRule:
    """A figure for every table that matches all the given keys."""

    draw: PlotFunction
    table: str | None = None  # the table's name (its CSV stem)
    kind: str | None = None  # the run kind (manifest "kind")
    columns: tuple[str, ...] = ()  # numeric columns the table must have, with one complete row
    varies: str | None = None  # a column that must take at least two values (a line's x axis)

    def applies(self, kind: str, table_name: str, table: pd.DataFrame) -> bool:
        if self.table is not None and self.table != table_name:
            return False
        if self.kind is not None and self.kind != kind:
            return False
        if self.varies is not None and (
            self.varies not in table.columns or table[self.varies].nunique() < 2
        ):
            return False
        if not self.columns:
            return True
        if not all(c in table.columns for c in self.columns):
            return False
        if not all(pd.api.types.is_numeric_dtype(table[c]) for c in self.columns):
            return False
        return bool(table[list(self.columns)].notna().all(axis=1).any())


PLOT_RULES: list[PlotRule] = []


def register_plot(
    *,
    table: str | None = None,
    kind: str | None = None,
    columns: tuple[str, ...] = (),
    varies: str | None = None,
) -> Callable[[PlotFunction], PlotFunction]:
    """Decorator adding a plot rule; at least one key is required so no rule matches everything."""
    if table is None and kind is None and not columns:
        raise ValueError("register_plot needs table=, kind= or columns=; none was given")

    def add(draw: PlotFunction) -> PlotFunction:
        PLOT_RULES.append(
            PlotRule(draw=draw, table=table, kind=kind, columns=tuple(columns), varies=varies)
        )
        return draw

    return add


def plots_for(kind: str, table_name: str, table: pd.DataFrame) -> list[Figure]:
    """Every registered figure for one table of one run, in registration order."""
    return [rule.draw(table) for rule in PLOT_RULES if rule.applies(kind, table_name, table)]


def group_columns(table: pd.DataFrame, exclude: tuple[str, ...]) -> list[str]:
    """Columns that name a group (text, boolean or categorical, or one called 'group').

    Numeric columns never split lines: they are either the plotted values or repeats (such as
    seeds) that are averaged.
    """
    return [
        c
        for c in table.columns
        if c not in exclude
        and (
            c == "group"
            or not pd.api.types.is_numeric_dtype(table[c])
            or pd.api.types.is_bool_dtype(table[c])
        )
    ]


def _groups(table: pd.DataFrame, by: list[str]) -> list[tuple[str | None, pd.DataFrame]]:
    if not by:
        return [(None, table)]
    return [
        (", ".join(f"{c}={v}" for c, v in zip(by, key, strict=True)), part)
        for key, part in table.groupby(by, sort=True, dropna=False)
    ]


def _label(column: str) -> str:
    return column.replace("_", " ")


def _new_plot(title: str) -> tuple[Figure, object]:
    fig = Figure(figsize=PLOT_SIZE)
    ax = fig.add_axes((0.1, 0.15, 0.8, 0.71))
    ax.set_title(title, fontsize=13, pad=12)
    ax.grid(True, color="0.9", linewidth=0.8)
    ax.set_axisbelow(True)
    return fig, ax


@register_plot(columns=("predicted", "measured"))
def predicted_vs_measured(table: pd.DataFrame) -> Figure:
    """Scatter of measured against predicted, one colour per group, with the line y = x."""
    data = table.dropna(subset=["predicted", "measured"])
    fig, ax = _new_plot("measured vs predicted")
    for label, part in _groups(data, group_columns(data, ("predicted", "measured"))):
        ax.scatter(
            part["predicted"],
            part["measured"],
            s=28,
            alpha=0.85,
            label=label,
            edgecolors="white",
            linewidths=0.5,
            zorder=3,
        )
    low = float(min(data["predicted"].min(), data["measured"].min()))
    high = float(max(data["predicted"].max(), data["measured"].max()))
    pad = 0.05 * (high - low) or 0.05 * max(abs(high), 1.0)
    ends = (low - pad, high + pad)
    ax.plot(ends, ends, linestyle="--", color="0.4", linewidth=1, label="y = x", zorder=2)
    ax.set_xlim(ends)
    ax.set_ylim(ends)
    ax.set_aspect("equal")
    ax.set_xlabel("predicted")
    ax.set_ylabel("measured")
    error = (data["measured"] - data["predicted"]).abs()
    ax.text(
        0.02,
        0.97,
        f"n = {len(data)}   max |measured - predicted| = {error.max():.3g}",
        transform=ax.transAxes,
        va="top",
        fontsize=9,
        parse_math=False,
        bbox={"facecolor": "white", "edgecolor": "0.8"},
    )
    ax.legend(loc="lower right", fontsize=8)
    return fig


def line_plot(table: pd.DataFrame, x: str, y: str) -> Figure:
    """y against x, one line per group; repeats at the same x (seeds) give the mean and a
    min-max band."""
    data = table.dropna(subset=[x, y])
    fig, ax = _new_plot(f"{_label(y)} vs {_label(x)}")
    repeated = False
    for label, part in _groups(data, group_columns(data, (x, y))):
        summary = part.groupby(x, sort=True)[y].agg(["mean", "min", "max", "count"])
        (line,) = ax.plot(summary.index, summary["mean"], marker="o", markersize=4, label=label)
        if (summary["count"] > 1).any():
            repeated = True
            ax.fill_between(
                summary.index,
                summary["min"],
                summary["max"],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    if repeated:
        fig.text(
            0.1,
            0.06,
            f"Lines: mean over rows with the same {x} (e.g. seeds); "
            "bands: their minimum to maximum.",
            fontsize=8,
            color="0.35",
            parse_math=False,
        )
    ax.set_xlabel(_label(x))
    ax.set_ylabel(_label(y))
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=8)
    return fig


@register_plot(columns=("width", "hedging_degree"), varies="width")
def hedging_vs_width(table: pd.DataFrame) -> Figure:
    return line_plot(table, "width", "hedging_degree")


@register_plot(columns=("mu", "hedging_degree"), varies="mu")
def hedging_vs_mu(table: pd.DataFrame) -> Figure:
    """Balance matryoshka sweeps: hedging degree against the level weight mu."""
    return line_plot(table, "mu", "hedging_degree")


@register_plot(columns=("mu", "hedging", "absorption"), varies="mu")
def hedging_and_absorption_vs_mu(table: pd.DataFrame) -> Figure:
    """Toy balance matryoshka: the hedging / absorption trade-off over mu."""
    long = table.melt(
        id_vars=["mu"],
        value_vars=["hedging", "absorption"],
        var_name="measure",
        value_name="component",
    )
    return line_plot(long, "mu", "component")


def image_figure(png: Path, title: str) -> Figure:
    """A PNG already saved by an experiment, as a page of its own orientation."""
    try:
        pixels = matplotlib.image.imread(png)
    except (OSError, SyntaxError, ValueError) as err:  # what Pillow raises for a damaged file
        raise ValueError(f"{png} is not a readable PNG image: {err}") from err
    height, width = pixels.shape[:2]
    fig = Figure(figsize=PLOT_SIZE if width >= height else PLOT_SIZE[::-1])
    fig.text(0.5, 0.95, title, ha="center", va="top", fontsize=13, parse_math=False)
    ax = fig.add_axes((0.05, 0.06, 0.9, 0.84))
    ax.imshow(pixels, interpolation="antialiased")
    ax.set_axis_off()
    return fig
