"""The hedging-degree protocol on real SAEs: hedging against width for BatchTopK and L1 SAEs, and
balance matryoshka SAEs across mu, trained on an activation cache.

Each architecture's widths (times seeds) form ONE stack trained together; the protocol itself is
toymodels.hedging.hedging_protocol, unchanged: control and extended stages see identical batches
(CacheData restarts its sequence every stage). Theory and the hedging paper predict that hedging
falls as width grows: a negative Spearman correlation of width and hedging degree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import spearmanr

from llm.evaluate import reconstruction_metrics
from llm.training import (
    CacheData,
    CacheSplit,
    held_out_activations,
    split_cache,
    train_on_cache,
)
from toymodels.hedging import hedging_protocol
from toymodels.runs import Run
from toymodels.sae import SAE, make_sae

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
    tokens_per_stage: int,
    n_new: int,
    options: dict,
    normalize: bool,
    seed: int,
    held_out_ND: torch.Tensor,
) -> list[dict]:
    """Initial training then the protocol; one row per member with the control's quality."""
    checkpoints = run.path("checkpoints", name)
    trained = train_on_cache(
        sae,
        split,
        tokens_per_stage,
        normalize=normalize,
        seed=seed,
        checkpoint_path=checkpoints / "initial.pt",
        **options,
    )
    data = CacheData(
        split,
        seed=seed + 1,
        scale=trained.input_scale,
        restart_every=tokens_per_stage // options["batch_size"] * options["batch_size"],
    )
    rows, control, _ = hedging_protocol(
        trained.sae,
        data,
        tokens_per_stage,
        n_new,
        seed=seed + 1,
        checkpoint_dir=checkpoints,
        **options,
    )
    quality = reconstruction_metrics(control, held_out_ND * trained.input_scale)
    return [{**row, **q} for row, q in zip(rows, quality, strict=True)]


def _spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None  # undefined for a constant column
    return float(spearmanr(x, y).statistic)


def run_llm_hedging(
    cache: str | Path,
    out: str | Path,
    *,
    widths: Sequence[int] = (256, 512, 1024, 2048),
    architectures: Sequence[str] = WIDTH_ARCHITECTURES,
    n_new: int = 64,
    tokens_per_stage: int = 200_000,
    k: int = 25,
    l1: float = 2.0,
    mus: Sequence[float] = (),
    n_seeds: int = 1,
    batch_size: int = 4096,
    lr: float = 3e-4,
    normalize: bool = True,
    held_out_tokens: int = 16_384,
    device: str = "auto",
    seed: int = 0,
    run_metadata: dict | None = None,
) -> Run:
    """Hedging degree vs width per architecture (table hedging_vs_width) and, when mus are
    given, of balance matryoshka BatchTopK SAEs with levels = widths across mu (table
    hedging_vs_mu). l1 is the decoder-norm-weighted L1 coefficient of relu-l1 SAEs, in units of
    the normalised inputs (mean norm sqrt(d_model)). Checkpoints make an interrupted run resume.
    """
    widths = sorted(int(w) for w in widths)
    unknown = sorted(set(architectures) - set(WIDTH_ARCHITECTURES))
    if unknown or not architectures:
        raise ValueError(
            f"unknown architectures {unknown or '(none)'}; allowed: "
            f"{', '.join(WIDTH_ARCHITECTURES)}"
        )
    if not widths or widths[0] < 1 or len(set(widths)) != len(widths):
        raise ValueError(f"widths must be distinct positive integers, got {widths}")
    if n_seeds < 1 or tokens_per_stage < batch_size:
        raise ValueError(
            f"need n_seeds >= 1 and tokens_per_stage >= batch_size {batch_size}, "
            f"got {n_seeds}, {tokens_per_stage}"
        )
    split = split_cache(cache, held_out_tokens)
    if not 1 <= n_new < split.d_model:
        raise ValueError(f"n_new must be in [1, d_model = {split.d_model}), got {n_new}")
    config = {
        "experiment": "llm-hedging",
        "cache": str(split.cache_dir),
        "model": split.manifest["model"],
        "layer": split.manifest["layer"],
        "hook": split.manifest["hook"],
        "widths": widths,
        "architectures": list(architectures),
        "n_new": n_new,
        "tokens_per_stage": tokens_per_stage,
        "k": k,
        "l1": l1,
        "mus": list(mus),
        "n_seeds": n_seeds,
        "batch_size": batch_size,
        "lr": lr,
        "normalize": normalize,
        "held_out_tokens": held_out_tokens,
        **(run_metadata or {}),
    }
    run = Run(
        out,
        config,
        seeds={"sae_init": seed, "training": seed, "protocol": seed + 1},
        kind="llm-hedging",
    )
    options = {"batch_size": batch_size, "lr": lr, "device": device, "progress": False}
    held_out_ND = held_out_activations(split, held_out_tokens)
    members = [(s, w) for s in range(n_seeds) for w in widths]
    shared = {
        "d_in": split.d_model,
        "dead_after_samples": _dead_after(tokens_per_stage, batch_size),
    }
    rows = []
    for architecture in architectures:
        sparsity = {"k": k} if architecture == "batchtopk" else {"l1": l1}
        sae = make_sae(
            architecture,
            n_latents=widths[-1],
            n_members=len(members),
            widths=[w for _, w in members],
            **sparsity,
            **shared,
            generator=torch.Generator().manual_seed(seed),
        )
        results = _protocol(
            run,
            architecture,
            sae,
            split,
            tokens_per_stage,
            n_new,
            options,
            normalize,
            seed,
            held_out_ND,
        )
        rows += [
            {"width": w, "architecture": architecture, "seed": s, **_row(r)}
            for (s, w), r in zip(members, results, strict=True)
        ]
    table = pd.DataFrame(rows)
    run.write_table("hedging_vs_width", table)
    metrics: dict = {
        "n_new": n_new,
        "tokens_per_stage": tokens_per_stage,
        "predicted_sign_width_vs_hedging": "negative",
    }
    for architecture, group in table.groupby("architecture"):
        rho = _spearman(group.width.tolist(), group.hedging_degree.tolist())
        metrics[f"spearman_width_vs_hedging_{architecture}"] = rho
        metrics[f"hedging_falls_with_width_{architecture}"] = None if rho is None else rho < 0
        metrics[f"mean_hedging_by_width_{architecture}"] = (
            group.groupby("width").hedging_degree.mean().to_dict()
        )

    if mus:
        mu_members = [(s, float(mu)) for s in range(n_seeds) for mu in mus]
        sae = make_sae(
            "matryoshka",
            inner="batchtopk",
            n_latents=widths[-1],
            n_members=len(mu_members),
            levels=widths,
            mu=[m for _, m in mu_members],
            k=k,
            **shared,
            generator=torch.Generator().manual_seed(seed),
        )
        results = _protocol(
            run,
            "matryoshka",
            sae,
            split,
            tokens_per_stage,
            n_new,
            options,
            normalize,
            seed,
            held_out_ND,
        )
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
