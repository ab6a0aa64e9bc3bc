"""PDF reports rebuilt from run folders, without retraining anything.

A report is a title page, then for each run: its configuration (with a notice when a 4-bit
quantized model was used), its metrics, every table under tables/ followed by the figures the
plot registry (reports/figures.py) draws for it, the PNGs the run saved under figures/, its
formulas typeset with matplotlib mathtext, and its provenance from manifest.json. Only matplotlib's
PdfPages is used. The creation date comes from the runs' manifests, so rebuilding the same runs
gives the same bytes.
"""

from __future__ import annotations

import io
import json
import shlex
import textwrap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from itertools import chain, zip_longest
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.mathtext import MathTextParser
from matplotlib.patches import Rectangle

from reports.figures import image_figure, plots_for
from toymodels.runs import atomic_write_bytes, read_run

DEFAULT_TITLE = "Feature hedging and absorption in sparse autoencoders"
PAGE_SIZE = (8.27, 11.69)  # A4 portrait, inches
MARGIN = 0.07  # figure fraction left and right
TOP = 0.955  # figure fraction of the first heading's baseline
BOTTOM = 0.06  # figure fraction kept free for the footer
MONO = "DejaVu Sans Mono"
MONO_ADVANCE = 0.602  # advance width of one DejaVu Sans Mono character, in font sizes
SANS_ADVANCE = 0.6  # a generous mean advance of DejaVu Sans (bold) characters, for wrapping
TABLE_FONT = 8.0
MIN_TABLE_FONT = 6.0
COLUMN_GAP = 2  # characters between table columns
MAX_CELL_CHARS = 32  # a data-table cell is cut (with an ellipsis) beyond this
MAX_TABLE_ROWS = 40  # data-table rows shown; the rest are counted in a note
MAX_LIST_ITEMS = 12  # a list value shows this many items and a count of the rest
MAX_KEY_CHARS = 40
MAX_RAW_FORMULA_CHARS = 600  # LaTeX source shown when a formula cannot be typeset
FORMULA_FONT = 16.0
MIN_FORMULA_FONT = 7.0
MAX_TITLE_PAGE_RUNS = 20
NOT_SETTINGS = ("packages", "files", "data_hashes", "command")  # manifest keys that aren't settings

_MATHTEXT = MathTextParser("path")


@dataclass(frozen=True)
class RunRecord:
    """Everything a report shows about one run folder."""

    folder: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    tables: dict[str, pd.DataFrame]
    formulas: dict[str, str]
    images: list[Path]

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", "unknown"))

    @property
    def created(self) -> datetime | None:
        try:
            created = datetime.fromisoformat(str(self.manifest["created"]))
        except (KeyError, ValueError):
            return None
        return created if created.tzinfo else created.replace(tzinfo=timezone.utc)


def load_run_record(folder: str | Path) -> RunRecord:
    """Read a run folder (ValueError naming it if it is not one or cannot be read)."""
    folder = Path(folder)
    try:
        record = read_run(folder)
    except ValueError as err:
        if str(folder) in str(err):
            raise
        raise ValueError(f"cannot read run folder {folder}: {err}") from err
    metrics = dict(record["metrics"] or {})
    formulas: dict[str, str] = {}
    if _is_formula_map(metrics.get("formulas")):
        formulas.update(metrics.pop("formulas"))
    formulas_file = folder / "formulas.json"
    if formulas_file.is_file():
        try:
            from_file = json.loads(formulas_file.read_text())
        except ValueError as err:
            raise ValueError(f"{formulas_file} is not valid JSON: {err}") from err
        if not _is_formula_map(from_file):
            raise ValueError(f"{formulas_file} must map formula names to LaTeX strings")
        formulas.update(from_file)
    return RunRecord(
        folder=folder,
        config=dict(record["config"] or {}),
        metrics=metrics,
        manifest=dict(record["manifest"]),
        tables=record["tables"],
        formulas=formulas,
        images=sorted((folder / "figures").glob("*.png")),
    )


