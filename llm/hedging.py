"""The hedging-degree protocol on real SAEs: hedging against width for BatchTopK and L1 SAEs, and
balance matryoshka SAEs across mu, trained on an activation cache.

Each architecture's widths (times seeds) form ONE stack trained together; the protocol itself is
toymodels.hedging.hedging_protocol, unchanged: control and extended stages see identical batches
(CacheData restarts its sequence every stage). Theory and the hedging paper predict that hedging
falls as width grows: a negative Spearman correlation of width and hedging degree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import spearmanr

from llm.evaluate import reconstruction_metrics
from llm.jobs import record_cache
from llm.training import (
    CacheData,
    CacheSplit,
    held_out_activations,
    split_cache,
    train_on_cache,
)
from theory.config import (
    require_choice,
    require_numbers,
    require_positive_int,
    require_positive_ints,
)
from toymodels.hedging import hedging_protocol
from toymodels.runs import Run, check_run_folder
from toymodels.sae import SAE, make_sae
from toymodels.train import TrainConfig

WIDTH_ARCHITECTURES = ("batchtopk", "relu-l1")


def _dead_after(tokens_per_stage: int, batch_size: int) -> int:
    """New BatchTopK latents start too small to win a slot and only come alive through the
    aux-k loss on dead latents, so 'dead' must trigger well within a stage."""
    return max(batch_size, tokens_per_stage // 10)


def _protocol(
    run: Run,
    name: str,
    sae: SAE,
    split: CacheSplit,
    config: LLMHedgingConfig,
    held_out_ND: torch.Tensor,
) -> list[dict]:
    """Initial training then the protocol; one row per member with the control's quality."""
    checkpoints = run.path("checkpoints", name)
    stage = config.train
    trained = train_on_cache(
        sae,
        split,
        stage,
        normalize=config.normalize,
        checkpoint_path=checkpoints / "initial.pt",
    )
    data = CacheData(
        split,
        seed=stage.seed + 1,
        scale=trained.input_scale,
        restart_every=stage.n_steps * stage.batch_size,
    )
    rows, control, _ = hedging_protocol(
        trained.sae,
        data,
        stage.replace(seed=stage.seed + 1),
        config.n_new,
        checkpoint_dir=checkpoints,
    )
    quality = reconstruction_metrics(control, held_out_ND * trained.input_scale)
    return [{**row, **q} for row, q in zip(rows, quality, strict=True)]


def _spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None  # undefined for a constant column
    return float(spearmanr(x, y).statistic)


