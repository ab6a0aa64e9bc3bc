"""The PDF report: the questions the toolkit answers and the verdict of every claim, typeset
with Typst from run folders alone (nothing is retrained).

Page 1 holds the title, the questions and the verdict table (claim, verdict, key numbers with
their uncertainty). Then one section per claim (reports.claims): statement, theory's formula
(printed from its sympy expression into Typst math), a figure (theory as lines, measurements as
points with intervals), a short table and the run tables it read. An appendix lists every run's
config and manifest. Figures are SVG; Typst uses only its embedded fonts and the date comes from
the runs' manifests, so the same runs give the same bytes.
"""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import typst

from reports.claims import (
    CONFIDENCE,
    Assessment,
    Claim,
    RunRecord,
    Verdict,
    assess_all,
    fmt,
    load_run_record,
)
from reports.figures import draw_claim_figure, figure_svg
from reports.typst_source import content, math, string
from toymodels.runs import atomic_write_bytes, flatten

DEFAULT_TITLE = "Feature hedging and absorption in sparse autoencoders"
MAX_LIST_ITEMS = 12  # a list value shows this many items and a count of the rest
VERDICT_FILLS = {
    Verdict.HELD: "#d8f0d8",
    Verdict.FAILED: "#f6d0d0",
    Verdict.INCONCLUSIVE: "#fbeec4",
    Verdict.NOT_RUN: "#e4e4e4",
}
NOT_SETTINGS = ("packages", "files", "data_hashes", "command")  # manifest keys shown apart


def build_report(
    run_folders: Iterable[str | Path], out_pdf: str | Path, title: str | None = None
) -> Path:
    """Write the report of the given run folders to `out_pdf` (atomically) and return its path.
    A folder that is missing or not a readable run gives a one-line ValueError naming it."""
    out_pdf = Path(out_pdf)
    if out_pdf.is_dir():
        raise ValueError(f"the report path {out_pdf} is a folder; give a file name")
    if not out_pdf.parent.is_dir():
        raise ValueError(f"the report's folder {out_pdf.parent} does not exist; create it first")
    records = [load_run_record(folder) for folder in run_folders]
    if not records:
        raise ValueError("a report needs at least one run folder; none was given")
    title = title or DEFAULT_TITLE
    dates = [r.created for r in records if r.created is not None]
    date = max(dates) if dates else datetime.now(timezone.utc)
    assessments = assess_all(records)
    with tempfile.TemporaryDirectory(prefix="sae-hedging-report-") as tmp:
        folder = Path(tmp)
        figures = {}
        for claim, assessment in assessments:
            figure = draw_claim_figure(claim, assessment)
            if figure is not None:
                figures[claim.name] = f"{claim.name}.svg"
                (folder / figures[claim.name]).write_bytes(figure_svg(figure))
        source = document(title, date, records, assessments, figures)
        (folder / "report.typ").write_text(source, encoding="utf-8")
        pdf = typst.compile(str(folder / "report.typ"), root=str(folder), ignore_system_fonts=True)
    atomic_write_bytes(out_pdf, pdf)
    return out_pdf


def _toolkit_version() -> str:
    try:
        return metadata.version("sae-hedging")
    except metadata.PackageNotFoundError:
        return "(not installed)"


# ---------------------------------------------------------------- values as text


def format_value(value: Any) -> str:
    """A config, metric or table value as short readable text."""
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        return format_number(float(value))
    if isinstance(value, (list, tuple)):
        shown = ", ".join(format_value(v) for v in value[:MAX_LIST_ITEMS])
        rest = len(value) - MAX_LIST_ITEMS
        return f"[{shown}{f', ... ({rest} more)' if rest > 0 else ''}]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def format_number(x: float) -> str:
    """Four significant digits; scientific notation only for very small or large magnitudes."""
    if not np.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if x.is_integer() and abs(x) < 1e12:
        return str(int(x))
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.4g}"
    return f"{x:.3e}"


def model_quantization(manifest: Mapping[str, Any]) -> str | None:
    """The quantization of the model a run used, as the run recorded it (the jobs write it once,
    from llm.models.model_provenance); None for full-precision models and runs without one."""
    return manifest.get("model_quantization")


