"""The Typst report read back with pypdf: page 1's verdict table against the run tables, one
section per claim, the appendix, failures named, the same bytes for the same runs."""

from __future__ import annotations

import io
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pypdf
import pytest

from reports.claims import CLAIMS, fmt
from reports.pdf import build_report, format_number, format_value, model_quantization
from tests.reports.claim_runs import write_all, write_theory, write_toy_scenarios
from toymodels.runs import flatten


def _pages(pdf: Path) -> list[str]:
    """Each page's text with whitespace runs made single spaces (table cells wrap)."""
    reader = pypdf.PdfReader(io.BytesIO(pdf.read_bytes()))
    return [" ".join(page.extract_text().split()) for page in reader.pages]


def _row(page: str, number: int) -> str:
    """Verdict-table row `number`: from its title to the next row's title."""
    titles = [c.title for c in CLAIMS]
    start = page.index(f"{number} {titles[number - 1]}")
    end = page.index(f"{number + 1} {titles[number]}") if number < len(titles) else None
    return page[start:end]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    folders = write_all(root)
    # one configuration misses theory's optimum, named on page 1 with its gap
    folders[1] = write_toy_scenarios(
        root / "toy-scenarios-miss", gaps={("anticorrelated", 0.1): 0.0352}
    )
    return folders


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> Path:
    return build_report(runs, tmp_path_factory.mktemp("out") / "report.pdf", title="Claims")


@pytest.fixture(scope="module")
def pages(report) -> list[str]:
    return _pages(report)


def test_page_one_holds_the_questions_and_a_verdict_row_per_claim(pages: list[str]):
    first = pages[0]
    assert first.startswith("Claims")
    for claim in CLAIMS:
        assert claim.question in first
    pattern = r"\d+ {} (held|failed|inconclusive|not run)"
    verdicts = {
        c.name: re.match(pattern.format(re.escape(c.title)), _row(first, n))[1]
        for n, c in enumerate(CLAIMS, start=1)
    }
    assert verdicts == {
        "hedging_sign": "held",
        "width1_optimum": "failed",
        "hedging_mse_driven": "held",
        "toy_width": "held",
        "llm_width": "held",
        "llm_matryoshka_mu": "held",
        "matryoshka_balance": "held",
        "width2_absorbs": "held",
        "absorption_offset": "held",
        "llm_absorption_width": "held",
        "llm_absorption_sparsity": "held",
        "llm_latent_precision_recall": "held",
        "llm_probe_beats_latents": "held",
    }


def test_verdict_rows_show_the_numbers_of_the_run_tables(pages: list[str], runs: list[Path]):
    first = pages[0]
    numbers = {c.name: _row(first, n) for n, c in enumerate(CLAIMS, start=1)}
    losses = pd.read_csv(runs[1] / "tables" / "losses.csv")
    misses = losses[losses.loss_gap > 1e-4]
    assert (
        f"{len(losses) - len(misses)}/{len(losses)} configurations on the optimum"
        in (numbers["width1_optimum"])
    )
    for miss in misses.itertuples():  # each miss by name with its own gap
        assert (
            f"{miss.scenario} λ={fmt(miss.l1)} gap {fmt(miss.loss_gap)}"
            in (numbers["width1_optimum"])
        )
    widths = pd.read_csv(runs[2] / "tables" / "hedging_vs_width.csv")
    slope = np.polyfit(np.log2(widths.width), widths.hedging_degree, 1)[0]
    assert f"h slope {fmt(slope)} per doubling of width, 95% CI [" in numbers["toy_width"]
    llm = pd.read_csv(runs[3] / "tables" / "hedging_vs_width.csv")
    for architecture, group in llm.groupby("architecture"):
        slope = np.polyfit(np.log2(group.width), group.hedging_degree, 1)[0]
        assert f"{architecture}: slope {fmt(slope)} per doubling" in numbers["llm_width"]
    optima = pd.read_csv(runs[0] / "tables" / "theory_optima.csv")
    parent = optima[(optima.width == 2) & (optima.latent == 0)].iloc[0]
    offset = -parent.encoder_child / parent.encoder_parent
    assert f"offset δ = {fmt(offset)}" in numbers["width2_absorbs"]
    absorption = pd.read_csv(runs[5] / "tables" / "absorption.csv")
    assert f"{len(absorption)}/{len(absorption)} fits within 0.1" in numbers["absorption_offset"]


