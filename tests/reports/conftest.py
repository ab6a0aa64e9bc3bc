"""A run folder of a kind no claim reads, written with the real Run writer, for CLI tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from toymodels.runs import Run


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    run = Run(
        tmp_path / "toy_run",
        {"model": "gemma3-270m", "sae": {"architecture": "batchtopk", "k": 8}},
        seeds={"torch": 0},
        kind="toy-hedging",
    )
    run.write_metrics({"hedging_degree": 0.4375})
    run.write_table("hedging", pd.DataFrame({"width": [16, 32], "hedging_degree": [0.3, 0.2]}))
    run.close()
    return run.folder