def _cell(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, Real) and not isinstance(value, Integral):
        return fmt(float(value), 4)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


# ---------------------------------------------------------------- the document


def document(
    title: str,
    date: datetime,
    records: Sequence[RunRecord],
    assessments: Sequence[tuple[Claim, Assessment]],
    figures: Mapping[str, str],
) -> str:
    """The report's Typst source; `figures` maps claim names to image files beside it."""
    when = date.astimezone(timezone.utc)
    parts = [
        _preamble(title, when),
        _first_page(title, when, records, assessments),
        *(
            _claim_section(number, claim, assessment, figures.get(claim.name))
            for number, (claim, assessment) in enumerate(assessments, start=1)
        ),
        _appendix(records),
    ]
    return "\n".join(parts)


def _preamble(title: str, when: datetime) -> str:
    return f"""
#set document(title: {string(title)}, date: datetime(year: {when.year}, month: {when.month},
  day: {when.day}, hour: {when.hour}, minute: {when.minute}, second: {when.second}))
#set page(paper: "a4", margin: (x: 2cm, top: 1.8cm, bottom: 2cm),
  footer: context [#set text(7.5pt, fill: luma(110)); {content(title)} #h(1fr)
  #counter(page).display()])
#set text(size: 10pt, hyphenate: false)
#set par(justify: false)
#show heading.where(level: 1): set text(size: 13pt, fill: rgb("#1f4e79"))
#show heading.where(level: 2): set text(size: 11pt, fill: rgb("#1f4e79"))
#show table.cell.where(y: 0): set text(weight: "bold")
"""


def _verdict_cell(verdict: Verdict) -> str:
    return f"table.cell(fill: rgb({string(VERDICT_FILLS[verdict])}))[{content(verdict.value)}]"


def _first_page(
    title: str,
    when: datetime,
    records: Sequence[RunRecord],
    assessments: Sequence[tuple[Claim, Assessment]],
) -> str:
    questions = "\n".join(
        f"+ {content(claim.question)} #text(fill: luma(100))[(claim {n})]"
        for n, (claim, _) in enumerate(assessments, start=1)
    )
    rows = []
    for number, (claim, assessment) in enumerate(assessments, start=1):
        rows.append(
            f"  {string(str(number))}, {string(claim.title)}, {_verdict_cell(assessment.verdict)},"
            f" text(size: 7.5pt, {string(assessment.numbers)}),"
        )
    quantized = [
        f"{r.folder.name} ({model_quantization(r.manifest)})"
        for r in records
        if model_quantization(r.manifest)
    ]
    notice = (
        "Quantized model used by: " + ", ".join(quantized) + "; its numbers come from a "
        "quantized checkpoint, not full-precision weights."
        if quantized
        else ""
    )
    provenance = (
        f"{when:%Y-%m-%d %H:%M} UTC (latest run) · rebuilt from {len(records)} run folders by "
        f"sae-hedging {_toolkit_version()}; nothing was retrained."
    )
    legend = (
        "held: the measurement agrees with the prediction within the stated tolerance or "
        "interval; failed: it contradicts it; inconclusive: the interval includes no effect, "
        "or only fits that missed theory's optimum disagree; not run: a run or table it needs "
        "is absent."
    )
    return f"""
#text(size: 18pt, weight: "bold")[{content(title)}]

#text(size: 9pt, fill: luma(80))[{content(provenance)}]

#text(fill: rgb("#b00020"))[{content(notice)}]

== Questions
#text(size: 9pt)[
{questions}
]

== Verdicts
#text(size: 8.5pt)[#table(
  columns: (auto, 27%, auto, 1fr),
  inset: 4pt,
  stroke: 0.4pt + luma(170),
  table.header([\\#], [Claim], [Verdict], [Key numbers ({CONFIDENCE:.0%} intervals)]),
{chr(10).join(rows)}
)]
#text(size: 7.5pt, fill: luma(90))[{content(legend)}]
#pagebreak()
"""


