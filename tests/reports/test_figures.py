"""The plot registry: which tables get which figure, and that the figures show the data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection, PolyCollection

from reports.figures import PLOT_RULES, PlotRule, plots_for, register_plot


def _lines(figure):
    return figure.axes[0].get_lines()


def test_scatter_puts_every_pair_on_the_page_with_the_identity_line():
    table = pd.DataFrame(
        {"case": ["a", "b", "b"], "predicted": [0.1, 0.4, 0.9], "measured": [0.2, 0.35, 1.0]}
    )
    (figure,) = plots_for("any-kind", "any_table", table)
    axes = figure.axes[0]
    offsets = np.concatenate(
        [c.get_offsets() for c in axes.collections if isinstance(c, PathCollection)]
    )
    assert sorted(map(tuple, offsets)) == sorted(zip(table.predicted, table.measured, strict=True))
    (identity,) = [line for line in _lines(figure) if line.get_label() == "y = x"]
    xs, ys = identity.get_data()
    assert np.array_equal(xs, ys) and xs[0] < 0.1 and xs[-1] > 1.0  # spans every point
    assert axes.get_xlim() == axes.get_ylim()
    assert sorted(t.get_text() for t in axes.get_legend().get_texts()) == [
        "case=a",
        "case=b",
        "y = x",
    ]


def test_width_plot_draws_one_line_per_group_at_the_mean_over_seeds():
    rng = np.random.default_rng(1)
    rows = [
        (arch, width, seed, rng.uniform())
        for arch in ("topk", "relu")
        for width in (16, 8, 32)
        for seed in range(4)
    ]
    table = pd.DataFrame(rows, columns=["architecture", "width", "seed", "hedging_degree"])
    (figure,) = plots_for("toy", "hedging_vs_width", table)
    lines = {line.get_label(): line for line in _lines(figure)}
    assert set(lines) == {"architecture=topk", "architecture=relu"}
    for arch in ("topk", "relu"):
        expected = {
            w: np.mean([h for a, ww, _, h in rows if a == arch and ww == w]) for w in (8, 16, 32)
        }
        xs, ys = lines[f"architecture={arch}"].get_data()
        assert list(xs) == [8, 16, 32]
        assert np.allclose(ys, [expected[w] for w in xs])
    assert sum(isinstance(c, PolyCollection) for c in figure.axes[0].collections) == 2


def test_width_plot_without_groups_or_repeats_is_one_plain_line():
    table = pd.DataFrame({"width": [4, 8], "hedging_degree": [0.5, 0.25], "l0": [3.0, 2.5]})
    (figure,) = plots_for("toy", "t", table)
    (line,) = _lines(figure)
    assert list(line.get_data()[1]) == [0.5, 0.25]
    assert not figure.axes[0].collections


@pytest.mark.parametrize(
    "table",
    [
        pd.DataFrame({"predicted": [0.1], "observed": [0.2]}),  # a column missing
        pd.DataFrame({"predicted": ["low"], "measured": [0.2]}),  # not numeric
        pd.DataFrame({"predicted": [np.nan], "measured": [0.2]}),  # no complete row
        pd.DataFrame({"width": [1, 2], "hedging": [0.1, 0.2]}),
    ],
)
def test_tables_without_the_needed_numbers_get_no_figure(table):
    assert plots_for("toy", "t", table) == []


def test_rules_can_be_keyed_by_table_name_and_run_kind(monkeypatch):
    monkeypatch.setattr("reports.figures.PLOT_RULES", list(PLOT_RULES))
    drawn = []
    register_plot(table="absorption", kind="llm-absorption")(lambda t: drawn.append(len(t)))
    table = pd.DataFrame({"letter": ["a", "b"]})
    plots_for("llm-absorption", "absorption", table)
    plots_for("toy", "absorption", table)
    plots_for("llm-absorption", "other", table)
    assert drawn == [2]
    assert PlotRule(draw=len, kind="toy").applies("toy", "anything", table)


def test_a_rule_that_would_match_everything_is_refused():
    with pytest.raises(ValueError, match="table=, kind= or columns="):
        register_plot()


def test_a_sweep_is_plotted_against_the_column_that_varies():
    """A matryoshka sweep at one width is drawn against mu, not as a one-point width plot."""
    table = pd.DataFrame(
        {"mu": [0.0, 0.25, 1.0], "width": [512] * 3, "hedging_degree": [0.3, 0.2, 0.1]}
    )
    (figure,) = plots_for("llm", "hedging_vs_mu", table)
    (line,) = figure.axes[0].get_lines()
    assert list(line.get_xdata()) == [0.0, 0.25, 1.0]
    assert figure.axes[0].get_xlabel().lower().startswith("mu")
