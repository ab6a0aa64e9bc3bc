"""The catalogue of claims: what the two papers say, what theory predicts, which run tables
measure it, and a verdict (held / failed / inconclusive / not run) with its numbers.

A claim never reads a folder itself: `assess(claim, runs)` hands it the run records of the
kinds it names, so a claim whose run is absent (or unfinished: no table yet) is "not run", never
held. Each assessment carries the key numbers for the verdict table, a short table for the
claim's section and the tidy data of its figure (theory as lines, measurements as points with
their uncertainty), all computed from the run tables alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sympy as sp

from theory.closed_forms import absorption_offset_loss
from theory.features import SCENARIOS
from theory.predictions import Prediction, absorption_slope, tracking_hedging_coefficient
from toymodels.runs import read_run

SIGN_TOLERANCE = 0.02
"""A decoder child component smaller than this in magnitude counts as zero (no hedging)."""
LOSS_GAP_TOLERANCE = 1e-3
"""A trained SAE is on theory's optimum when its exact loss exceeds the optimum's by at most
this fraction of the optimum's loss ..."""
COSINE_TOLERANCE = 0.01
"""... and every decoder row is within this cosine distance of the optimum's."""
HEDGING_PRESENT = 0.05
"""A child component at least this large (in magnitude) counts as hedging."""
ABSORBED_OFFSET = 0.5
"""An encoder offset delta at least this large counts as absorption (1 = full absorption)."""
OFFSET_TOLERANCE = 0.1
"""A trained encoder offset within this of theory's matches it."""
BOOTSTRAP_RESAMPLES = 2000
"""Resamples of a trend's bootstrap interval."""
CONFIDENCE = 0.95
"""Coverage of every interval the report gives."""
BOOTSTRAP_SEED = 0
"""The bootstrap's generator seed: the same runs give the same report."""
MIN_LEVELS_WITHOUT_REPLICATES = 5
"""Without replicates (seeds) at every level, a trend needs this many levels for an interval:
resampling 3 monotone points gives an interval excluding zero although a random order of 3
points is monotone one time in three."""


class Verdict(str, Enum):
    HELD = "held"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"
    NOT_RUN = "not run"


def combine(verdicts: Sequence[Verdict]) -> Verdict:
    """One verdict from parts: any failure fails, all held holds, nothing run is not run."""
    if not verdicts or all(v is Verdict.NOT_RUN for v in verdicts):
        return Verdict.NOT_RUN
    if Verdict.FAILED in verdicts:
        return Verdict.FAILED
    if all(v is Verdict.HELD for v in verdicts):
        return Verdict.HELD
    return Verdict.INCONCLUSIVE


# ---------------------------------------------------------------- run records


@dataclass(frozen=True)
class RunRecord:
    """What a claim (and the appendix) reads of one run folder."""

    folder: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    tables: dict[str, pd.DataFrame]

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", "unknown"))

    @property
    def finished(self) -> bool:
        """Jobs write metrics.json last."""
        return (self.folder / "metrics.json").is_file()

    @property
    def created(self) -> datetime | None:
        try:
            created = datetime.fromisoformat(str(self.manifest["created"]))
        except (KeyError, ValueError):
            return None
        return created if created.tzinfo else created.replace(tzinfo=timezone.utc)

    def table(self, name: str, columns: Sequence[str]) -> pd.DataFrame:
        """A table that must have `columns` (ValueError naming the folder otherwise)."""
        frame = self.tables[name]
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(
                f"{self.folder}: table {name} lacks column(s) {', '.join(missing)}; "
                "was it written by this toolkit?"
            )
        return frame


def load_run_record(folder: str | Path) -> RunRecord:
    """Read a run folder (one-line ValueError naming it if it is missing or malformed)."""
    folder = Path(folder)
    try:
        record = read_run(folder)
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        if isinstance(err, ValueError) and str(folder) in str(err):
            raise ValueError(" ".join(str(err).split())) from err
        raise ValueError(f"cannot read run folder {folder}: {' '.join(str(err).split())}") from err
    return RunRecord(
        folder=folder,
        config=dict(record["config"] or {}),
        metrics=dict(record["metrics"] or {}),
        manifest=dict(record["manifest"]),
        tables=record["tables"],
    )


def runs_by_kind(records: Sequence[RunRecord]) -> dict[str, RunRecord]:
    """The run of each kind; of two runs of one kind the later-created one counts."""
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    chosen: dict[str, RunRecord] = {}
    for record in sorted(records, key=lambda r: r.created or epoch):
        chosen[record.kind] = record
    return chosen


# ---------------------------------------------------------------- claims


@dataclass(frozen=True)
class Formula:
    """A prediction's formula: `lhs = expr`, the sympy expression typeset by the report."""

    name: str
    """Theory's name for it (theory.predictions where it is a named Prediction)."""
    lhs: str
    """The left-hand side, as Typst math."""
    expr: sp.Expr
    meaning: str


@dataclass(frozen=True)
class Assessment:
    """A claim's verdict with its numbers, section table and figure data."""

    verdict: Verdict
    numbers: str
    """Key numbers with their uncertainty (one line of the verdict table)."""
    detail: str = ""
    """What the verdict rests on, naming every configuration that went against it."""
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    figure: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Tidy figure data: series, role ("theory": a line; "measured": points), x, y, low, high
    (low/high NaN where a point has no interval)."""
    sources: tuple[str, ...] = ()
    """The run tables read, as folder/tables/name.csv."""


RunsByKind = Mapping[str, RunRecord]


@dataclass(frozen=True)
class Claim:
    """One claim of the papers, its prediction, the tables that measure it and its verdict."""

    name: str
    title: str
    """Short, for the verdict table."""
    question: str
    """The question it answers."""
    statement: str
    paper: str
    prediction: str
    """The prediction in words, with theory's value where one exists."""
    measured_by: tuple[tuple[str, str], ...]
    """(run kind, table) pairs the verdict needs."""
    judge: Callable[[RunsByKind], Assessment] = field(repr=False)
    formula: Formula | None = None
    figure_axes: tuple[str, str, bool] = ("x", "y", False)
    """x label, y label, logarithmic x."""


def assess(claim: Claim, runs: RunsByKind) -> Assessment:
    """The claim's verdict on these runs; "not run" when a run or table it needs is absent."""
    missing: dict[str, None] = {}  # ordered, each reason once (a run may hold several tables)
    for kind, table in claim.measured_by:
        if kind not in runs:
            missing[f"no {kind} run"] = None
        elif table not in runs[kind].tables:
            missing[f"{runs[kind].folder} has no table {table} (unfinished run?)"] = None
    if missing:
        return Assessment(Verdict.NOT_RUN, "; ".join(missing))
    assessment = claim.judge(runs)
    sources = tuple(f"{runs[k].folder}/tables/{t}.csv" for k, t in claim.measured_by)
    unfinished = sorted(
        {str(runs[k].folder) for k, _ in claim.measured_by}
        - {str(runs[k].folder) for k, _ in claim.measured_by if runs[k].finished}
    )
    detail = assessment.detail
    if unfinished:
        detail = f"Unfinished run (no metrics.json yet): {', '.join(unfinished)}. {detail}"
    return Assessment(**{**assessment.__dict__, "sources": sources, "detail": detail.strip()})


