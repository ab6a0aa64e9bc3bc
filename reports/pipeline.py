"""The end-to-end job: theory, toy models, the embedded LLM, then one PDF report.

Each stage writes its own run folder under the output folder; a stage whose run folder already
holds metrics.json is skipped, so an interrupted `sae-hedging run` resumes where it stopped.
The report is rebuilt from the run folders alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from theory.derive import derive
from theory.features import SCENARIOS, scenario
from theory.predictions import catalogue
from theory.sae import SAESpec
from toymodels.runs import Run

PAPER_L1 = (1e-3, 2e-2, 1e-1)


@dataclass(frozen=True)
class Stage:
    """One step of the job: a run folder name and the function that fills it."""

    name: str
    build: Callable[[Path], None]


def theory_stage(folder: Path) -> None:
    """Exact optima of width-1 and width-2 SAEs on the paper's four two-feature scenarios, and the
    catalogue of named closed forms."""
    config = {
        "scenarios": list(SCENARIOS),
        "l1": list(PAPER_L1),
        "widths": [1, 2],
        "p_parent": 0.25,
    }
    run = Run(folder, config, kind="theory")
    rows = []
    for name in SCENARIOS:
        model = scenario(name)
        for l1 in PAPER_L1:
            # width 2 (absorption) only at the middle L1: its region search takes seconds
            for width in (1, 2) if l1 == 2e-2 else (1,):
                record = derive(model, SAESpec(width, l1))
                for latent, (enc, dec) in enumerate(
                    zip(record["encoder"], record["decoder"], strict=True)
                ):
                    rows.append(
                        {
                            "scenario": name,
                            "l1": l1,
                            "width": width,
                            "latent": latent,
                            "decoder_parent": dec[0],
                            "decoder_child": dec[1],
                            "encoder_parent": enc[0],
                            "encoder_child": enc[1],
                            "fires_on": " ".join(record["fires_on"][latent]) or "-",
                            "expected_loss": record["expected_loss"],
                        }
                    )
    run.write_table("theory_optima", pd.DataFrame(rows))
    predictions = catalogue()
    defaults = {
        "p": 0.25,
        "a": 0.2,
        "b": 0.1,
        "lambda": 0.02,
        "P_10": 0.2,
        "P_11": 0.05,
        "P_01": 0.075,
    }
    run.write_table(
        "predictions",
        pd.DataFrame(
            [
                {
                    "name": p.name,
                    "description": p.description,
                    "value_at_correlated_defaults": float(
                        p(*(defaults[str(s)] for s in p.symbols))
                    ),
                }
                for p in predictions
            ]
        ),
    )
    run.write_metrics(
        {
            "formulas": {p.name: p.latex for p in predictions},
            "hedging_child_component_width1": {
                name: float(
                    pd.DataFrame(rows)
                    .query("scenario == @name and width == 1 and l1 == 0.02")["decoder_child"]
                    .iloc[0]
                )
                for name in SCENARIOS
            },
        }
    )


def command_stage(name: str, *argv: str) -> Stage:
    """A stage that runs one `sae-hedging` command with `--out` set to its run folder."""

    def build(folder: Path) -> None:
        from reports.cli import main

        status = main([*argv, "--out", str(folder)])
        if status != 0:
            raise ValueError(f"stage {name} failed: sae-hedging {' '.join(argv)} exited {status}")

    return Stage(name, build)


def _argv(template: str, **values: object) -> list[str]:
    """Split a command template into words, then fill each word (values may contain spaces)."""
    return [word.format(**values) for word in template.split()]


def demo_stages(out: Path, model: str, layer: int, tokens: int, with_llm: bool) -> list[Stage]:
    """The default job: theory, the four toy experiments and, with an LLM, extraction, one SAE
    trained and evaluated, and the hedging protocol across widths on real activations.
    Small batches give SAEs on a CPU-sized cache a few hundred steps."""
    stages = [
        Stage("theory", theory_stage),
        command_stage("toy-scenarios", *_argv("toy scenarios --restarts 8")),
        command_stage("toy-hedging-width", *_argv("toy hedging-width")),
        command_stage("toy-absorption", *_argv("toy absorption")),
        command_stage("toy-matryoshka", *_argv("toy matryoshka")),
    ]
    if not with_llm:
        return stages
    paths = {"cache": out / "llm-activations", "sae": out / "llm-train" / "sae"}
    return stages + [
        command_stage(
            "llm-activations",
            *_argv(
                "llm extract --model {model} --layer {layer} --tokens {tokens}",
                model=model,
                layer=layer,
                tokens=tokens,
            ),
        ),
        command_stage(
            "llm-train",
            *_argv(
                "llm train --cache {cache} --architecture topk --width 1024 --k 32 "
                "--tokens {tokens} --batch-size 512",
                tokens=2 * tokens,
                **paths,
            ),
        ),
        command_stage(
            "llm-eval", *_argv("llm eval --sae {sae} --cache {cache} --batches 2", **paths)
        ),
        command_stage(
            "llm-hedging",
            *_argv(
                "llm hedging --cache {cache} --widths 128,256,512 --n-new 32 --tokens {tokens} "
                "--batch-size 512",
                tokens=tokens // 2,
                **paths,
            ),
        ),
    ]


def run_pipeline(out: Path, stages: list[Stage], title: str) -> Path:
    """Run the stages that have not finished yet, then rebuild the report from every run."""
    from reports.pdf import build_report

    out.mkdir(parents=True, exist_ok=True)
    folders = []
    for stage in stages:
        folder = out / stage.name
        if (folder / "metrics.json").is_file():
            print(f"[run] {stage.name}: already done ({folder})")
        else:
            print(f"[run] {stage.name} ...", flush=True)
            stage.build(folder)
        folders.append(folder)
    return build_report(folders, out / "report.pdf", title=title)