@dataclass(frozen=True)
class LLMHedgingConfig:
    """`llm hedging`: the hedging-degree protocol on SAEs trained on an activation cache,
    across widths (BatchTopK, L1) and across balance-matryoshka mu."""

    cache: str
    """Activation cache, or the run folder of `llm extract` holding one."""
    widths: tuple[int, ...] = (256, 512, 1024, 2048)
    """SAE widths (one stack per architecture)."""
    architectures: tuple[str, ...] = WIDTH_ARCHITECTURES
    """Architectures swept over width: batchtopk, relu-l1."""
    n_new: int = 64
    """N, latents added by the protocol."""
    k: int = 25
    """batchtopk / matryoshka: latents per token."""
    l1: float = 2.0
    """relu-l1: L1 coefficient (in normalised input units)."""
    mus: tuple[float, ...] = (0.0, 0.25, 1.0)
    """Balance-matryoshka mu values, levels = widths (empty: skip)."""
    seeds: int = 1
    """Independent initialisations of every width."""
    normalize: bool = True
    """Train on activations scaled to mean norm sqrt(d_model)."""
    held_out_tokens: int = 16_384
    """Rows kept out of training, for the control SAEs' quality."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(samples=200_000, checkpoint_every=200, progress=False)
    )
    """Every stage (initial, control, extended) trains train.samples tokens (T)."""

    def __post_init__(self) -> None:
        require_positive_ints("widths", self.widths, distinct=True)
        if not self.architectures:
            raise ValueError(f"architectures needs at least one of {WIDTH_ARCHITECTURES}")
        for architecture in self.architectures:
            require_choice("architecture", architecture, WIDTH_ARCHITECTURES)
        require_numbers("mus", self.mus, 0, allow_empty=True)
        for name in ("n_new", "k", "seeds", "held_out_tokens"):
            require_positive_int(name, getattr(self, name))


def run_llm_hedging(config: LLMHedgingConfig, out: str | Path) -> Run:
    """Hedging degree vs width per architecture (table hedging_vs_width) and, when mus are
    given, of balance matryoshka BatchTopK SAEs with levels = widths across mu (table
    hedging_vs_mu). Checkpoints make an interrupted run resume."""
    widths = sorted(config.widths)
    check_run_folder(out, config)
    split = split_cache(config.cache, config.held_out_tokens)
    if not config.n_new < split.d_model:
        raise ValueError(f"n_new must be in [1, d_model = {split.d_model}), got {config.n_new}")
    seed = config.train.seed
    run = Run(
        out,
        config,
        seeds={"sae_init": seed, "training": seed, "protocol": seed + 1},
        kind="llm-hedging",
    )
    record_cache(run, split.cache_dir, split.manifest)
    held_out_ND = held_out_activations(split, config.held_out_tokens)
    members = [(s, w) for s in range(config.seeds) for w in widths]
    shared = {
        "d_in": split.d_model,
        "dead_after_samples": _dead_after(config.train.samples, config.train.batch_size),
    }
    rows = []
    for architecture in config.architectures:
        sparsity = {"k": config.k} if architecture == "batchtopk" else {"l1": config.l1}
        sae = make_sae(
            architecture,
            n_latents=widths[-1],
            n_members=len(members),
            widths=[w for _, w in members],
            **sparsity,
            **shared,
            generator=torch.Generator().manual_seed(seed),
        )
        results = _protocol(run, architecture, sae, split, config, held_out_ND)
        rows += [
            {"width": w, "architecture": architecture, "seed": s, **_row(r)}
            for (s, w), r in zip(members, results, strict=True)
        ]
    table = pd.DataFrame(rows)
    run.write_table("hedging_vs_width", table)
    metrics: dict = {
        "n_new": config.n_new,
        "tokens_per_stage": config.train.samples,
        "predicted_sign_width_vs_hedging": "negative",
    }
    for architecture, group in table.groupby("architecture"):
        rho = _spearman(group.width.tolist(), group.hedging_degree.tolist())
        metrics[f"spearman_width_vs_hedging_{architecture}"] = rho
        metrics[f"hedging_falls_with_width_{architecture}"] = None if rho is None else rho < 0
        metrics[f"mean_hedging_by_width_{architecture}"] = (
            group.groupby("width").hedging_degree.mean().to_dict()
        )

    if config.mus:
        mu_members = [(s, float(mu)) for s in range(config.seeds) for mu in config.mus]
        sae = make_sae(
            "matryoshka",
            inner="batchtopk",
            n_latents=widths[-1],
            n_members=len(mu_members),
            levels=widths,
            mu=[m for _, m in mu_members],
            k=config.k,
            **shared,
            generator=torch.Generator().manual_seed(seed),
        )
        results = _protocol(run, "matryoshka", sae, split, config, held_out_ND)
        mu_table = pd.DataFrame(
            [
                {"mu": mu, "seed": s, "width": widths[-1], **_row(r)}
                for (s, mu), r in zip(mu_members, results, strict=True)
            ]
        )
        run.write_table("hedging_vs_mu", mu_table)
        metrics["spearman_mu_vs_hedging"] = _spearman(
            mu_table.mu.tolist(), mu_table.hedging_degree.tolist()
        )
        metrics["mean_hedging_by_mu"] = mu_table.groupby("mu").hedging_degree.mean().to_dict()
    run.write_metrics(metrics)
    return run


def _row(result: dict) -> dict:
    return {
        "hedging_degree": result["h"],
        "n_new": result["n_new"],
        "p": result["p"],
        "p_rand": result["p_rand"],
        "explained_variance": result["explained_variance"],
        "l0": result["l0"],
        "dead_fraction": result["dead_fraction"],
        "tokens_per_stage": result["samples_per_stage"],
    }