# ---------------------------------------------------------------- helpers


def fmt(x: float, digits: int = 3) -> str:
    """A number with `digits` significant digits, plain notation where it reads well."""
    if x is None or not np.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.{digits}g}"
    return f"{x:.{digits - 1}e}"


def interval(low: float, high: float) -> str:
    return f"[{fmt(low)}, {fmt(high)}]"


def scenario_correlation(name: str, folder: Path) -> float:
    """P(child | parent) - P(child | not parent) of a named scenario."""
    if name not in SCENARIOS:
        raise ValueError(f"{folder}: unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    given, not_given = SCENARIOS[name]
    return given - not_given


def sign(x: float) -> int | None:
    """-1, 0 or 1 with SIGN_TOLERANCE around zero; None for a missing value."""
    if not np.isfinite(x):
        return None
    return 0 if abs(x) < SIGN_TOLERANCE else int(np.sign(x))


def _config_name(scenario: str, l1: float) -> str:
    return f"{scenario} λ={fmt(l1)}"


@dataclass(frozen=True)
class Trend:
    """A least-squares slope and its bootstrap interval."""

    slope: float
    low: float
    high: float
    rows: int
    levels: int
    replicated: bool
    """Every level has replicates (the bootstrap resamples within levels)."""

    def verdict(self, expected_sign: int) -> Verdict:
        """Held when the interval excludes no trend on the predicted side, failed when it lies
        on the other side, inconclusive when it includes no trend or there is none."""
        if not np.isfinite(self.low):
            return Verdict.INCONCLUSIVE
        if self.low > 0 or self.high < 0:
            return Verdict.HELD if np.sign(self.slope) == expected_sign else Verdict.FAILED
        return Verdict.INCONCLUSIVE

    def text(self, per: str) -> str:
        design = f"{self.rows} rows, {self.levels} levels"
        if not np.isfinite(self.low):
            return (
                f"slope {fmt(self.slope)} per {per}, no interval ({design}: needs seeds at every "
                f"level or >= {MIN_LEVELS_WITHOUT_REPLICATES} levels)"
            )
        return f"slope {fmt(self.slope)} per {per}, {CONFIDENCE:.0%} CI " + (
            f"{interval(self.low, self.high)} ({design})"
        )


def bootstrap_trend(x: np.ndarray, y: np.ndarray) -> Trend:
    """Slope of y on x with a percentile bootstrap interval. Rows are resampled within each x
    level when every level has replicates (seeds), else over all rows if there are enough levels
    (else no interval); resamples with a single x level carry no slope and are dropped."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    levels, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    slope = _slopes(x[None], y[None])[0] if len(levels) > 1 else np.nan
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    replicated = len(levels) > 1 and counts.min() > 1
    if not replicated and len(levels) < MIN_LEVELS_WITHOUT_REPLICATES:
        return Trend(float(slope), np.nan, np.nan, len(x), len(levels), replicated)
    if replicated:
        index = np.concatenate(
            [
                rng.choice(np.flatnonzero(inverse == level), (BOOTSTRAP_RESAMPLES, count))
                for level, count in enumerate(counts)
            ],
            axis=1,
        )
    else:
        index = rng.integers(0, len(x), (BOOTSTRAP_RESAMPLES, len(x)))
    slopes = _slopes(x[index], y[index])
    slopes = slopes[np.isfinite(slopes)]
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(slopes, [tail, 1 - tail]) if len(slopes) else (np.nan, np.nan)
    return Trend(float(slope), float(low), float(high), len(x), len(levels), replicated)


def _slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    dx = x - x.mean(axis=1, keepdims=True)
    dy = y - y.mean(axis=1, keepdims=True)
    variance = (dx**2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(variance > 0, (dx * dy).sum(axis=1) / variance, np.nan)


def _points(series: str, x: Any, y: Any, low: Any = np.nan, high: Any = np.nan) -> pd.DataFrame:
    frame = pd.DataFrame({"x": x, "y": y, "low": low, "high": high})
    frame.insert(0, "role", "measured")
    frame.insert(0, "series", series)
    return frame


def _line(series: str, x: Any, y: Any) -> pd.DataFrame:
    frame = _points(series, x, y)
    frame["role"] = "theory"
    return frame


def _figure(*parts: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# ---------------------------------------------------------------- toy scenarios


OPTIMA_COLUMNS = ("scenario", "l1", "width", "latent", "decoder_parent", "decoder_child")
COMPONENT_COLUMNS = ("scenario", "l1", "width", "latent", "quantity", "predicted", "measured")
LOSS_COLUMNS = (
    "scenario", "l1", "width", "predicted_loss", "measured_loss", "loss_gap",
    "max_decoder_cosine_distance",
)  # fmt: skip
RESTART_COLUMNS = ("scenario", "l1", "width", "restart", "loss_gap")


def width1_optimum_status(runs: RunsByKind) -> pd.DataFrame:
    """Per width-1 configuration of the toy scenarios: losses, gap and whether it is on theory's
    optimum."""
    losses = runs["toy-scenarios"].table("losses", LOSS_COLUMNS)
    width1 = losses[losses.width == 1].copy()
    width1["on_optimum"] = (width1.loss_gap <= LOSS_GAP_TOLERANCE * width1.predicted_loss.abs()) & (
        width1.max_decoder_cosine_distance <= COSINE_TOLERANCE
    )
    tables = runs["toy-scenarios"].tables
    if "restarts" in tables:  # how often gradient descent reaches the optimum, per configuration
        tries = runs["toy-scenarios"].table("restarts", RESTART_COLUMNS)
        tries = tries[tries.width == 1].merge(width1[["scenario", "l1", "predicted_loss"]])
        tries["reached"] = tries.loss_gap <= LOSS_GAP_TOLERANCE * tries.predicted_loss.abs()
        counts = tries.groupby(["scenario", "l1"], sort=False).reached.agg(["sum", "size"])
        counts = counts.rename(columns={"sum": "restarts_reached", "size": "restarts"})
        width1 = width1.merge(counts.reset_index(), on=["scenario", "l1"], how="left")
    return width1.reset_index(drop=True)


def _child_components(runs: RunsByKind) -> pd.DataFrame:
    """Width-1 decoder child components: theory's optimum (theory run) and trained (toy
    scenarios), one row per scenario x L1 present in both runs, with the correlation and the
    optimum status."""
    theory = runs["theory"]
    optima = theory.table("theory_optima", OPTIMA_COLUMNS)
    optima = optima[optima.width == 1][["scenario", "l1", "decoder_child"]]
    toy = runs["toy-scenarios"]
    components = toy.table("components", COMPONENT_COLUMNS)
    trained = components[(components.width == 1) & (components.quantity == "decoder_child")]
    trained = trained[["scenario", "l1", "measured"]]
    status = width1_optimum_status(runs)[["scenario", "l1", "on_optimum"]]
    merged = optima.rename(columns={"decoder_child": "theory"}).merge(
        trained.rename(columns={"measured": "trained"}), on=["scenario", "l1"]
    )
    merged = merged.merge(status, on=["scenario", "l1"], how="left")
    merged["correlation"] = [scenario_correlation(name, toy.folder) for name in merged.scenario]
    order = {name: i for i, name in enumerate(SCENARIOS)}
    merged["order"] = merged.scenario.map(order)
    return merged.sort_values(["order", "l1"]).drop(columns="order").reset_index(drop=True)


def judge_hedging_sign(runs: RunsByKind) -> Assessment:
    data = _child_components(runs)
    expected = np.sign(data.correlation)
    if data.empty:
        return Assessment(Verdict.NOT_RUN, "no scenario and L1 in both the theory and toy runs")
    theory_ok = [sign(v) == e for v, e in zip(data.theory, expected, strict=True)]
    trained_ok = [sign(v) == e for v, e in zip(data.trained, expected, strict=True)]
    data["sign_as_predicted"] = [t and m for t, m in zip(theory_ok, trained_ok, strict=True)]
    wrong_theory = data[~np.array(theory_ok)]
    wrong_trained = data[~np.array(trained_ok)]
    named = [
        f"{_config_name(r.scenario, r.l1)} (trained {fmt(r.trained)}, theory {fmt(r.theory)}"
        f"{'' if r.on_optimum else ', missed the optimum'})"
        for r in wrong_trained.itertuples()
    ]
    if len(wrong_theory) or wrong_trained.on_optimum.fillna(False).astype(bool).any():
        verdict = Verdict.FAILED
    elif len(wrong_trained):
        verdict = Verdict.INCONCLUSIVE
    else:
        verdict = Verdict.HELD
    reached = data[data.on_optimum.fillna(False).astype(bool)]
    deviation = float((reached.trained - reached.theory).abs().max()) if len(reached) else np.nan
    numbers = (
        f"theory: {sum(theory_ok)}/{len(data)} optima, trained: {sum(trained_ok)}/{len(data)} "
        f"fits with the sign of P(c|p)-P(c|not p); |trained - theory| <= {fmt(deviation)} where "
        "on the optimum"
    )
    detail = "Against the prediction: " + "; ".join(named) + "." if named else ""
    if len(wrong_theory):
        detail += " Theory's optimum has the wrong sign at " + ", ".join(
            _config_name(r.scenario, r.l1) for r in wrong_theory.itertuples()
        )
    figure = _sign_figure(data)
    table = data[["scenario", "correlation", "l1", "theory", "trained", "sign_as_predicted"]]
    return Assessment(verdict, numbers, detail.strip(), table, figure)


def _sign_figure(data: pd.DataFrame) -> pd.DataFrame:
    parts = []
    for name, group in data.groupby("scenario", sort=False):
        parts.append(_line(name, group.l1, group.theory))
        parts.append(_points(name, group.l1, group.trained))
    return _figure(*parts)


def judge_width1_optimum(runs: RunsByKind) -> Assessment:
    status = width1_optimum_status(runs)
    misses = status[~status.on_optimum]
    hits = status[status.on_optimum]
    named = [
        f"{_config_name(r.scenario, r.l1)}: loss gap {fmt(r.loss_gap)} (trained "
        f"{fmt(r.measured_loss, 4)} vs optimum {fmt(r.predicted_loss, 4)}), decoder cosine "
        f"distance {fmt(r.max_decoder_cosine_distance)}"
        for r in misses.itertuples()
    ]
    verdict = Verdict.HELD if misses.empty and len(status) else Verdict.FAILED
    if status.empty:
        verdict = Verdict.NOT_RUN
    relative = hits.loss_gap / hits.predicted_loss.abs()
    numbers = f"{len(hits)}/{len(status)} configurations on the optimum" + (
        f" (relative loss gap up to {fmt(float(relative.max()))})" if len(hits) else ""
    )
    if "restarts" in status:
        reached = status.restarts_reached.sum()
        numbers += (
            f"; {reached}/{status.restarts.sum()} restarts reached it "
            f"({status.restarts_reached.min()}-{status.restarts_reached.max()} of "
            f"{status.restarts.max()} per configuration)"
        )
    if named:
        numbers += "; missed: " + "; ".join(
            f"{_config_name(r.scenario, r.l1)} gap {fmt(r.loss_gap)}" for r in misses.itertuples()
        )
    parts = []
    for name, group in status.groupby("scenario", sort=False):
        parts.append(_line(name, group.l1, group.predicted_loss))
        parts.append(_points(name, group.l1, group.measured_loss))
    columns = ["scenario", "l1", "predicted_loss", "measured_loss", "loss_gap",
               "max_decoder_cosine_distance", "on_optimum"]  # fmt: skip
    table = status[columns + (["restarts_reached", "restarts"] if "restarts" in status else [])]
    detail = "Configurations that missed theory's optimum: " + "; ".join(named) if named else ""
    return Assessment(verdict, numbers, detail, table, _figure(*parts))


def judge_hedging_mse_driven(runs: RunsByKind) -> Assessment:
    data = _child_components(runs)
    correlated = data[data.correlation != 0]
    if correlated.empty:
        return Assessment(Verdict.NOT_RUN, "no correlated scenario in both the theory and toy runs")
    smallest = correlated.l1.min()
    largest = correlated.l1.max()
    rows, problems, doubtful = [], [], []
    for name, group in correlated.groupby("scenario", sort=False):
        low = group[group.l1 == smallest].iloc[0]
        high = group[group.l1 == largest].iloc[0]
        rows.append(
            {
                "scenario": name,
                "theory_smallest_l1": low.theory,
                "trained_smallest_l1": low.trained,
                "theory_largest_l1": high.theory,
                "trained_largest_l1": high.trained,
                "theory_change": high.theory - low.theory,
            }
        )
        if abs(low.theory) < HEDGING_PRESENT:
            problems.append(f"theory: {_config_name(name, smallest)} has {fmt(low.theory)}")
        if not np.isfinite(low.trained) or abs(low.trained) < HEDGING_PRESENT:
            note = f"trained {_config_name(name, smallest)} has {fmt(low.trained)}"
            (problems if low.on_optimum else doubtful).append(note)
    table = pd.DataFrame(rows)
    verdict = Verdict.FAILED if problems else Verdict.INCONCLUSIVE if doubtful else Verdict.HELD
    moves = ", ".join(
        f"{r.scenario} {fmt(r.theory_smallest_l1)} -> {fmt(r.theory_largest_l1)}"
        for r in table.itertuples()
    )
    numbers = (
        f"at λ={fmt(smallest)}: |child component| >= {fmt(min(table.theory_smallest_l1.abs()))}"
        f" (theory), >= {fmt(min(table.trained_smallest_l1.abs()))} (trained); "
        f"λ {fmt(smallest)} -> {fmt(largest)} (theory): {moves}"
    )
    detail = "; ".join(problems + doubtful)
    figure = _sign_figure(correlated)
    figure["y"] = figure.y.abs()
    return Assessment(verdict, numbers, detail, table, figure)


# ---------------------------------------------------------------- widths


WIDTH_COLUMNS = ("width", "hedging_degree")


def _hedging_trend(
    table: pd.DataFrame, by: str, series: str
) -> tuple[Trend, pd.DataFrame, pd.DataFrame]:
    """Trend of hedging degree on `by` (log2 of it for width), the per-level summary and figure
    data (per-level mean with the min..max over seeds; the fitted trend as the line)."""
    scale = np.log2 if by == "width" else np.asarray
    trend = bootstrap_trend(scale(table[by]), table.hedging_degree)
    summary = (
        table.groupby(by)
        .hedging_degree.agg(["mean", "min", "max", "count"])
        .reset_index()
        .rename(columns={"count": "seeds"})
    )
    parts = [_points(series, summary[by], summary["mean"], summary["min"], summary["max"])]
    if np.isfinite(trend.slope):
        ends = np.array([table[by].min(), table[by].max()], float)
        fitted = table.hedging_degree.mean() + trend.slope * (scale(ends) - scale(table[by]).mean())
        parts.append(_line(f"{series} trend", ends, fitted))
    return trend, summary, _figure(*parts)


def judge_toy_width(runs: RunsByKind) -> Assessment:
    table = runs["toy-hedging-width"].table("hedging_vs_width", WIDTH_COLUMNS)
    trend, summary, figure = _hedging_trend(table, "width", "toy BatchTopK")
    verdict = trend.verdict(-1)
    return Assessment(verdict, "h " + trend.text("doubling of width"), "", summary, figure)


def judge_llm_width(runs: RunsByKind) -> Assessment:
    table = runs["llm-hedging"].table("hedging_vs_width", (*WIDTH_COLUMNS, "architecture"))
    verdicts, numbers, summaries, figures = [], [], [], []
    for architecture, group in table.groupby("architecture", sort=True):
        trend, summary, figure = _hedging_trend(group, "width", str(architecture))
        verdicts.append(trend.verdict(-1))
        numbers.append(f"{architecture}: {trend.text('doubling')} -> {verdicts[-1].value}")
        summary.insert(0, "architecture", architecture)
        summaries.append(summary)
        figures.append(figure)
    if not verdicts:
        return Assessment(Verdict.NOT_RUN, f"{runs['llm-hedging'].folder}: no rows")
    return Assessment(
        combine(verdicts), "; ".join(numbers), "", pd.concat(summaries), _figure(*figures)
    )


# ---------------------------------------------------------------- matryoshka


MATRYOSHKA_COLUMNS = ("mu", "hedging", "absorption")


def judge_matryoshka(runs: RunsByKind) -> Assessment:
    record = runs["toy-matryoshka"]
    table = record.table("matryoshka_vs_mu", MATRYOSHKA_COLUMNS)
    hedging = bootstrap_trend(table.mu, table.hedging)
    absorption = bootstrap_trend(table.mu, table.absorption)
    verdict = combine([hedging.verdict(1), absorption.verdict(-1)])
    numbers = f"hedging {hedging.text('unit mu')}; absorption {absorption.text('unit mu')}"
    summary = table.groupby("mu")[["hedging", "absorption"]].agg(["mean", "std", "count"])
    summary.columns = [f"{a}_{b}" for a, b in summary.columns]
    summary = summary.reset_index()
    parts = []
    for measure in ("hedging", "absorption"):
        std = summary[f"{measure}_std"].fillna(0)
        mean = summary[f"{measure}_mean"]
        parts.append(_points(measure, summary.mu, mean, mean - std, mean + std))
    read_out = _p_read_out_given_parent(record)
    if read_out is not None:
        mus = [float(table.mu.min()), float(table.mu.max())]
        parts.append(_line("hedging (theory)", mus, [read_out] * 2))
    table_out = summary.drop(columns=["absorption_count"]).rename(
        columns={"hedging_count": "seeds"}
    )
    detail = (
        "Theory: a latent that tracks the parent alone puts a = P(read-out | parent) = "
        f"{fmt(read_out)} on each read-out child (the run's world, metrics.json)."
        if read_out is not None
        else "The run records no world (metrics.json), so no theory line is drawn."
    )
    balance = _balance_text(record.metrics)
    if balance:
        numbers += f"; {balance}"
        for measure in ("hedging", "absorption"):
            curve = record.metrics.get(f"theory_{measure}_by_mu") or {}
            mus = sorted(curve, key=float)
            if mus:
                parts.append(
                    _line(f"{measure} (exact optimum)", [float(m) for m in mus],
                          [curve[m] for m in mus])
                )  # fmt: skip
    return Assessment(verdict, numbers, detail, table_out, _figure(*parts))


def _balance_text(metrics: Mapping) -> str:
    """Theory's balancing mu beside the measured best mu and its 95% interval, when the run
    recorded them (toy matryoshka runs from theory.matryoshka on)."""
    theory, best = metrics.get("theory_balancing_mu"), metrics.get("best_mu")
    interval = metrics.get("best_mu_interval_95")
    if theory is None or best is None:
        return ""
    spread = f" (95% over seeds {fmt(interval[0])}-{fmt(interval[1])})" if interval else ""
    return f"balancing mu: theory {fmt(theory)}, measured best {fmt(best)}{spread}"


def _p_read_out_given_parent(record: RunRecord) -> float | None:
    """Mean P(read-out child | parent) of the run's world (feature 0 the parent, 1..3 the
    read-out children), from the state table the run recorded."""
    states = (record.metrics.get("world") or {}).get("states")
    if not isinstance(states, Mapping) or not states:
        return None
    parent = sum(float(q) for s, q in states.items() if s[0] == "1")
    if parent <= 0:
        return None
    both = [
        sum(float(q) for s, q in states.items() if s[0] == "1" and s[i] == "1") for i in (1, 2, 3)
    ]
    return float(np.mean(both)) / parent


def judge_llm_matryoshka(runs: RunsByKind) -> Assessment:
    table = runs["llm-hedging"].table("hedging_vs_mu", ("mu", "hedging_degree"))
    trend, summary, figure = _hedging_trend(table, "mu", "matryoshka")
    return Assessment(trend.verdict(1), "h " + trend.text("unit mu"), "", summary, figure)


# ---------------------------------------------------------------- absorption


def judge_width2_absorbs(runs: RunsByKind) -> Assessment:
    record = runs["theory"]
    optima = record.table("theory_optima", (*OPTIMA_COLUMNS, "encoder_parent", "encoder_child"))
    width2 = optima[(optima.width == 2) & (optima.scenario == "hierarchical")]
    if width2.empty:
        return Assessment(Verdict.NOT_RUN, f"{record.folder}: no width-2 hierarchical optimum")
    rows, figure, verdicts = [], [], []
    for l1, group in width2.groupby("l1"):
        # the parent's latent: the decoder closest to the parent feature alone
        parent = group.loc[(group.decoder_parent - group.decoder_child.abs()).idxmax()]
        child = group.drop(index=parent.name).iloc[0]
        offset = -parent.encoder_child / parent.encoder_parent
        absorbs = offset >= ABSORBED_OFFSET and child.decoder_parent > SIGN_TOLERANCE
        verdicts.append(Verdict.HELD if absorbs else Verdict.FAILED)
        rows.append(
            {
                "l1": l1,
                "parent_encoder": f"({fmt(parent.encoder_parent)}, {fmt(parent.encoder_child)})",
                "child_decoder": f"({fmt(child.decoder_parent)}, {fmt(child.decoder_child)})",
                "offset_delta": offset,
                "absorbs": absorbs,
            }
        )
        label = f"λ={fmt(l1)}"
        figure += [
            _line(f"parent encoder {label}", [0, parent.encoder_parent], [0, parent.encoder_child]),
            _line(f"child decoder {label}", [0, child.decoder_parent], [0, child.decoder_child]),
        ]
    toy = runs.get("toy-scenarios")
    if toy is not None and "components" in toy.tables:
        components = toy.table("components", COMPONENT_COLUMNS)
        trained = components[(components.width == 2) & (components.scenario == "hierarchical")]
        for l1, group in trained.groupby("l1"):
            if l1 not in set(width2.l1):
                continue
            by = group.set_index(["latent", "quantity"]).measured
            parent_latent = 0 if by[(0, "decoder_parent")] >= by[(1, "decoder_parent")] else 1
            figure += [
                _points(f"parent encoder λ={fmt(l1)}", [by[(parent_latent, "encoder_parent")]],
                        [by[(parent_latent, "encoder_child")]]),
                _points(f"child decoder λ={fmt(l1)}", [by[(1 - parent_latent, "decoder_parent")]],
                        [by[(1 - parent_latent, "decoder_child")]]),
            ]  # fmt: skip
    table = pd.DataFrame(rows)
    numbers = "; ".join(
        f"λ={fmt(r.l1)}: offset δ = {fmt(r.offset_delta)} (child latent decoder {r.child_decoder})"
        for r in table.itertuples()
    )
    return Assessment(combine(verdicts), numbers, "", table, _figure(*figure))


ABSORPTION_COLUMNS = ("l1", "leak", "seed", "measured", "predicted")


def judge_absorption_offset(runs: RunsByKind) -> Assessment:
    table = runs["toy-absorption"].table("absorption", ABSORPTION_COLUMNS).copy()
    table["error"] = table.measured - table.predicted
    table["matches"] = table.error.abs() <= OFFSET_TOLERANCE
    rows, misses, parts = [], [], []
    systematic = False
    for (leak, l1), group in table.groupby(["leak", "l1"]):
        rows.append(
            {
                "leak": leak,
                "l1": l1,
                "predicted": group.predicted.iloc[0],
                "measured_mean": group.measured.mean(),
                "measured_min": group.measured.min(),
                "measured_max": group.measured.max(),
                "seeds_matching": f"{int(group.matches.sum())}/{len(group)}",
            }
        )
        systematic |= not group.matches.any()
        misses += [
            f"leak {fmt(leak)} λ={fmt(l1)} seed {int(r.seed)}: measured {fmt(r.measured)} vs "
            f"{fmt(r.predicted)}"
            for r in group[~group.matches].itertuples()
        ]
    summary = pd.DataFrame(rows)
    for leak, group in summary.groupby("leak"):
        series = f"leak {fmt(leak)}"
        parts.append(
            _points(series, group.predicted, group.measured_mean, group.measured_min,
                    group.measured_max)
        )  # fmt: skip
    ends = [min(0.0, float(table.predicted.min())), max(1.0, float(table.predicted.max()))]
    parts.append(_line("theory: measured = predicted", ends, ends))
    verdict = Verdict.FAILED if systematic else Verdict.INCONCLUSIVE if misses else Verdict.HELD
    numbers = (
        f"{int(table.matches.sum())}/{len(table)} fits within {fmt(OFFSET_TOLERANCE)} of theory's "
        f"offset; median |error| {fmt(float(table.error.abs().median()))}"
    )
    if misses:
        numbers += "; off: " + "; ".join(misses)
    detail = (
        "A configuration none of whose seeds matches fails the claim; seeds off the prediction "
        "while another seed matches make it inconclusive."
    )
    return Assessment(verdict, numbers, detail, summary, _figure(*parts))


# ---------------------------------------------------------------- absorption on the LLM (sweep)

SWEEP_KIND = "llm-absorption-sweep"
SWEEP_COLUMNS = ("sae", "width", "k", "status")
SWEEP_LETTER_COLUMNS = (
    "sae", "width", "k", "letter", "probe_f1", "mean_absorption_fraction", "main_precision",
    "main_recall", "best_latent_f1",
)  # fmt: skip
MIN_PROBE_F1 = 0.6
"""Letters whose probe F1 is not above this are left out of the absorption trends (SAEBench's
threshold; the sweep run's own min_probe_f1 where its config records one)."""


@dataclass(frozen=True)
class LetterTrend:
    """A slope of a per-SAE mean over letters on log2(x), pooled within groups (the other sweep
    axis), with a percentile interval from resampling letters; and each SAE's mean with its
    interval."""

    trend: Trend
    saes: pd.DataFrame
    """sae, width, k, mean, low, high."""


def _sweep_letters(record: RunRecord, value: str, all_letters: bool = False) -> pd.DataFrame:
    """The SAEs x letters matrix of one per-letter column (finished SAEs only); letters with
    probe F1 at most the run's min_probe_f1 are left out unless `all_letters`."""
    per_letter = record.table("per_letter", SWEEP_LETTER_COLUMNS)
    if not all_letters:
        threshold = float(record.config.get("min_probe_f1", MIN_PROBE_F1))
        per_letter = per_letter[per_letter.probe_f1 > threshold]
    return per_letter.pivot(index=["sae", "width", "k"], columns="letter", values=value)


def _pooled_slopes(x_S: np.ndarray, group_S: np.ndarray, y_BS: np.ndarray) -> np.ndarray:
    """Least-squares slope of y on x with one intercept per group, for each row of y_BS."""
    dx = np.zeros_like(x_S, float)
    dy = np.zeros_like(y_BS, float)
    for g in np.unique(group_S):
        mask = group_S == g
        dx[mask] = x_S[mask] - x_S[mask].mean()
        dy[:, mask] = y_BS[:, mask] - y_BS[:, mask].mean(axis=1, keepdims=True)
    variance = (dx**2).sum()
    if variance == 0:
        return np.full(len(y_BS), np.nan)
    with np.errstate(invalid="ignore"):
        return (dy * dx).sum(axis=1) / variance


def letter_bootstrap_trend(matrix: pd.DataFrame, by: str) -> LetterTrend:
    """Trend of the per-SAE mean over letters on log2(`by`) (width or k) within each level of
    the other axis; letters are resampled together across SAEs (a letter's scores in different
    SAEs are not independent). NaN cells (a letter without probe true positives) are skipped."""
    values_SL = matrix.to_numpy(float)
    index = matrix.index.to_frame(index=False)
    other = "k" if by == "width" else "width"
    x_S = np.log2(index[by].to_numpy(float))
    group_S = index[other].to_numpy()
    n_letters = values_SL.shape[1]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN
        means_S = np.nanmean(values_SL, axis=1) if n_letters else np.full(len(x_S), np.nan)
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        picks = rng.integers(0, max(n_letters, 1), (BOOTSTRAP_RESAMPLES, n_letters))
        resampled_BS = (
            np.nanmean(values_SL[:, picks], axis=2).T
            if n_letters
            else np.full((BOOTSTRAP_RESAMPLES, len(x_S)), np.nan)
        )
    slope = float(_pooled_slopes(x_S, group_S, means_S[None])[0])
    slopes = _pooled_slopes(x_S, group_S, resampled_BS)
    slopes = slopes[np.isfinite(slopes)]
    tail = (1 - CONFIDENCE) / 2
    enough = n_letters >= 2 and len(slopes) > 0 and np.isfinite(slope)
    low, high = np.quantile(slopes, [tail, 1 - tail]) if enough else (np.nan, np.nan)
    levels = len(np.unique(x_S))
    trend = Trend(slope, float(low), float(high), n_letters, levels, True)
    with np.errstate(invalid="ignore"):
        lows, highs = (
            np.nanquantile(resampled_BS, [tail, 1 - tail], axis=0)
            if n_letters and np.isfinite(resampled_BS).any()
            else (np.full(len(x_S), np.nan),) * 2
        )
    saes = index.assign(mean=means_S, low=lows, high=highs)
    return LetterTrend(trend, saes)


def _letter_trend_text(result: LetterTrend, per: str) -> str:
    trend = result.trend
    design = f"{trend.rows} letters resampled, {len(result.saes)} SAEs, {trend.levels} levels"
    if not np.isfinite(trend.low):
        return f"slope {fmt(trend.slope)} per {per}, no interval ({design})"
    return (
        f"slope {fmt(trend.slope)} per {per}, {CONFIDENCE:.0%} CI "
        f"{interval(trend.low, trend.high)} ({design})"
    )


def _sweep_figure(result: LetterTrend, by: str, label: str) -> pd.DataFrame:
    other = "k" if by == "width" else "width"
    parts = []
    for level, group in result.saes.groupby(other):
        group = group.sort_values(by)
        parts.append(_points(f"{label} {other}={level}", group[by], group["mean"], group.low,
                             group.high))  # fmt: skip
    return _figure(*parts)


def _failed_saes(record: RunRecord) -> str:
    sweep = record.table("sweep", SWEEP_COLUMNS)
    failed = sweep[sweep.status != "ok"]
    if failed.empty:
        return ""
    return "SAEs left out: " + ", ".join(f"{r.sae} ({r.status})" for r in failed.itertuples())


def _judge_absorption_trend(runs: RunsByKind, by: str, expected: int, per: str) -> Assessment:
    record = runs[SWEEP_KIND]
    result = letter_bootstrap_trend(_sweep_letters(record, "mean_absorption_fraction"), by)
    if result.trend.levels < 2:
        return Assessment(
            Verdict.INCONCLUSIVE,
            f"one {by} only ({len(result.saes)} SAEs): no trend to measure",
            _failed_saes(record),
        )
    numbers = "mean absorption fraction " + _letter_trend_text(result, per)
    table = result.saes.rename(columns={"mean": "mean_absorption_fraction"})
    figure = _sweep_figure(result, by, "absorption")
    return Assessment(result.trend.verdict(expected), numbers, _failed_saes(record), table, figure)


def judge_llm_absorption_width(runs: RunsByKind) -> Assessment:
    return _judge_absorption_trend(runs, "width", 1, "doubling of width (at fixed k)")


def judge_llm_absorption_sparsity(runs: RunsByKind) -> Assessment:
    return _judge_absorption_trend(runs, "k", -1, "doubling of k = L0 (at fixed width)")


def judge_latent_precision_recall(runs: RunsByKind) -> Assessment:
    record = runs[SWEEP_KIND]
    parts, numbers, verdicts, tables = [], [], [], []
    for value, expected in (("main_precision", -1), ("main_recall", 1)):
        result = letter_bootstrap_trend(_sweep_letters(record, value), "k")
        name = value.removeprefix("main_")
        if result.trend.levels < 2:
            return Assessment(
                Verdict.INCONCLUSIVE,
                f"one k only ({len(result.saes)} SAEs): no trend to measure",
                _failed_saes(record),
            )
        verdict = result.trend.verdict(expected)
        verdicts.append(verdict)
        numbers.append(f"{name} {_letter_trend_text(result, 'doubling of L0')} -> {verdict.value}")
        parts.append(_sweep_figure(result, "k", name))
        tables.append(result.saes.rename(columns={"mean": name, "low": f"{name}_low",
                                                  "high": f"{name}_high"}))  # fmt: skip
    table = tables[0].merge(tables[1], on=["sae", "width", "k"])
    return Assessment(
        combine(verdicts), "; ".join(numbers), _failed_saes(record), table, _figure(*parts)
    )


def judge_probe_beats_latents(runs: RunsByKind) -> Assessment:
    record = runs[SWEEP_KIND]
    probe = record.table("probe", ("letter", "f1", "test_words"))
    probe = probe[probe.test_words > 0].set_index("letter").f1
    best = _sweep_letters(record, "best_latent_f1", all_letters=True)
    best_latent = best.max(axis=0)  # over SAEs
    letters = [letter for letter in probe.index if np.isfinite(best_latent.get(letter, np.nan))]
    best_sae = {letter: best[letter].idxmax()[0] for letter in letters}
    if not letters:
        return Assessment(Verdict.NOT_RUN, f"{record.folder}: no letter with both F1 scores")
    margin = probe[letters].to_numpy() - best_latent[letters].to_numpy()
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = margin[rng.integers(0, len(margin), (BOOTSTRAP_RESAMPLES, len(margin)))].mean(1)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    lost = [
        f"{letter}: {best_sae[letter]} {fmt(best_latent[letter])} vs probe {fmt(probe[letter])}"
        for letter, m in zip(letters, margin, strict=True)
        if m <= 0
    ]
    if high < 0:
        verdict = Verdict.FAILED
    elif low > 0 and not lost:
        verdict = Verdict.HELD
    else:
        verdict = Verdict.INCONCLUSIVE
    numbers = (
        f"probe F1 minus the best single latent's F1 (any SAE): mean {fmt(float(margin.mean()))}, "
        f"{CONFIDENCE:.0%} CI {interval(low, high)} over {len(letters)} letters; the probe wins "
        f"{int((margin > 0).sum())}/{len(letters)}"
    )
    detail = "Letters where a latent matches or beats the probe: " + "; ".join(lost) if lost else ""
    table = pd.DataFrame(
        {
            "letter": letters,
            "probe_f1": probe[letters].to_numpy(),
            "best_latent_f1": best_latent[letters].to_numpy(),
            "best_sae": [best_sae[letter] for letter in letters],
            "margin": margin,
        }
    )
    x = np.arange(1, len(letters) + 1)
    figure = _figure(
        _points("probe", x, table.probe_f1), _points("best latent", x, table.best_latent_f1)
    )
    return Assessment(verdict, numbers, detail, table, figure)


# ---------------------------------------------------------------- the catalogue

HEDGING = "Feature Hedging (Chanin, Dulka, Garriga-Alonso, 2025)"
ABSORPTION = "A is for Absorption (Chanin et al.)"

_lambda = sp.Symbol("lambda", nonnegative=True)
_P10, _P11, _P01 = sp.symbols("P_10 P_11 P_01", nonnegative=True)


def _prediction_formula(prediction: Prediction, lhs: str, meaning: str) -> Formula:
    return Formula(prediction.name, lhs, prediction.expr, meaning)


CLAIMS: tuple[Claim, ...] = (
    Claim(
        name="hedging_sign",
        title="Hedging sign follows the correlation",
        question="Does a narrow SAE mix in correlated features, and in which direction?",
        statement=(
            "A width-1 SAE's latent for the parent puts a positive child component into its "
            "decoder when the child co-occurs with the parent more than without it, a negative "
            "one when less, and none when they are independent."
        ),
        paper=HEDGING,
        prediction=(
            "sign(child component) = sign(P(c|p) - P(c|not p)); a latent tracking the parent "
            "exactly gets child component a = P(c|p) without a decoder bias, a - b with one."
        ),
        measured_by=(("theory", "theory_optima"), ("toy-scenarios", "components")),
        judge=judge_hedging_sign,
        formula=_prediction_formula(
            tracking_hedging_coefficient(True),
            'c_"child"',
            "child component of a latent tracking the parent, with a decoder bias "
            "(a = P(c|p), b = P(c|not p))",
        ),
        figure_axes=("L1 coefficient λ", "decoder child component (width 1)", True),
    ),
    Claim(
        name="width1_optimum",
        title="Trained width-1 SAEs reach theory's optimum",
        question="Does a trained SAE learn what theory says is optimal?",
        statement=(
            "ReLU-L1 SAEs of width 1 trained on the two-feature scenarios land on theory's "
            "exact global optimum (same expected loss, same decoder direction)."
        ),
        paper=HEDGING,
        prediction=(
            f"loss gap <= {LOSS_GAP_TOLERANCE:g} x optimum loss and decoder cosine distance <= "
            f"{COSINE_TOLERANCE:g} for every scenario and L1"
        ),
        measured_by=(("toy-scenarios", "losses"),),
        judge=judge_width1_optimum,
        figure_axes=("L1 coefficient λ", "expected loss (width 1)", True),
    ),
    Claim(
        name="hedging_mse_driven",
        title="Hedging is MSE-driven",
        question="Is hedging caused by reconstruction or by sparsity?",
        statement=(
            "Hedging comes from the reconstruction (MSE) term: it is already present at the "
            "smallest L1 coefficient; the L1 term only moves it."
        ),
        paper=HEDGING,
        prediction=(
            f"|child component| >= {HEDGING_PRESENT:g} at the smallest L1 in every correlated "
            "scenario; theory's optima give how it moves with L1"
        ),
        measured_by=(("theory", "theory_optima"), ("toy-scenarios", "components")),
        judge=judge_hedging_mse_driven,
        formula=_prediction_formula(
            tracking_hedging_coefficient(False),
            'c_"child"',
            "child component of a latent tracking the parent (no decoder bias, λ = 0): a = P(c|p)",
        ),
        figure_axes=("L1 coefficient λ", "|decoder child component| (width 1)", True),
    ),
    Claim(
        name="toy_width",
        title="Hedging falls with width (toy)",
        question="Does hedging get worse the narrower the SAE?",
        statement=(
            "On the 50-feature toy world, BatchTopK SAEs hedge less as they get wider "
            "(hedging degree falls with width)."
        ),
        paper=HEDGING,
        prediction="negative slope of hedging degree h on log2(width); no closed form",
        measured_by=(("toy-hedging-width", "hedging_vs_width"),),
        judge=judge_toy_width,
        formula=Formula(
            "hedging_degree",
            "h",
            sp.Max(0, (sp.Symbol("p") - sp.Symbol("p_rand")) / (1 - sp.Symbol("p_rand"))),
            "hedging degree: the new latents' share of the decoders' movement beyond chance",
        ),
        figure_axes=("SAE width", "hedging degree h", True),
    ),
    Claim(
        name="llm_width",
        title="Hedging falls with width (LLM)",
        question="Does the same hold for SAEs on a real language model?",
        statement=(
            "SAEs trained on a language model's activations hedge less as they get wider, for "
            "each architecture (BatchTopK and ReLU-L1)."
        ),
        paper=HEDGING,
        prediction="negative slope of h on log2(width) per architecture; no closed form",
        measured_by=(("llm-hedging", "hedging_vs_width"),),
        judge=judge_llm_width,
        figure_axes=("SAE width", "hedging degree h", True),
    ),
    Claim(
        name="matryoshka_balance",
        title="Balance matryoshka trades hedging for absorption",
        question="Can the balance matryoshka SAE tune hedging against absorption?",
        statement=(
            "Raising mu (the weight of inner matryoshka levels) increases hedging of the inner "
            "latent and decreases absorption; mu = 0 absorbs, mu = 1 hedges."
        ),
        paper=HEDGING,
        prediction=(
            "hedging rises and absorption falls with mu; the fully hedged inner latent carries "
            "a = P(read-out | parent) on each read-out child"
        ),
        measured_by=(("toy-matryoshka", "matryoshka_vs_mu"),),
        judge=judge_matryoshka,
        formula=Formula(
            "level_weights",
            "beta_j",
            sp.Symbol("mu") ** (sp.Symbol("n") - sp.Symbol("j")),
            "weight of matryoshka level j of n",
        ),
        figure_axes=("mu", "mean read-out component", False),
    ),
    Claim(
        name="llm_matryoshka_mu",
        title="Matryoshka hedging rises with mu (LLM)",
        question="Does the balance knob move hedging on a real model?",
        statement=(
            "Balance matryoshka BatchTopK SAEs on a language model's activations hedge more as "
            "mu (the weight of the inner levels) rises."
        ),
        paper=HEDGING,
        prediction="positive slope of hedging degree h on mu; no closed form",
        measured_by=(("llm-hedging", "hedging_vs_mu"),),
        judge=judge_llm_matryoshka,
        figure_axes=("mu", "hedging degree h", False),
    ),
    Claim(
        name="width2_absorbs",
        title="Width-2 hierarchical optimum absorbs",
        question="Does a wide enough SAE absorb instead of hedging?",
        statement=(
            "On the hierarchical scenario a width-2 SAE's optimum absorbs: the parent latent's "
            "encoder takes a negative child component (f0 - delta f1, delta near 1) and the "
            "child latent's decoder takes the parent (f1 + delta f0)."
        ),
        paper=ABSORPTION,
        prediction=(
            "d loss / d delta at delta = 0 is -P11 λ < 0, so sparsity pushes delta to 1 "
            f"(absorbing: delta >= {ABSORBED_OFFSET:g})"
        ),
        measured_by=(("theory", "theory_optima"),),
        judge=judge_width2_absorbs,
        formula=_prediction_formula(
            absorption_slope(),
            "lr((partial cal(L))/(partial delta) |)_(delta = 0)",
            "slope of the absorption family's loss at delta = 0",
        ),
        figure_axes=("parent component", "child component", False),
    ),
    Claim(
        name="absorption_offset",
        title="Trained absorption matches theory's offset",
        question="Does a trained wide SAE absorb as much as theory says?",
        statement=(
            "A 4-latent ReLU-L1 SAE on the absorption paper's hierarchy learns the parent "
            "latent's encoder f0 - delta f1 with theory's optimal offset delta, for each L1 and "
            "leak P(child | not parent)."
        ),
        paper=ABSORPTION,
        prediction=(
            "delta minimises the absorption family's loss; delta = 1 (full absorption) with "
            f"no leak; match within {OFFSET_TOLERANCE:g}"
        ),
        measured_by=(("toy-absorption", "absorption"),),
        judge=judge_absorption_offset,
        formula=Formula(
            "absorption_family_loss",
            "cal(L)(delta)",
            absorption_offset_loss(_P10, _P11, _P01, _lambda)[0],
            "loss of the absorption family (encoder f0 - delta f1) against delta",
        ),
        figure_axes=("theory's offset δ", "trained offset δ", False),
    ),
    Claim(
        name="llm_absorption_width",
        title="Absorption rises with width (LLM)",
        question="Do wider SAEs absorb more of the first-letter feature?",
        statement=(
            "On a language model's first-letter task, TopK SAEs of the same L0 have a higher "
            "mean absorption fraction the wider they are."
        ),
        paper=ABSORPTION,
        prediction=(
            "positive slope of the mean absorption fraction on log2(width) at fixed k, the "
            "interval from resampling letters; no closed form"
        ),
        measured_by=((SWEEP_KIND, "sweep"), (SWEEP_KIND, "per_letter")),
        judge=judge_llm_absorption_width,
        figure_axes=("SAE width", "mean absorption fraction", True),
    ),
    Claim(
        name="llm_absorption_sparsity",
        title="Absorption rises with sparsity (LLM)",
        question="Do sparser SAEs (lower L0) absorb more?",
        statement=(
            "TopK SAEs of the same width have a higher mean absorption fraction the lower their "
            "L0 (k)."
        ),
        paper=ABSORPTION,
        prediction=(
            "negative slope of the mean absorption fraction on log2(k) at fixed width, the "
            "interval from resampling letters; no closed form"
        ),
        measured_by=((SWEEP_KIND, "sweep"), (SWEEP_KIND, "per_letter")),
        judge=judge_llm_absorption_sparsity,
        figure_axes=("k = L0", "mean absorption fraction", True),
    ),
    Claim(
        name="llm_latent_precision_recall",
        title="Letter latents: precise at low L0, high recall at high L0",
        question="How do the letter latents' precision and recall move with L0?",
        statement=(
            "The main latents of a first letter are precise but miss many of the letter's words "
            "(low recall) at low L0, and the reverse at high L0."
        ),
        paper=ABSORPTION,
        prediction=(
            "precision of the main latents (fire: the letter) falls and recall rises with "
            "log2(k) at fixed width; intervals from resampling letters"
        ),
        measured_by=((SWEEP_KIND, "sweep"), (SWEEP_KIND, "per_letter")),
        judge=judge_latent_precision_recall,
        figure_axes=("k = L0", "main latents' precision / recall", True),
    ),
    Claim(
        name="llm_probe_beats_latents",
        title="The probe beats every latent on F1",
        question="Is the first letter better read by a linear probe than by any SAE latent?",
        statement=(
            "For each first letter, a linear probe on the residual stream has a higher F1 than "
            "any single SAE latent, in every SAE of the sweep."
        ),
        paper=ABSORPTION,
        prediction=(
            "probe F1 minus the best single latent's F1 (a latent firing as the classifier, "
            "over every latent of every SAE) is positive for every letter"
        ),
        measured_by=((SWEEP_KIND, "probe"), (SWEEP_KIND, "per_letter")),
        judge=judge_probe_beats_latents,
        figure_axes=("letter (A = 1)", "test F1", False),
    ),
)


def claim_named(name: str) -> Claim:
    for claim in CLAIMS:
        if claim.name == name:
            return claim
    raise ValueError(f"no claim {name!r}; known: {', '.join(c.name for c in CLAIMS)}")


def assess_all(records: Sequence[RunRecord]) -> list[tuple[Claim, Assessment]]:
    runs = runs_by_kind(records)
    return [(claim, assess(claim, runs)) for claim in CLAIMS]