def test_a_claim_whose_run_is_absent_is_reported_as_not_run(tmp_path: Path):
    theory = write_theory(tmp_path / "theory")
    first = _pages(build_report([theory], tmp_path / "only-theory.pdf"))[0]
    number = [c.name for c in CLAIMS].index("width2_absorbs") + 1
    assert f"{number} Width-2 hierarchical optimum absorbs held" in first
    for number, claim in enumerate(CLAIMS, start=1):
        if claim.name != "width2_absorbs":
            assert _row(first, number).startswith(f"{number} {claim.title} not run")
    assert "not run no toy-scenarios run" in first


def test_one_section_per_claim_with_formula_figure_table_and_sources(pages, runs):
    body = " ".join(pages[1:])
    for number, claim in enumerate(CLAIMS, start=1):
        assert f"{number}. {claim.title} Verdict:" in body
    assert body.count("theory as lines, measurements as points") == len(CLAIMS)
    assert "typeset from its sympy expression" in body
    assert f"{runs[2]}/tables/hedging_vs_width.csv" in body
    appendix = body[body.index("Appendix: runs, configs and manifests") :]
    for folder in runs:
        assert f"{folder.name} (" in appendix
    manifest = json.loads((runs[0] / "manifest.json").read_text())
    assert (manifest["git_commit"] or "unknown") in appendix and "built_by = tests" in appendix


def test_user_strings_are_escaped_not_typeset(tmp_path: Path):
    title = 'A #title with $math$, *stars*, _under_ [brackets] \\ "quotes" <tag> @ref'
    theory = write_theory(tmp_path / "odd #folder $x$")
    pages = _pages(build_report([theory], tmp_path / "odd.pdf", title=title))
    assert pages[0].startswith(" ".join(title.split()))
    assert "odd #folder $x$ (theory)" in " ".join(pages)


def test_rebuilding_gives_the_same_bytes_and_ordinary_permissions(runs, report, tmp_path):
    again = build_report(runs, tmp_path / "again.pdf", title="Claims")
    assert again.read_bytes() == report.read_bytes()
    mode = stat.S_IMODE(os.stat(again).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_missing_or_malformed_folders_are_named_before_anything_is_written(runs, tmp_path):
    out = tmp_path / "report.pdf"
    out.write_bytes(b"previous report")
    stray = tmp_path / "just_a_folder"
    stray.mkdir()
    broken = write_theory(tmp_path / "broken")
    (broken / "manifest.json").write_text("{not json")
    for bad in (stray, tmp_path / "no_such_run", broken):
        with pytest.raises(ValueError, match=re.escape(str(bad))) as error:
            build_report([runs[0], bad], out)
        assert "\n" not in str(error.value)
    assert out.read_bytes() == b"previous report"
    with pytest.raises(ValueError, match="at least one run folder"):
        build_report([], out)


def test_the_model_quantization_a_run_recorded_is_what_the_report_reads():
    assert model_quantization({"model_quantization": "Q4_K_M (4-bit GGUF, dequantized)"}) == (
        "Q4_K_M (4-bit GGUF, dequantized)"
    )
    assert model_quantization({"model_quantization": None, "model": "gpt2"}) is None


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.4375, "0.4375"),
        (2.5e-05, "2.500e-05"),
        (250_000_000.0, "250000000"),
        (0.0, "0"),
        (float("nan"), "nan"),
        (True, "true"),
        (None, "null"),
        ([0.5, 2], "[0.5, 2]"),
        (list(range(15)), "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ... (3 more)]"),
    ],
)
def test_values_read_well(value, text):
    assert format_value(value) == text


def test_format_number_and_flatten():
    for x in (3.14159265, 0.00271828, 1234.5678, 6.02214e23):
        assert abs(float(format_number(x)) - x) <= 5e-4 * abs(x)
    nested = {"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": "x"}
    assert flatten(nested) == [("a.b", 1), ("a.c.d", [1, 2]), ("e", {}), ("f", "x")]
