"""`sae-hedging report` through the real CLI entry point."""

from __future__ import annotations

from pathlib import Path

import pypdf

from reports.cli import main


def test_report_command_writes_the_pdf(run_folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "toy.pdf"
    assert main(["report", str(run_folder), "--out", str(out), "--title", "From the CLI"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert pypdf.PdfReader(out).metadata.title == "From the CLI"


def test_a_folder_that_is_not_a_run_exits_2_naming_it(run_folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "report.pdf"
    status = main(["report", str(run_folder), str(tmp_path / "no_such_run"), "--out", str(out)])
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("sae-hedging report: error:") and "no_such_run" in error
    assert "\n" not in error
    assert not out.exists()


def test_out_is_required(run_folder: Path, capsys):
    assert main(["report", str(run_folder)]) == 2
    error = capsys.readouterr().err.strip()
    assert "--out" in error and "\n" not in error


def test_the_command_tree_is_built_without_importing_any_job():
    """`derive` and `--help` start in under a second: registering every command imports no
    torch, transformers or job module (each command's config is imported when it runs)."""
    import subprocess
    import sys

    code = (
        "import sys; from reports.cli import build_parser; build_parser(); "
        "heavy = [m for m in ('torch', 'transformers', 'pandas', 'llm.jobs') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