def _table(frame: pd.DataFrame, size: str = "8pt") -> str:
    if frame.empty:
        return ""
    header = ", ".join(string(str(c).replace("_", " ")) for c in frame.columns)
    cells = ",\n  ".join(
        ", ".join(string(_cell(v)) for v in row) for row in frame.itertuples(index=False)
    )
    return f"""#text(size: {size})[#table(
  columns: {len(frame.columns)},
  inset: 3pt,
  stroke: 0.4pt + luma(170),
  table.header({header}),
  {cells},
)]"""


def _claim_section(number: int, claim: Claim, assessment: Assessment, figure: str | None) -> str:
    lines = [
        f"= {number}. {content(claim.title)}",
        f"#box(fill: rgb({string(VERDICT_FILLS[assessment.verdict])}), inset: 4pt, radius: 2pt)"
        f"[*Verdict: {content(assessment.verdict.value)}*] "
        f"#text(size: 9pt)[{content(assessment.numbers)}]",
        "",
        f"*Claim.* {content(claim.statement)} #text(fill: luma(90))[({content(claim.paper)})]",
        "",
        f"*Question.* {content(claim.question)}",
        "",
        f"*Prediction.* {content(claim.prediction)}",
    ]
    if claim.formula is not None:
        formula = claim.formula
        lines += [
            f"$ {formula.lhs} = {math(formula.expr)} $",
            f"#text(size: 8.5pt, fill: luma(80))[{content(formula.meaning)} "
            f"(theory: {content(formula.name)}; typeset from its sympy expression)]",
        ]
    if assessment.detail:
        lines += ["", content(assessment.detail)]
    if figure is not None:
        lines += [
            f"#figure(image({string(figure)}, width: 100%), caption: [{content(claim.title)}: "
            "theory as lines, measurements as points (bars: their spread or interval)])"
        ]
    if not assessment.table.empty:
        lines += ["", _table(assessment.table)]
    if assessment.sources:
        lines += [
            "",
            "#text(size: 7.5pt, fill: luma(90))[Read from: "
            + ", ".join(f"#raw({string(s)})" for s in assessment.sources)
            + "]",
        ]
    return "\n".join(lines) + "\n"


def _appendix(records: Sequence[RunRecord]) -> str:
    blocks = ["#pagebreak()", "= Appendix: runs, configs and manifests"]
    for record in records:
        manifest = record.manifest
        command = manifest.get("command")
        facts = [
            ("folder", str(record.folder)),
            ("kind", record.kind),
            ("created", manifest.get("created")),
            ("git commit", manifest.get("git_commit") or "unknown"),
            ("command", shlex.join(map(str, command)) if isinstance(command, list) else command),
            ("python", manifest.get("python")),
            ("model quantization", model_quantization(manifest)),
            (
                "tables",
                ", ".join(f"{n} ({len(t)}x{t.shape[1]})" for n, t in record.tables.items())
                or "none",
            ),
        ]
        packages = manifest.get("packages") or {}
        others = {
            k: v
            for k, v in manifest.items()
            if k not in {"kind", "created", "git_commit", "python", "model_quantization"}
            and k not in NOT_SETTINGS
        }
        hashes = {k: str(v)[:16] + "…" for k, v in (manifest.get("data_hashes") or {}).items()}
        settings = [
            ("config", "; ".join(f"{k} = {format_value(v)}" for k, v in flatten(record.config))),
            ("manifest", "; ".join(f"{k} = {format_value(v)}" for k, v in flatten(others))),
            ("packages", ", ".join(f"{k} {v or 'not installed'}" for k, v in packages.items())),
            ("data hashes", ", ".join(f"{k} {v}" for k, v in hashes.items()) or "none"),
            ("files", f"{len(manifest.get('files') or {})} hashed in manifest.json"),
        ]
        rows = ",\n  ".join(
            f"{string(k)}, {string(format_value(v))}"
            for k, v in [*facts, *settings]
            if v is not None
        )
        blocks.append(
            f"""== {content(record.folder.name)} ({content(record.kind)})
#text(size: 7pt)[#table(columns: (auto, 1fr), inset: 2.5pt, stroke: 0.3pt + luma(190),
  {rows},
)]"""
        )
    return "\n".join(blocks) + "\n"
