"""A claim's figure: theory as lines, measurements as points with their interval, drawn from the
tidy figure data of the claim's assessment (reports.claims.Assessment.figure).

Every series keeps one colour across the whole report (a scenario, an architecture, a measure),
and the legend sits outside the axes, so it never hides data.
"""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from reports.claims import Assessment, Claim

FIGURE_SIZE = (6.6, 3.2)  # inches: the text width of an A4 page with 2 cm margins
SERIES_COLOURS = {
    # the two-feature scenarios, the same in every figure
    "independent": "#7f7f7f",
    "hierarchical": "#1f77b4",
    "correlated": "#2ca02c",
    "anticorrelated": "#d62728",
    # measures and architectures
    "hedging": "#ff7f0e",
    "absorption": "#9467bd",
    "toy BatchTopK": "#17becf",
    "batchtopk": "#17becf",
    "relu-l1": "#8c564b",
    "matryoshka": "#e377c2",
    # references
    "theory: measured = predicted": "#4d4d4d",
}
OTHER_COLOURS = ("#bcbd22", "#393b79", "#637939", "#843c39", "#7b4173", "#3182bd")
SUFFIXES = (" trend", " (theory)")


def series_colour(series: str, others: dict[str, str]) -> str:
    """The series' fixed colour; series outside the registry get the next free colour, shared
    by every series of the same key in one figure (`others` remembers them)."""
    key = series
    for suffix in SUFFIXES:
        key = key.removesuffix(suffix)
    if key in SERIES_COLOURS:
        return SERIES_COLOURS[key]
    if key not in others:
        others[key] = OTHER_COLOURS[len(others) % len(OTHER_COLOURS)]
    return others[key]


def draw_claim_figure(claim: Claim, assessment: Assessment) -> Figure | None:
    """The claim's figure, or None when its assessment has no figure data."""
    data = assessment.figure
    if data.empty:
        return None
    x_label, y_label, log_x = claim.figure_axes
    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    ax = figure.add_subplot()
    others: dict[str, str] = {}
    handles: dict[str, Line2D] = {}
    for series, part in data.groupby("series", sort=False):
        colour = series_colour(str(series), others)
        theory = part[part.role == "theory"]
        measured = part[(part.role == "measured") & part.y.notna()]
        if len(theory):
            ax.plot(theory.x, theory.y, color=colour, linewidth=1.6, zorder=2)
        if len(measured):
            low = (measured.y - measured.low).clip(lower=0).fillna(0)
            high = (measured.high - measured.y).clip(lower=0).fillna(0)
            ax.errorbar(
                measured.x,
                measured.y,
                yerr=np.vstack([low, high]) if (low.any() or high.any()) else None,
                fmt="o",
                color=colour,
                markersize=5,
                capsize=3,
                markeredgecolor="white",
                markeredgewidth=0.6,
                zorder=3,
            )
        label = str(series)
        for suffix in SUFFIXES:
            label = label.removesuffix(suffix)
        handles.setdefault(label, Line2D([], [], color=colour, linewidth=6, label=label))
    styles = [
        Line2D([], [], color="0.2", linewidth=1.6, label="theory (line)"),
        Line2D([], [], color="0.2", marker="o", linestyle="none", label="measured (points)"),
    ]
    if data.role.eq("theory").any() and "trend" in " ".join(map(str, data.series.unique())):
        styles[0] = Line2D([], [], color="0.2", linewidth=1.6, label="fitted trend (line)")
    figure.legend(
        handles=[*handles.values(), *styles], loc="outside right upper", fontsize=7, frameon=False
    )
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(True, color="0.9", linewidth=0.7)
    ax.set_axisbelow(True)
    return figure


def figure_svg(figure: Figure) -> bytes:
    """The figure as SVG, the same bytes for the same figure (no date, fixed ids)."""
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "sae-hedging-report", "svg.fonttype": "path"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def figure_points(figure: Figure) -> pd.DataFrame:
    """The measured points a figure draws (x, y), for checks against the run tables."""
    rows = []
    for line in figure.axes[0].get_lines():
        if line.get_linestyle() == "None" and line.get_marker() == "o":
            rows += [{"x": float(x), "y": float(y)} for x, y in zip(*line.get_data(), strict=True)]
    return pd.DataFrame(rows, columns=["x", "y"])
