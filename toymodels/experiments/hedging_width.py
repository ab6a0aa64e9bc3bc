"""`toy hedging-width`: hedging degree against SAE width on the hedging paper's large world.

LargeWorld.paper_50 (50 correlated features in 100 dims, true L0 about 11); BatchTopK SAEs with
k = round(true L0), widths 15..50 step 5, several seeds, all ONE stack (seed = an independent
initialisation of every width). The hedging protocol (toymodels.hedging) adds N latents; the
paper's claim is that narrower SAEs hedge more: a negative Spearman correlation of width and h.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import spearmanr

from toymodels.hedging import hedging_protocol
from toymodels.runs import Run
from toymodels.sae import make_sae
from toymodels.train import train
from toymodels.worlds import LargeWorld

WIDTHS = tuple(range(15, 51, 5))
HEDGING_DEGREE_LATEX = (
    r"h = \max\!\left(0, \frac{p - p_{\mathrm{rand}}}{1 - p_{\mathrm{rand}}}\right),\quad "
    r"p = \frac{\operatorname{mean}_i \|Q Q^\top (d^{\mathrm{ext}}_i - d^{\mathrm{ctrl}}_i)\|}"
    r"{\operatorname{mean}_i \|d^{\mathrm{ctrl}}_i\|}"
)


def run_hedging_width(
    out: str | Path,
    n_samples: int = 150_000,
    n_seeds: int = 2,
    n_new: int = 5,
    widths: Sequence[int] = WIDTHS,
    batch_size: int = 1024,
    lr: float = 2e-3,
    seed: int = 0,
    world_seed: int = 0,
    dead_after_samples: int = 10_000,
) -> Run:
    """Train the initial stack n_samples, then the protocol's two stages n_samples each.

    New latents start far too small to win a BatchTopK slot, so they only come alive through the
    aux-k loss on dead latents: dead_after_samples must be well below n_samples."""
    if n_seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {n_seeds}")
    world = LargeWorld.paper_50(seed=world_seed)
    if not widths or min(widths) < 1:
        raise ValueError(f"widths must be positive integers, got {list(widths)}")
    k = round(world.true_l0)
    members = [(s, int(w)) for s in range(n_seeds) for w in widths]
    options = {"batch_size": batch_size, "lr": lr, "progress": False, "device": "cpu"}
    run = Run(
        out,
        {
            "experiment": "toy-hedging-width",
            "world": world.to_config(),
            "architecture": "batchtopk",
            "k": k,
            "widths": list(widths),
            "n_seeds": n_seeds,
            "n_new": n_new,
            "samples_per_stage": n_samples,
            "dead_after_samples": dead_after_samples,
            **options,
        },
        seeds={
            "sae_init": seed,
            "initial_training": seed,
            "protocol": seed + 1,
            "world": world_seed,
        },
    )
    sae = make_sae(
        "batchtopk",
        d_in=world.d_in,
        n_latents=max(widths),
        n_members=len(members),
        widths=[w for _, w in members],
        k=k,
        dead_after_samples=dead_after_samples,
        generator=torch.Generator().manual_seed(seed),
    )

    def data(batch: int) -> torch.Tensor:
        return world.sample_sparse(batch)[0]  # the firing pattern is not needed here

    train(sae, data, n_samples, seed=seed, **options)
    rows, _, _ = hedging_protocol(sae, data, n_samples, n_new, seed=seed + 1, **options)
    table = pd.DataFrame(
        [
            {
                "width": w,
                "seed": s,
                "hedging_degree": r["h"],
                "p": r["p"],
                "p_rand": r["p_rand"],
                "n_new": n_new,
            }
            for (s, w), r in zip(members, rows, strict=True)
        ]
    )
    run.write_table("hedging_vs_width", table)
    correlation = spearmanr(table.width, table.hedging_degree).statistic
    run.write_metrics(
        {
            "spearman_width_vs_hedging": float(correlation),
            "n_new": n_new,
            "mean_hedging_by_width": table.groupby("width").hedging_degree.mean().to_dict(),
            "formulas": {"hedging_degree": HEDGING_DEGREE_LATEX},
        }
    )
    return run