def _is_formula_map(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values())


def build_report(
    run_folders: Iterable[str | Path], out_pdf: str | Path, title: str | None = None
) -> Path:
    """Write a PDF report of the given run folders to `out_pdf` (atomically) and return its path."""
    out_pdf = Path(out_pdf)
    if out_pdf.is_dir():
        raise ValueError(f"the report path {out_pdf} is a folder; give a file name")
    if not out_pdf.parent.is_dir():
        raise ValueError(f"the report's folder {out_pdf.parent} does not exist; create it first")
    runs = [load_run_record(folder) for folder in run_folders]
    if not runs:
        raise ValueError("a report needs at least one run folder; none was given")
    title = title or DEFAULT_TITLE
    dates = [run.created for run in runs if run.created is not None]
    date = max(dates) if dates else datetime.now(timezone.utc)
    info = {
        "Title": title,
        "Subject": "Report rebuilt from run folders: " + ", ".join(str(r.folder) for r in runs),
        "Creator": f"sae-hedging {_toolkit_version()} reports",
        "CreationDate": date,
    }
    pages = chain(
        [_title_page(title, date, runs)],
        *(_run_pages(number, run) for number, run in enumerate(runs, start=1)),
    )
    buffer = io.BytesIO()
    with PdfPages(buffer, metadata=info) as pdf:
        for page_number, page in enumerate(pages, start=1):
            _footer(page, title, page_number)
            pdf.savefig(page)
    atomic_write_bytes(out_pdf, buffer.getvalue())
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


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys: {"a": {"b": 1}} -> [("a.b", 1)]."""
    pairs: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            pairs.extend(flatten(value, name))
        else:
            pairs.append((name, value))
    return pairs


def model_quantization(manifest: Mapping[str, Any]) -> str | None:
    """The quantization of the model a run used, as the run recorded it (the jobs write it once,
    from llm.models.model_provenance); None for full-precision models and runs without one."""
    return manifest.get("model_quantization")


# ---------------------------------------------------------------- page layout


class _TextPage:
    """An A4 page written top to bottom; `y` is the figure fraction of the next line."""

    def __init__(self, heading: str, section: str = "", subheading: str = "") -> None:
        self.figure = Figure(figsize=PAGE_SIZE)
        self.y = TOP
        if heading:
            self.write(heading, size=15, weight="bold")
        if subheading:
            self.write(subheading, size=8.5, color="0.35")
        if section:
            self.skip(4)
            self.write(section, size=12.5, weight="bold", color="#1f4e79")
        self.skip(6)

    def write(self, text: str, size: float = 10, **style: Any) -> None:
        """One paragraph, wrapped between the margins."""
        indent = len(text) - len(text.lstrip(" "))
        across = int(PAGE_SIZE[0] * 72 * (1 - 2 * MARGIN) / (size * SANS_ADVANCE))
        for line in textwrap.wrap(text, across, subsequent_indent=" " * indent) or [""]:
            self.figure.text(
                MARGIN, self.y, line, fontsize=size, va="top", parse_math=False, **style
            )
            self.skip(size * 1.45)

    def skip(self, points: float) -> None:
        self.y -= points / 72 / PAGE_SIZE[1]

    @property
    def room(self) -> float:
        """Points left above the footer."""
        return (self.y - BOTTOM) * PAGE_SIZE[1] * 72


def _footer(page: Figure, title: str, number: int) -> None:
    page.text(MARGIN, 0.025, title, fontsize=7, color="0.5", parse_math=False)
    page.text(1 - MARGIN, 0.025, str(number), fontsize=7, color="0.5", ha="right")


def _chars_across(font: float) -> int:
    """How many monospaced characters fit between the margins."""
    return int(PAGE_SIZE[0] * 72 * (1 - 2 * MARGIN) / (font * MONO_ADVANCE))


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True)
class _Table:
    header: list[str]
    rows: list[list[str]]
    widths: list[int]  # characters per column
    right_aligned: list[bool]
    font: float


def _draw_rows(page: _TextPage, table: _Table, rows: list[list[str]]) -> None:
    fig = page.figure
    row_height = table.font * 1.75 / 72 / PAGE_SIZE[1]
    char = table.font * MONO_ADVANCE / 72 / PAGE_SIZE[0]
    starts = np.cumsum([0] + [w + COLUMN_GAP for w in table.widths[:-1]])
    span = (sum(table.widths) + COLUMN_GAP * (len(table.widths) - 1)) * char
    for index, cells in enumerate([table.header, *rows]):
        top = page.y
        if index % 2 == 0 and index > 0:
            fig.add_artist(
                Rectangle(
                    (MARGIN - 0.5 * char, top - row_height),
                    span + char,
                    row_height,
                    transform=fig.transFigure,
                    color="0.94",
                    zorder=0,
                )
            )
        columns = zip(cells, starts, table.widths, table.right_aligned, strict=True)
        for cell, start, width, right in columns:
            x = MARGIN + (start + width if right else start) * char
            fig.text(
                x,
                top - row_height / 2,
                cell,
                fontsize=table.font,
                family=MONO,
                ha="right" if right else "left",
                va="center_baseline",
                parse_math=False,
                weight="bold" if index == 0 else "normal",
            )
        page.y -= row_height
        if index == 0:
            fig.add_artist(
                Rectangle(
                    (MARGIN - 0.5 * char, page.y),
                    span + char,
                    0.0006,
                    transform=fig.transFigure,
                    color="0.3",
                )
            )


def _table_pages(
    heading: str,
    section: str,
    subheading: str,
    table: _Table,
    preamble: Iterable[tuple[str, dict[str, Any]]] = (),
    note: str = "",
) -> Iterator[Figure]:
    """One table over as many pages as it needs; `preamble` lines open the first page and
    `note` closes the last."""
    rows, first = table.rows, True
    while first or rows:
        page = _TextPage(heading, section if first else f"{section} (continued)", subheading)
        if first:
            for text, style in preamble:
                page.write(text, **style)
            page.skip(4)
        if not table.rows:
            page.write("(nothing recorded)", size=9, color="0.4")
        else:
            fits = max(1, int(page.room / (table.font * 1.75)) - 2)  # header row + note
            _draw_rows(page, table, rows[:fits])
            rows = rows[fits:]
        if not rows and note:
            page.skip(6)
            page.write(note, size=8, color="0.35", style="italic")
        first = False
        yield page.figure


def _key_value_table(pairs: Iterable[tuple[str, Any]], header: tuple[str, str]) -> _Table:
    """Two columns, keys and values wrapped (never cut) so provenance stays complete."""
    pairs = [(key, format_value(value)) for key, value in pairs]
    key_width = min(MAX_KEY_CHARS, max([len(header[0])] + [len(k) for k, _ in pairs]))
    value_width = _chars_across(TABLE_FONT) - key_width - COLUMN_GAP
    rows = []
    for key, value in pairs:
        keys = textwrap.wrap(key, key_width, break_on_hyphens=False) or [""]
        values = textwrap.wrap(value, value_width, break_on_hyphens=False) or [""]
        rows.extend([k, v] for k, v in zip_longest(keys, values, fillvalue=""))
    return _Table(list(header), rows, [key_width, value_width], [False, False], TABLE_FONT)


def _data_table(frame: pd.DataFrame) -> tuple[_Table, str]:
    """A tidy table's first rows, cells cut to fit; the text says what was left out."""
    shown = frame.head(MAX_TABLE_ROWS)
    header = [str(c) for c in frame.columns]
    columns = [
        [_cut("" if pd.isna(v) else format_value(v), MAX_CELL_CHARS) for v in shown[c]]
        for c in frame.columns
    ]
    widths = [
        min(MAX_CELL_CHARS, max([len(h)] + [len(v) for v in cells]))
        for h, cells in zip(header, columns, strict=True)
    ]
    header = [_cut(h, w) for h, w in zip(header, widths, strict=True)]
    right = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    notes = []
    if len(frame) > len(shown):
        notes.append(
            f"Showing {len(shown)} of {len(frame)} rows; {len(frame) - len(shown)} rows left out."
        )
    kept = len(widths)
    while kept > 1 and sum(widths[:kept]) + COLUMN_GAP * (kept - 1) > _chars_across(MIN_TABLE_FONT):
        kept -= 1
    if kept < len(widths):
        notes.append(f"{len(widths) - kept} columns left out: {', '.join(header[kept:])}.")
    span = sum(widths[:kept]) + COLUMN_GAP * (kept - 1)
    font = (
        TABLE_FONT
        if span <= _chars_across(TABLE_FONT)
        else max(MIN_TABLE_FONT, TABLE_FONT * _chars_across(TABLE_FONT) / span)
    )
    rows = [list(cells[:kept]) for cells in zip(*columns, strict=True)]
    table = _Table(header[:kept], rows, widths[:kept], right[:kept], font)
    return table, " ".join(notes)


