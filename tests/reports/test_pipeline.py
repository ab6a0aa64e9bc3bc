"""The end-to-end job's mechanics: stages resume, failures are named, the report is rebuilt."""

from __future__ import annotations

from pathlib import Path

import pytest

from reports.cli import main
from reports.pipeline import (
    PipelineConfig,
    Stage,
    StagePlan,
    TheorySummaryConfig,
    demo_stages,
    plan_pipeline,
    run_stages,
    run_theory_summary,
)
from toymodels.runs import Run, read_run


def _stage(name: str, calls: list[str]) -> Stage:
    def job(config: dict, folder: Path) -> Run:
        calls.append(name)
        run = Run(folder, config, kind="test")
        run.write_metrics({"value": len(calls)})
        return run

    return Stage(name, {"stage": name}, job)


def test_finished_stages_are_skipped_and_the_report_is_rebuilt(tmp_path):
    calls: list[str] = []
    stages = [_stage("first", calls), _stage("second", calls)]
    pdf = run_stages(stages, tmp_path, title="t")
    assert pdf.read_bytes().startswith(b"%PDF") and calls == ["first", "second"]
    # an interrupted job: the second stage never finished
    (tmp_path / "second" / "metrics.json").unlink()
    run_stages(stages, tmp_path, title="t")
    assert calls == ["first", "second", "second"]


def test_each_stage_prints_its_progress(tmp_path, capsys):
    calls: list[str] = []
    stages = [_stage("first", calls), _stage("second", calls)]
    plans = [StagePlan("second", "two things", None, 150.0)]
    run_stages(stages[:1], tmp_path, title="t")
    capsys.readouterr()
    run_stages(stages, tmp_path, title="t", plans=plans)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"[run 1/2] first: already done ({tmp_path / 'first'})"
    assert lines[1] == "[run 2/2] second: two things (expected ~2.5 min) ..."
    assert lines[2].startswith("[run 2/2] second: done in ") and "so far" in lines[2]


def test_demo_stages_cover_every_floor_and_chain_by_run_folders(tmp_path):
    out = tmp_path / "with space"
    stages = demo_stages(PipelineConfig(tokens=4000), out)
    names = [s.name for s in stages]
    assert names[-5:] == [
        "llm-activations",
        "llm-train",
        "llm-eval",
        "llm-hedging",
        "llm-absorption",
    ]
    by_name = {s.name: s.config for s in stages}
    # later stages name earlier ones by their run folders, never by paths inside them
    assert by_name["llm-train"].cache == str(out / "llm-activations")
    assert by_name["llm-eval"].sae == str(out / "llm-train")
    assert by_name["llm-train"].train.samples == 8000
    assert by_name["llm-hedging"].train.samples == 2000
    assert by_name["llm-absorption"].cache == str(out / "llm-activations")
    without = demo_stages(PipelineConfig(llm=False), out)
    assert [s.name for s in without][-1] == "toy-matryoshka"


def test_the_pipeline_imports_no_cli_module():
    import ast
    import inspect

    import reports.pipeline

    tree = ast.parse(inspect.getsource(reports.pipeline))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not any(name.endswith(("cli", "commands")) for name in imported), imported


def test_run_refuses_bad_sizes(capsys):
    assert main(["run", "--tokens", "0"]) == 2
    assert "tokens must be a positive integer" in capsys.readouterr().err


def test_the_theory_stage_writes_optima_and_predictions(tmp_path):
    config = TheorySummaryConfig(scenarios=("correlated",), l1_values=(0.02,))
    run = run_theory_summary(config, tmp_path / "theory")
    optima = read_run(run.folder)["tables"]["theory_optima"]
    assert sorted(set(optima.width)) == [1, 2] and set(optima.scenario) == {"correlated"}
    child = read_run(run.folder)["metrics"]["hedging_child_component_width1"]["correlated"]
    assert child == pytest.approx(optima[optima.width == 1].decoder_child.iloc[0]) and child > 0.1
    with pytest.raises(ValueError, match="width2_l1"):
        TheorySummaryConfig(l1_values=(0.1,))


@pytest.mark.parametrize("scale", ["demo", "study", "paper"])
def test_every_scale_builds_its_stages_and_plans_them(tmp_path, scale):
    config = PipelineConfig(scale=scale)
    names = [s.name for s in demo_stages(config, tmp_path)]
    assert names[:5] == ["theory", "toy-scenarios", "toy-hedging-width", "toy-absorption",
                         "toy-matryoshka"]  # fmt: skip
    plans = {p.name: p for p in plan_pipeline(config, tmp_path)}
    extract = plans["llm-activations"]
    if scale == "paper":  # the paper's model, 250M tokens per stage, one hedging run per width
        assert "google/gemma-2-2b layer 12" in extract.work
        assert extract.disk_bytes == 250_278_528 * 2304 * 2  # bf16
        assert [n for n in names if n.startswith("llm-hedging-w")][-1] == "llm-hedging-w65536"
    else:
        tokens = 60_000 if scale == "demo" else 360_000
        assert extract.disk_bytes == tokens * 640 * 4 and extract.cpu_seconds > 0
        # every stage of the CPU scales has an expected time for the progress lines
        assert all(p.cpu_seconds > 0 for p in plans.values()), plans
        assert "absorption on 4,096 words" in plans["llm-absorption"].work or scale == "study"
    study = {s.name: s.config for s in demo_stages(PipelineConfig(scale="study"), tmp_path)}
    assert study["toy-scenarios"].fit.restarts == 32 and study["llm-hedging"].seeds == 3


def test_the_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    assert main(["run", "--scale", "study", "--dry-run", "true", "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "llm-hedging:" in out and "min on this CPU" in out and "cache 0.86 GiB" in out
    assert not (tmp_path / "p").exists()
