"""Verdict functions on hand-built run tables: each claim held, failed, inconclusive, not run."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports.claims import (
    CLAIMS,
    Verdict,
    assess,
    bootstrap_trend,
    claim_named,
    combine,
    load_run_record,
    runs_by_kind,
)
from tests.reports.claim_runs import (
    L1S,
    write_absorption,
    write_absorption_sweep,
    write_all,
    write_llm_hedging,
    write_matryoshka,
    write_theory,
    write_toy_scenarios,
    write_toy_width,
)


def _runs(*folders: Path) -> dict:
    return runs_by_kind([load_run_record(f) for f in folders])


def _verdict(name: str, *folders: Path):
    return assess(claim_named(name), _runs(*folders))


@pytest.fixture(scope="module")
def every_run(tmp_path_factory) -> list[Path]:
    return write_all(tmp_path_factory.mktemp("runs"))


def test_every_claim_holds_on_runs_built_to_agree_and_names_what_it_read(every_run):
    runs = _runs(*every_run)
    for claim in CLAIMS:
        assessment = assess(claim, runs)
        assert assessment.verdict is Verdict.HELD, (claim.name, assessment.numbers)
        assert assessment.numbers and not assessment.figure.empty
        for kind, table in claim.measured_by:
            assert f"{runs[kind].folder}/tables/{table}.csv" in assessment.sources


def test_a_claim_whose_run_is_absent_or_unfinished_is_not_run_never_held(tmp_path, every_run):
    for claim in CLAIMS:
        assessment = assess(claim, {})
        assert assessment.verdict is Verdict.NOT_RUN
        assert f"no {claim.measured_by[0][0]} run" in assessment.numbers
    unfinished = write_llm_hedging(tmp_path / "llm-hedging")  # a run without its table yet
    assessment = _verdict("llm_width", unfinished)
    assert assessment.verdict is Verdict.NOT_RUN
    assert f"{unfinished} has no table hedging_vs_width" in assessment.numbers
    # tables written before the run finished are read, and the run is named as unfinished
    partial = write_toy_width(tmp_path / "partial")
    (partial / "metrics.json").unlink()
    assessment = _verdict("toy_width", partial)
    assert assessment.verdict is Verdict.HELD
    assert assessment.detail.startswith(f"Unfinished run (no metrics.json yet): {partial}")
    only_theory = _verdict("hedging_sign", every_run[0])
    assert only_theory.verdict is Verdict.NOT_RUN and "no toy-scenarios run" in only_theory.numbers


def test_hedging_sign(tmp_path):
    theory = write_theory(tmp_path / "theory")
    held = _verdict("hedging_sign", theory, write_toy_scenarios(tmp_path / "a"))
    assert held.verdict is Verdict.HELD and "12" not in held.numbers  # 8 configurations
    assert "theory: 8/8 optima, trained: 8/8 fits" in held.numbers
    # a wrong sign only where the fit missed theory's optimum: inconclusive, named
    missed = write_toy_scenarios(
        tmp_path / "b",
        trained_child={("anticorrelated", 0.1): 0.98},
        gaps={("anticorrelated", 0.1): 0.03},
    )
    doubtful = _verdict("hedging_sign", theory, missed)
    assert doubtful.verdict is Verdict.INCONCLUSIVE
    assert (
        "anticorrelated λ=0.1 (trained 0.98, theory -0.22, missed the optimum)" in doubtful.detail
    )
    # a wrong sign on theory's optimum fails
    wrong_theory = write_theory(tmp_path / "theory2", child={"correlated": -0.2})
    failed = _verdict("hedging_sign", wrong_theory, write_toy_scenarios(tmp_path / "c"))
    assert failed.verdict is Verdict.FAILED
    # and a fit on the optimum with the wrong sign fails too
    wrong_fit = write_toy_scenarios(tmp_path / "d", trained_child={("correlated", 0.001): -0.1})
    assert _verdict("hedging_sign", theory, wrong_fit).verdict is Verdict.FAILED


def test_width1_optimum_counts_the_restarts_that_reached_it(tmp_path):
    run = write_toy_scenarios(
        tmp_path / "a", restarts=4, reached={("correlated", 0.001): 1, ("independent", 0.1): 3}
    )
    held = _verdict("width1_optimum", run)
    assert held.verdict is Verdict.HELD
    assert "; 28/32 restarts reached it (1-4 of 4 per configuration)" in held.numbers
    counts = held.table.set_index(["scenario", "l1"])
    assert counts.loc[("correlated", 0.001), "restarts_reached"] == 1
    assert counts.loc[("independent", 0.1), "restarts_reached"] == 3
    assert (counts.restarts == 4).all()


def test_width1_optimum_names_every_miss_with_its_gap(tmp_path):
    assert _verdict("width1_optimum", write_toy_scenarios(tmp_path / "a")).verdict is Verdict.HELD
    misses = write_toy_scenarios(
        tmp_path / "b", gaps={("anticorrelated", 0.1): 0.0352, ("correlated", 0.001): 0.002}
    )
    failed = _verdict("width1_optimum", misses)
    assert failed.verdict is Verdict.FAILED
    assert failed.numbers.startswith("6/8 configurations on the optimum")
    assert "correlated λ=0.001 gap 0.002" in failed.numbers
    assert "anticorrelated λ=0.1 gap 0.0352" in failed.numbers
    assert "anticorrelated λ=0.1: loss gap 0.0352 (trained 0.1352 vs optimum 0.1)" in failed.detail
    on_optimum = failed.table[["scenario", "l1", "on_optimum"]].itertuples(index=False)
    assert {(s, lam) for s, lam, ok in on_optimum if not ok} == {
        ("anticorrelated", 0.1),
        ("correlated", 0.001),
    }


def test_hedging_is_mse_driven(tmp_path):
    theory, fits = write_theory(tmp_path / "theory"), write_toy_scenarios(tmp_path / "a")
    held = _verdict("hedging_mse_driven", theory, fits)
    assert held.verdict is Verdict.HELD
    assert f"at λ={L1S[0]:g}: |child component| >= 0.21 (theory)" in held.numbers
    no_hedging = write_theory(tmp_path / "theory2", child={"correlated": 0.01})
    assert _verdict("hedging_mse_driven", no_hedging, fits).verdict is Verdict.FAILED
    stuck = write_toy_scenarios(
        tmp_path / "b",
        trained_child={("correlated", 0.001): 0.0},
        gaps={("correlated", 0.001): 0.01},
    )
    doubtful = _verdict("hedging_mse_driven", theory, stuck)
    assert doubtful.verdict is Verdict.INCONCLUSIVE and "correlated λ=0.001" in doubtful.detail


@pytest.mark.parametrize(
    ("slope", "noise", "verdict"),
    [
        (-0.03, 0.002, Verdict.HELD),
        (0.03, 0.002, Verdict.FAILED),
        (0.0, 0.05, Verdict.INCONCLUSIVE),
    ],
)
def test_hedging_falls_with_width_toy(tmp_path, slope, noise, verdict):
    folder = write_toy_width(tmp_path / "w", slope=slope, noise=noise)
    assessment = _verdict("toy_width", folder)
    assert assessment.verdict is verdict, assessment.numbers
    table = pd.read_csv(folder / "tables" / "hedging_vs_width.csv")
    fitted = np.polyfit(np.log2(table.width), table.hedging_degree, 1)[0]
    shown = float(re.search(r"slope (\S+) per doubling", assessment.numbers)[1])
    assert shown == pytest.approx(fitted, rel=1e-3, abs=1e-9)


def test_hedging_falls_with_width_llm_per_architecture(tmp_path):
    both = write_llm_hedging(tmp_path / "a", {"batchtopk": -0.03, "relu-l1": -0.02})
    assert _verdict("llm_width", both).verdict is Verdict.HELD
    flat = write_llm_hedging(tmp_path / "b", {"batchtopk": -0.03, "relu-l1": 0.0}, noise=0.05)
    mixed = _verdict("llm_width", flat)
    assert mixed.verdict is Verdict.INCONCLUSIVE
    assert "batchtopk:" in mixed.numbers and "-> held" in mixed.numbers
    assert "relu-l1:" in mixed.numbers and "-> inconclusive" in mixed.numbers
    rising = write_llm_hedging(tmp_path / "c", {"batchtopk": 0.03})
    assert _verdict("llm_width", rising).verdict is Verdict.FAILED


def test_matryoshka_hedging_rises_with_mu_on_the_llm(tmp_path):
    slopes = {"batchtopk": -0.03}
    rising = write_llm_hedging(tmp_path / "a", slopes, mu_slope=0.05)
    assert _verdict("llm_matryoshka_mu", rising).verdict is Verdict.HELD
    falling = write_llm_hedging(tmp_path / "b", slopes, mu_slope=-0.05)
    assert _verdict("llm_matryoshka_mu", falling).verdict is Verdict.FAILED
    without_mu = _verdict("llm_matryoshka_mu", write_llm_hedging(tmp_path / "c", slopes))
    assert without_mu.verdict is Verdict.NOT_RUN and "has no table hedging_vs_mu" in (
        without_mu.numbers
    )


def test_a_single_seed_per_width_bootstraps_over_rows_given_enough_widths():
    widths = np.log2([16, 32, 64, 128, 256])
    trend = bootstrap_trend(widths, np.array([0.3, 0.28, 0.2, 0.18, 0.1]))
    assert trend.rows == 5 and not trend.replicated and trend.low <= trend.slope <= trend.high
    assert trend.verdict(-1) is Verdict.HELD
    # three monotone points: no interval, so no verdict either way
    few = bootstrap_trend(widths[:3], np.array([0.3, 0.2, 0.1]))
    assert few.verdict(-1) is Verdict.INCONCLUSIVE and "no interval (3 rows, 3 levels" in (
        few.text("doubling")
    )
    one_level = bootstrap_trend(np.array([1.0, 1.0]), np.array([0.1, 0.2]))
    assert one_level.verdict(-1) is Verdict.INCONCLUSIVE


def test_balance_matryoshka(tmp_path):
    assert _verdict("matryoshka_balance", write_matryoshka(tmp_path / "a")).verdict is (
        Verdict.HELD
    )
    flat = write_matryoshka(tmp_path / "b", hedging_slope=0.0, noise=0.05)
    assert _verdict("matryoshka_balance", flat).verdict is Verdict.INCONCLUSIVE
    reversed_ = write_matryoshka(tmp_path / "c", hedging_slope=-0.1)
    assessment = _verdict("matryoshka_balance", reversed_)
    assert assessment.verdict is Verdict.FAILED
    theory = assessment.figure[assessment.figure.role == "theory"]
    assert np.allclose(theory.y, 0.2)  # P(read-out | parent) of the run's world
    assert "balancing mu" not in assessment.numbers  # an older run: no theory mu recorded


def test_balance_matryoshka_shows_theorys_mu_beside_the_measured_one(tmp_path):
    run = write_matryoshka(
        tmp_path / "a",
        best_mu=0.75,
        best_mu_interval_95=[0.25, 1.0],
        theory_balancing_mu=0.2383,
        theory_hedging_by_mu={"0.0": 0.004, "1.0": 0.08},
        theory_absorption_by_mu={"0.0": 0.25, "1.0": 0.0},
    )
    assessment = _verdict("matryoshka_balance", run)
    assert assessment.verdict is Verdict.HELD  # the verdict still reads the measurement only
    assert "balancing mu: theory 0.238, measured best 0.75 (95% over seeds 0.25-1)" in (
        assessment.numbers
    )
    exact = assessment.figure[assessment.figure.series == "absorption (exact optimum)"]
    assert exact.x.tolist() == [0.0, 1.0] and exact.y.tolist() == [0.25, 0.0]


def test_width2_absorbs(tmp_path):
    held = _verdict("width2_absorbs", write_theory(tmp_path / "a"))
    assert held.verdict is Verdict.HELD and "offset δ = 1" in held.numbers
    clean = _verdict("width2_absorbs", write_theory(tmp_path / "b", absorbing=False))
    assert clean.verdict is Verdict.FAILED and "offset δ = 0" in clean.numbers


def test_absorption_offset(tmp_path):
    assert _verdict("absorption_offset", write_absorption(tmp_path / "a")).verdict is Verdict.HELD
    one_seed_off = write_absorption(tmp_path / "b", errors={(0.05, 1): -0.3})
    doubtful = _verdict("absorption_offset", one_seed_off)
    assert doubtful.verdict is Verdict.INCONCLUSIVE
    assert "leak 0.05 λ=0.1 seed 1: measured -0.24 vs 0.06" in doubtful.numbers
    all_off = write_absorption(tmp_path / "c", errors={(0.0, 0): -0.5, (0.0, 1): -0.6})
    assert _verdict("absorption_offset", all_off).verdict is Verdict.FAILED


def test_a_table_without_the_columns_a_claim_needs_names_the_folder(tmp_path):
    folder = write_toy_width(tmp_path / "w")
    (folder / "tables" / "hedging_vs_width.csv").write_text("width,seed\n16,0\n")
    with pytest.raises(
        ValueError, match=f"{folder}: table hedging_vs_width lacks .*hedging_degree"
    ):
        _verdict("toy_width", folder)


def test_combine():
    held, failed, unsure, absent = Verdict
    assert combine([held, held]) is held
    assert combine([held, unsure]) is unsure
    assert combine([held, failed, unsure]) is failed
    assert combine([absent, absent]) is absent and combine([]) is absent


def test_only_configurations_in_both_runs_are_compared(tmp_path):
    theory, fits = write_theory(tmp_path / "theory"), write_toy_scenarios(tmp_path / "fits")
    path = fits / "tables" / "components.csv"
    components = pd.read_csv(path)
    components[components.scenario == "correlated"].to_csv(path, index=False)
    assessment = _verdict("hedging_sign", theory, fits)
    assert assessment.verdict is Verdict.HELD
    assert assessment.numbers.startswith("theory: 2/2 optima, trained: 2/2 fits")


@pytest.mark.parametrize(
    ("name", "changes", "verdict"),
    [
        ("llm_absorption_width", {}, Verdict.HELD),
        ("llm_absorption_width", {"width_slope": -0.05}, Verdict.FAILED),
        ("llm_absorption_width", {"width_slope": 0.0, "noise": 0.1}, Verdict.INCONCLUSIVE),
        ("llm_absorption_sparsity", {}, Verdict.HELD),
        ("llm_absorption_sparsity", {"k_slope": 0.05}, Verdict.FAILED),
        ("llm_absorption_sparsity", {"k_slope": 0.0, "noise": 0.1}, Verdict.INCONCLUSIVE),
        ("llm_latent_precision_recall", {}, Verdict.HELD),
        ("llm_latent_precision_recall", {"recall_slope": -0.05}, Verdict.FAILED),
        ("llm_latent_precision_recall", {"precision_slope": 0.0, "noise": 0.1},
         Verdict.INCONCLUSIVE),
        ("llm_probe_beats_latents", {}, Verdict.HELD),
        ("llm_probe_beats_latents", {"probe_margin": -0.2}, Verdict.FAILED),
        ("llm_probe_beats_latents", {"noise": 0.1}, Verdict.INCONCLUSIVE),  # a few letters lost
    ],
)  # fmt: skip
def test_llm_absorption_sweep_claims(tmp_path, name, changes, verdict):
    assessment = _verdict(name, write_absorption_sweep(tmp_path / "sweep", **changes))
    assert assessment.verdict is verdict, assessment.numbers
    assert "CI [" in assessment.numbers
    assert not assessment.figure.empty and not assessment.table.empty


def test_llm_absorption_sweep_claims_name_their_design_and_what_was_left_out(tmp_path):
    folder = write_absorption_sweep(tmp_path / "a", failed=("w64_k4",))
    width = _verdict("llm_absorption_width", folder)
    assert width.verdict is Verdict.HELD
    assert "26 letters resampled, 5 SAEs, 3 levels" in width.numbers
    assert "w64_k4 (train failed)" in width.detail
    # the slope is the pooled within-k least-squares slope of the per-SAE means
    per_letter = pd.read_csv(folder / "tables" / "per_letter.csv")
    means = per_letter.groupby(["width", "k"]).mean_absorption_fraction.mean().reset_index()
    means["x"] = np.log2(means.width)
    for column in ("x", "mean_absorption_fraction"):
        means[column] -= means.groupby("k")[column].transform("mean")
    fitted = (means.x * means.mean_absorption_fraction).sum() / (means.x**2).sum()
    shown = float(re.search(r"slope (\S+) per doubling", width.numbers)[1])
    assert shown == pytest.approx(fitted, rel=1e-3)
    # one width only: no width trend to measure
    single = _verdict("llm_absorption_width", write_absorption_sweep(tmp_path / "b", widths=(16,)))
    assert single.verdict is Verdict.INCONCLUSIVE and "one width only" in single.numbers
    # one letter lost to a latent: named, and the claim ("every letter") is not held
    lost = write_absorption_sweep(tmp_path / "c")
    path = lost / "tables" / "per_letter.csv"
    table = pd.read_csv(path)
    table.loc[(table.letter == "Q") & (table.sae == "w32_k16"), "best_latent_f1"] = 0.99
    table.to_csv(path, index=False)
    probe = _verdict("llm_probe_beats_latents", lost)
    assert probe.verdict is Verdict.INCONCLUSIVE and "the probe wins 25/26" in probe.numbers
    assert "Q: w32_k16 0.99 vs probe" in probe.detail
    # the run without its tables is not run
    unfinished = tmp_path / "d"
    from tests.reports.claim_runs import _write

    _write(unfinished, "llm-absorption-sweep", {})
    assert _verdict("llm_probe_beats_latents", unfinished).verdict is Verdict.NOT_RUN