# ---------------------------------------------------------------- the pages


def _title_page(title: str, date: datetime, runs: list[RunRecord]) -> Figure:
    page = _TextPage("")
    page.y = 0.86  # the title sits lower than a heading
    page.write(title, size=22, weight="bold")
    page.skip(8)
    page.write(
        f"Date: {date.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC (latest run creation time)",
        size=10.5,
    )
    page.write(
        f"Rebuilt from {len(runs)} run folder{'s' * (len(runs) != 1)} by sae-hedging "
        f"{_toolkit_version()}; nothing was retrained.",
        size=10.5,
    )
    page.skip(14)
    page.write("Runs", size=13, weight="bold", color="#1f4e79")
    for number, run in enumerate(runs[:MAX_TITLE_PAGE_RUNS], start=1):
        page.write(f"{number}. {run.folder.name}  ({run.kind})", size=10.5, weight="bold")
        created = f"{run.created:%Y-%m-%d %H:%M}" if run.created else "creation time unknown"
        details = (
            f"{run.folder}  ·  {created}  ·  {len(run.tables)} tables, "
            f"{len(run.images)} images, {len(run.formulas)} formulas"
        )
        if model_quantization(run.manifest):
            details += f"  ·  quantized model: {model_quantization(run.manifest)}"
        page.write("     " + details, size=8.5, color="0.3")
    if len(runs) > MAX_TITLE_PAGE_RUNS:
        page.write(f"... and {len(runs) - MAX_TITLE_PAGE_RUNS} more runs", size=10)
    return page.figure


