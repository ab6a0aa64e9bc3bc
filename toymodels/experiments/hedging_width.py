"""`toy hedging-width`: hedging degree against SAE width on a large world (the hedging paper's by
default; every LargeWorld option is a flag).

LargeWorld.paper_50 (50 correlated features in 100 dims, true L0 about 11); BatchTopK SAEs with
k = round(true L0), widths 15..50 step 5, several seeds, all ONE stack (seed = an independent
initialisation of every width). The hedging protocol (toymodels.hedging) adds N latents; the
paper's claim is that narrower SAEs hedge more: a negative Spearman correlation of width and h.
protocol = "paper" trains every stage as the paper's code does (toymodels.hedging's table: constant
learning rate, Adam betas (0, 0.999), BatchTopK ranking raw activations, aux-k coefficient 1, dead
after 1,000 steps with counters restarting each stage, the initial SAE folded before the stages).
The 50-feature world is not in the paper's public code, so its size, learning rate and samples stay
the toolkit's; with the default 146 steps per stage no latent reaches the paper's 1,000-step dead
window, so new latents only grow through the main loss (raise train.samples to change that).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import spearmanr

from theory.config import require_choice, require_positive_int, require_positive_ints
from toymodels.experiments.common import one_torch_thread
from toymodels.hedging import (
    PAPER_STAGE_OPTIONS,
    PROTOCOLS,
    hedging_protocol,
    paper_sae_options,
    paper_train,
)
from toymodels.runs import Run
from toymodels.sae import make_sae
from toymodels.train import TrainConfig, train
from toymodels.worlds import LargeWorld

WIDTHS = tuple(range(15, 51, 5))
HEDGING_DEGREE_LATEX = (
    r"h = \max\!\left(0, \frac{p - p_{\mathrm{rand}}}{1 - p_{\mathrm{rand}}}\right),\quad "
    r"p = \frac{\operatorname{mean}_i \|Q Q^\top (d^{\mathrm{ext}}_i - d^{\mathrm{ctrl}}_i)\|}"
    r"{\operatorname{mean}_i \|d^{\mathrm{ctrl}}_i\|}"
)


@dataclass(frozen=True)
class HedgingWidthConfig:
    """`toy hedging-width`: hedging degree against width of BatchTopK SAEs on the paper's
    50-feature world."""

    widths: tuple[int, ...] = WIDTHS
    """SAE widths, all in one stack."""
    seeds: int = 2
    """Independent initialisations of every width."""
    new_latents: int = 5
    """N, latents added by the hedging protocol."""
    world: LargeWorld = field(default_factory=LargeWorld.paper_50)
    """The feature world (default: the paper's 50 correlated features in 100 dims)."""
    dead_after_samples: int = 10_000
    """New latents start far too small to win a BatchTopK slot and only come alive through the
    aux-k loss on dead latents: this must be well below the samples per stage (toolkit protocol;
    paper: 1,000 steps)."""
    protocol: str = "toolkit"
    """toolkit | paper: the hedging paper's trainer and stage settings (toymodels.hedging)."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            samples=150_000, batch_size=1024, lr=2e-3, device="cpu", progress=False
        )
    )
    """Each stage (initial, control, extended) trains train.samples samples."""

    def __post_init__(self) -> None:
        require_positive_ints("widths", self.widths)
        for name in ("seeds", "new_latents", "dead_after_samples"):
            require_positive_int(name, getattr(self, name))
        require_choice("protocol", self.protocol, PROTOCOLS)


@one_torch_thread
def run_hedging_width(config: HedgingWidthConfig, out: str | Path) -> Run:
    """Train the initial stack, then the protocol's two stages, each train.samples samples."""
    world = config.world
    k = round(world.true_l0)
    members = [(s, int(w)) for s in range(config.seeds) for w in config.widths]
    seed = config.train.seed
    run = Run(
        out,
        config,
        seeds={
            "sae_init": seed,
            "initial_training": seed,
            "protocol": seed + 1,
            "world": world.seed,
        },
        kind="toy-hedging-width",
    )
    paper = config.protocol == "paper"
    stage = paper_train(config.train) if paper else config.train
    sae = make_sae(
        "batchtopk",
        d_in=world.d_in,
        n_latents=max(config.widths),
        n_members=len(members),
        widths=[w for _, w in members],
        k=k,
        **(
            paper_sae_options(stage.batch_size)
            if paper
            else {"dead_after_samples": config.dead_after_samples}
        ),
        generator=torch.Generator().manual_seed(seed),
    )

    def data(batch: int) -> torch.Tensor:
        return world.sample_sparse(batch)[0]  # the firing pattern is not needed here

    train(sae, data, stage)
    rows, _, _ = hedging_protocol(
        sae,
        data,
        stage.replace(seed=seed + 1),
        config.new_latents,
        **(PAPER_STAGE_OPTIONS if paper else {}),
    )
    table = pd.DataFrame(
        [
            {
                "width": w,
                "seed": s,
                "hedging_degree": r["h"],
                "p": r["p"],
                "p_rand": r["p_rand"],
                "n_new": config.new_latents,
            }
            for (s, w), r in zip(members, rows, strict=True)
        ]
    )
    run.write_table("hedging_vs_width", table)
    correlation = spearmanr(table.width, table.hedging_degree).statistic
    run.write_metrics(
        {
            "spearman_width_vs_hedging": float(correlation),
            "n_new": config.new_latents,
            "k": k,
            "mean_hedging_by_width": table.groupby("width").hedging_degree.mean().to_dict(),
            "formulas": {"hedging_degree": HEDGING_DEGREE_LATEX},
        }
    )
    return run
