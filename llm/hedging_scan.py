"""Hedging degree against N (latents added) and against the hooked layer, on one model.

The hedging paper's appendix varies N; its main text fixes the layer. For every layer this job
caches activations (`llm extract`, one run folder per layer), then runs the hedging protocol
(`llm hedging`, one run folder per layer and N) at one width and architecture, and gathers the
rows into one table, hedging_vs_n_and_layer, with each (layer, N)'s mean h, its spread over
seeds and the random-direction baseline p_rand. Every sub-run is an ordinary resumable run
folder, so an interrupted scan resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from llm.cache import ExtractConfig
from llm.hedging import WIDTH_ARCHITECTURES, LLMHedgingConfig, run_llm_hedging
from llm.jobs import run_extract
from theory.config import (
    require_choice,
    require_nonnegative_int,
    require_positive_int,
    require_positive_ints,
)
from toymodels.runs import Run, check_run_folder, read_run
from toymodels.train import TrainConfig


@dataclass(frozen=True)
class HedgingScanConfig:
    """`llm hedging-scan`: hedging degree against N and against the layer, one model."""

    layers: tuple[int, ...] = (2, 6, 10)
    """Hooked layers (resid_post), one activation cache each."""
    n_news: tuple[int, ...] = (8, 32, 64)
    """N values: latents the protocol adds."""
    width: int = 256
    """Width of the SAEs."""
    architecture: str = "batchtopk"
    """batchtopk | relu-l1."""
    seeds: int = 2
    """Independent initialisations per (layer, N)."""
    extract: ExtractConfig = field(default_factory=lambda: ExtractConfig(tokens=60_000))
    """What to cache at every layer (its layer field is replaced by each of `layers`)."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            samples=30_000, batch_size=512, checkpoint_every=200, progress=False
        )
    )
    """Every protocol stage trains train.samples tokens."""

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("layers needs at least one value")
        for layer in self.layers:
            require_nonnegative_int("each of layers", layer)
        require_positive_ints("n_news", self.n_news, distinct=True)
        require_positive_int("width", self.width)
        require_positive_int("seeds", self.seeds)
        require_choice("architecture", self.architecture, WIDTH_ARCHITECTURES)


def run_hedging_scan(config: HedgingScanConfig, out: str | Path) -> Run:
    """Extract every layer, run the protocol for every (layer, N), gather the table."""
    check_run_folder(out, config)
    out = Path(out)
    run = Run(out, config, seeds={"training": config.train.seed}, kind="llm-hedging-scan")
    rows = []
    for layer in config.layers:
        cache = out / f"activations-layer{layer}"
        if not (cache / "metrics.json").is_file():
            run_extract(replace(config.extract, layer=layer), cache).close()
        for n_new in config.n_news:
            hedging = LLMHedgingConfig(
                cache=str(cache),
                widths=(config.width,),
                architectures=(config.architecture,),
                n_new=n_new,
                mus=(),
                seeds=config.seeds,
                held_out_tokens=min(4096, config.extract.shard_tokens),
                train=config.train,
            )
            folder = out / f"hedging-layer{layer}-n{n_new}"
            if not (folder / "metrics.json").is_file():
                run_llm_hedging(hedging, folder).close()
            table = read_run(folder)["tables"]["hedging_vs_width"]
            rows += [{"layer": layer, **row} for row in table.to_dict("records")]
    table = pd.DataFrame(rows)
    run.write_table("hedging_vs_n_and_layer", table)
    summary = (
        table.groupby(["layer", "n_new"])
        .agg(
            h_mean=("hedging_degree", "mean"),
            h_std=("hedging_degree", "std"),
            p_rand=("p_rand", "mean"),
            seeds=("seed", "count"),
        )  # fmt: skip
        .reset_index()
    )
    run.write_table("hedging_by_n_and_layer", summary)
    run.write_metrics(
        {
            "mean_hedging_by_layer": table.groupby("layer").hedging_degree.mean().to_dict(),
            "mean_hedging_by_n_new": table.groupby("n_new").hedging_degree.mean().to_dict(),
        }
    )
    return run