def _run_pages(number: int, run: RunRecord) -> Iterator[Figure]:
    heading = f"Run {number}: {run.folder.name}"
    subheading = f"{run.folder}  ·  kind {run.kind}"
    yield from _config_pages(heading, subheading, run)
    yield from _table_pages(
        heading, "Metrics", subheading, _key_value_table(flatten(run.metrics), ("metric", "value"))
    )
    for name, frame in run.tables.items():
        table, note = _data_table(frame)
        section = f"Table {name}  (tables/{name}.csv, {len(frame)} rows x {frame.shape[1]} columns)"
        yield from _table_pages(heading, section, subheading, table, note=note)
        for figure in plots_for(run.kind, name, frame):
            figure.suptitle(
                f"{heading}  ·  table {name}", fontsize=9, color="0.35", x=0.07, ha="left"
            )
            yield figure
    for image in run.images:
        yield image_figure(image, f"{heading}  ·  {image.relative_to(run.folder)}")
    if run.formulas:
        yield from _formula_pages(heading, subheading, run.formulas)
    yield from _table_pages(
        heading,
        "Provenance (manifest.json)",
        subheading,
        _key_value_table(_provenance(run.manifest), ("item", "value")),
    )


def _config_pages(heading: str, subheading: str, run: RunRecord) -> Iterator[Figure]:
    created = f"{run.created:%Y-%m-%d %H:%M:%S %Z}" if run.created else "unknown"
    preamble: list[tuple[str, dict[str, Any]]] = [
        (f"Kind: {run.kind}", {}),
        (f"Created: {created}", {}),
        (f"Git commit: {run.manifest.get('git_commit') or 'unknown'}", {}),
    ]
    quantization = model_quantization(run.manifest)
    if quantization:
        preamble.append(
            (
                f"This run used a quantized model ({quantization}): its numbers come from a "
                "quantized checkpoint, not full-precision weights.",
                {"size": 10, "weight": "bold", "color": "#b00020"},
            )
        )
    yield from _table_pages(
        heading,
        "Configuration",
        subheading,
        _key_value_table(flatten(run.config), ("setting", "value")),
        preamble=preamble,
    )


