"""The end-to-end job's mechanics: stages resume, failures are named, the report is rebuilt."""

from __future__ import annotations

from pathlib import Path

import pytest

from reports.cli import main
from reports.pipeline import Stage, command_stage, demo_stages, run_pipeline
from toymodels.runs import Run


def _stage(name: str, calls: list[str]) -> Stage:
    def build(folder: Path) -> None:
        calls.append(name)
        Run(folder, {"stage": name}, kind="test").write_metrics({"value": len(calls)})

    return Stage(name, build)


def test_finished_stages_are_skipped_and_the_report_is_rebuilt(tmp_path):
    calls: list[str] = []
    stages = [_stage("first", calls), _stage("second", calls)]
    pdf = run_pipeline(tmp_path, stages, title="t")
    assert pdf.read_bytes().startswith(b"%PDF") and calls == ["first", "second"]
    # an interrupted job: the second stage never finished
    (tmp_path / "second" / "metrics.json").unlink()
    run_pipeline(tmp_path, stages, title="t")
    assert calls == ["first", "second", "second"]


def test_a_failing_command_stage_names_itself(tmp_path):
    stage = command_stage("broken", "derive", "--scenario", "sideways")
    with pytest.raises(ValueError, match="stage broken failed: sae-hedging derive"):
        stage.build(tmp_path / "broken")


def test_demo_stages_cover_every_floor(tmp_path):
    out = tmp_path / "with space"
    stages = demo_stages(out, "gemma3-270m", 6, 1000, with_llm=True)
    assert [s.name for s in stages][-4:] == [
        "llm-activations",
        "llm-train",
        "llm-eval",
        "llm-hedging",
    ]
    assert [s.name for s in demo_stages(out, "m", 6, 1000, with_llm=False)][-1] == "toy-matryoshka"


def test_run_refuses_bad_sizes(capsys):
    assert main(["run", "--tokens", "0"]) == 2
    assert "--tokens" in capsys.readouterr().err
