"""Claim figures: every point drawn comes from a run table; colours and legend placement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from reports.claims import CLAIMS, assess, claim_named, load_run_record, runs_by_kind
from reports.figures import SERIES_COLOURS, draw_claim_figure, figure_points, figure_svg
from tests.reports.claim_runs import write_all


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    folders = write_all(tmp_path_factory.mktemp("runs"))
    return runs_by_kind([load_run_record(f) for f in folders])


def _figure(runs: dict, name: str):
    claim = claim_named(name)
    return draw_claim_figure(claim, assess(claim, runs))


def _table(runs: dict, kind: str, name: str) -> pd.DataFrame:
    return pd.read_csv(Path(runs[kind].folder) / "tables" / f"{name}.csv")


def _same_points(drawn: pd.DataFrame, expected: pd.DataFrame) -> None:
    key = ["x", "y"]
    got = drawn.sort_values(key).to_numpy()
    want = expected[key].astype(float).sort_values(key).to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_sign_figure_draws_every_trained_child_component(runs):
    components = _table(runs, "toy-scenarios", "components")
    trained = components[(components.width == 1) & (components.quantity == "decoder_child")]
    _same_points(
        figure_points(_figure(runs, "hedging_sign")),
        trained.rename(columns={"l1": "x", "measured": "y"}),
    )


def test_optimum_figure_draws_every_trained_loss(runs):
    losses = _table(runs, "toy-scenarios", "losses")
    expected = losses[losses.width == 1].rename(columns={"l1": "x", "measured_loss": "y"})
    _same_points(figure_points(_figure(runs, "width1_optimum")), expected)


def test_width_figures_draw_the_mean_over_seeds_per_width(runs):
    toy = _table(runs, "toy-hedging-width", "hedging_vs_width")
    means = toy.groupby("width").hedging_degree.mean().reset_index()
    _same_points(
        figure_points(_figure(runs, "toy_width")),
        means.rename(columns={"width": "x", "hedging_degree": "y"}),
    )
    mu = _table(runs, "llm-hedging", "hedging_vs_mu").groupby("mu").hedging_degree.mean()
    _same_points(
        figure_points(_figure(runs, "llm_matryoshka_mu")),
        mu.reset_index().rename(columns={"mu": "x", "hedging_degree": "y"}),
    )
    llm = _table(runs, "llm-hedging", "hedging_vs_width")
    means = llm.groupby(["architecture", "width"]).hedging_degree.mean().reset_index()
    _same_points(
        figure_points(_figure(runs, "llm_width")),
        means.rename(columns={"width": "x", "hedging_degree": "y"}),
    )


def test_matryoshka_and_absorption_figures_draw_their_tables(runs):
    table = _table(runs, "toy-matryoshka", "matryoshka_vs_mu")
    means = table.groupby("mu")[["hedging", "absorption"]].mean().reset_index()
    expected = pd.concat(
        [means.rename(columns={"mu": "x", m: "y"})[["x", "y"]] for m in ("hedging", "absorption")]
    )
    _same_points(figure_points(_figure(runs, "matryoshka_balance")), expected)
    absorption = _table(runs, "toy-absorption", "absorption")
    means = absorption.groupby(["leak", "l1"])[["predicted", "measured"]].mean().reset_index()
    _same_points(
        figure_points(_figure(runs, "absorption_offset")),
        means.rename(columns={"predicted": "x", "measured": "y"}),
    )


def test_theory_lines_come_from_the_theory_table(runs):
    optima = _table(runs, "theory", "theory_optima")
    figure = _figure(runs, "hedging_sign")
    lines = [line for line in figure.axes[0].get_lines() if line.get_linestyle() == "-"]
    correlated = optima[(optima.width == 1) & (optima.scenario == "correlated")]
    colour = SERIES_COLOURS["correlated"]
    (line,) = [line for line in lines if to_hex(line.get_color()) == colour]
    np.testing.assert_allclose(line.get_xydata(), correlated[["l1", "decoder_child"]].to_numpy())


def test_a_scenario_has_one_colour_in_every_figure_and_legends_sit_off_the_data(runs):
    for name in ("hedging_sign", "width1_optimum", "hedging_mse_driven"):
        figure = _figure(runs, name)
        colours = {to_hex(line.get_color()) for line in figure.axes[0].get_lines()}
        assert {SERIES_COLOURS[s] for s in ("hierarchical", "correlated")} <= colours
    for claim in CLAIMS:
        figure = _figure(runs, claim.name)
        figure.draw_without_rendering()  # runs the constrained layout
        (legend,) = figure.legends
        axes_box = figure.axes[0].get_window_extent()
        assert legend.get_window_extent().x0 >= axes_box.x1


def test_svg_output_is_reproducible(runs):
    first = figure_svg(_figure(runs, "toy_width"))
    assert first == figure_svg(_figure(runs, "toy_width")) and first.startswith(b"<?xml")


def test_mse_figure_draws_the_magnitudes_and_width2_figure_the_theory_vectors(runs):
    components = _table(runs, "toy-scenarios", "components")
    trained = components[
        (components.width == 1)
        & (components.quantity == "decoder_child")
        & (components.scenario != "independent")
    ]
    expected = pd.DataFrame({"x": trained.l1, "y": trained.measured.abs()})
    _same_points(figure_points(_figure(runs, "hedging_mse_driven")), expected)
    optima = _table(runs, "theory", "theory_optima")
    width2 = optima[optima.width == 2].set_index("latent")
    lines = _figure(runs, "width2_absorbs").axes[0].get_lines()
    tips = {tuple(np.round(line.get_xydata()[-1], 9)) for line in lines}
    assert tuple(width2.loc[0, ["encoder_parent", "encoder_child"]]) in tips  # parent encoder
    assert tuple(width2.loc[1, ["decoder_parent", "decoder_child"]]) in tips  # child decoder
