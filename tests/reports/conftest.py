"""Synthetic run folders written with the real Run writer, for report tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from toymodels.runs import Run

HEDGING_FORMULA = r"h = \max\left(0, \frac{p - p_{\mathrm{rand}}}{1 - p_{\mathrm{rand}}}\right)"
BROKEN_FORMULA = r"\frac{a"  # mathtext cannot parse this


def _write_synthetic_run(folder: Path) -> Run:
    """A run with nested config and metrics, formulas (one broken), a predicted/measured table,
    a hedging-vs-width table with three seeds per point (48 rows), and a saved PNG."""
    run = Run(
        folder,
        {
            "model": "gemma3-270m",
            "model_quantization": "Q4_K_M",
            "l1_coefficient": 0.02,
            "sae": {"architecture": "batchtopk", "k": 8, "widths": list(range(15, 55, 5))},
        },
        seeds={"torch": 0, "data": 1},
        kind="toy-hedging",
    )
    run.record_provenance(model="gemma3-270m", model_quantization="Q4_K_M")
    run.record_data_hash("activations", "ab" * 32)
    run.write_metrics(
        {
            "hedging_degree": 0.4375,
            "loss": {"train": 0.0123456, "test": 2.5e-05},
            "formulas": {"hedging degree": HEDGING_FORMULA, "broken": BROKEN_FORMULA},
        }
    )
    run.write_json("formulas.json", {"loss": r"\mathcal{L} = \|x - \hat{x}\|_2^2 + \lambda\|f\|_1"})
    run.write_table(
        "predicted_vs_measured",
        pd.DataFrame(
            {
                "scenario": ["a", "a", "b", "b"],
                "predicted": [0.1, 0.2, 0.3, 0.5],
                "measured": [0.11, 0.19, 0.33, 0.48],
            }
        ),
    )
    noise = np.random.default_rng(0).normal(0, 0.02, size=48)
    rows = [
        {"architecture": arch, "width": width, "seed": seed, "hedging_degree": scale * 15 / width}
        for arch, scale in (("topk", 0.8), ("matryoshka", 0.6))
        for width in range(15, 55, 5)
        for seed in range(3)
    ]
    table = pd.DataFrame(rows)
    table["hedging_degree"] += noise
    run.write_table("hedging_vs_width", table)
    figure = Figure(figsize=(4, 3))
    figure.add_subplot().plot([0, 1], [1, 0])
    png = run.path("figures", "decoder.png")
    figure.savefig(png, dpi=60)
    run.record_file(png)
    return run


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    return _write_synthetic_run(tmp_path / "toy_run").folder