def _provenance(manifest: Mapping[str, Any]) -> list[tuple[str, Any]]:
    command = manifest.get("command")
    first = [
        ("kind", manifest.get("kind")),
        ("created", manifest.get("created")),
        ("git commit", manifest.get("git_commit")),
        ("command", shlex.join(map(str, command)) if isinstance(command, list) else command),
        ("python", manifest.get("python")),
        ("platform", manifest.get("platform")),
    ]
    sections = ("packages", "seeds", "data_hashes", "files")
    pairs = [(k, v) for k, v in first if v is not None]
    for section in sections:
        entries = manifest.get(section) or {}
        if section == "packages":
            entries = {k: v or "not installed" for k, v in entries.items()}
        label = section.replace("_", " ")
        pairs.extend(flatten(entries, label) if entries else [(label, "none recorded")])
    known = {"kind", "created", "git_commit", "command", "python", "platform", *sections}
    pairs.extend(flatten({k: v for k, v in manifest.items() if k not in known}))
    return pairs


def _formula_pages(heading: str, subheading: str, formulas: Mapping[str, str]) -> Iterator[Figure]:
    """Each formula typeset with mathtext; one mathtext cannot parse (or too wide for the page
    even at the smallest size) is shown as its LaTeX source instead."""
    width = PAGE_SIZE[0] * 72 * (1 - 2 * MARGIN)
    page = _TextPage(heading, "Formulas", subheading)
    for name, latex in formulas.items():
        source = latex.strip()
        math = source if len(source) > 1 and source[0] == source[-1] == "$" else f"${source}$"
        try:
            parsed = _MATHTEXT.parse(math, dpi=72, prop=FontProperties(size=FORMULA_FONT))
            scale = min(1.0, width / max(parsed.width, 1e-9))
            height = parsed.height * scale
        except ValueError:
            scale, height = 0.0, 0.0
        typeset = FORMULA_FONT * scale >= MIN_FORMULA_FONT
        shown = (
            source
            if len(source) <= MAX_RAW_FORMULA_CHARS
            else (source[:MAX_RAW_FORMULA_CHARS] + " ...")
        )
        needed = 30 + (height + 14 if typeset else 14 + 13 * len(shown) / _chars_across(9))
        if page.room < needed and page.y < TOP - 0.1:
            yield page.figure
            page = _TextPage(heading, "Formulas (continued)", subheading)
        page.skip(6)
        page.write(name, size=9.5, color="0.35")
        if typeset:
            page.skip(6)
            page.figure.text(MARGIN + 0.02, page.y, math, fontsize=FORMULA_FONT * scale, va="top")
            page.skip(height + 8)
        else:
            reason = "too wide to typeset" if scale else "mathtext cannot parse this"
            page.write(f"({reason}; LaTeX source shown)", size=8, color="#b00020")
            page.write(shown, size=9, family=MONO)
    yield page.figure
