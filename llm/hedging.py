"""The hedging-degree protocol on real SAEs: hedging against width for BatchTopK and L1 SAEs, and
balance matryoshka SAEs across mu, trained on an activation cache.

Each architecture's widths (times seeds) form ONE stack trained together; the protocol itself is
toymodels.hedging.hedging_protocol, unchanged: control and extended stages see identical batches
(CacheData restarts its sequence every stage). Theory and the hedging paper predict that hedging
falls as width grows: a negative Spearman correlation of width and hedging degree.

protocol selects how every stage trains: "toolkit" (default), "paper" (the hedging paper's code,
toymodels.hedging's table) or "both", which trains every stack under each protocol from the same
initialisation, cache order and seeds, so the tables' `protocol` column compares like with like
(plus table hedging_by_protocol: h per width with its spread over seeds). On a language model the
paper's protocol also means raw activations with b_dec starting at 0, and for L1 SAEs lr 7e-5, a
10k-step L1 warm-up in the initial stage (capped at that stage's length, so the initial SAE ends at
the full L1 as the paper's does after 10k of 61k steps; control and extended train at the full L1,
as the paper's min_l1_during_warm_up does) and the L1 coefficient of PAPER_L1 for the paper's
models. A coefficient only means something against the activations' scale (the loss of c x at
lambda equals c^2 times the loss of x at lambda / c: Gemma's 10 and Llama's 0.5 differ by the ratio
of their activation norms), and no paper value exists for other models, so there the equivalent is
the toolkit's calibrated coefficient carried to raw units: lambda = l1 * mean ||x|| / sqrt(d_model),
the same penalty the toolkit's normalised run applies, measured on the cache's training rows and
recorded in metrics (paper_protocol). Metrics of the paper protocol carry the suffix _paper.
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
    input_sample,
    normalisation_scale,
    split_cache,
    train_on_cache,
)
from theory.config import (
    require_choice,
    require_numbers,
    require_positive_int,
    require_positive_ints,
)
from toymodels.hedging import (
    PAPER_STAGE_OPTIONS,
    PROTOCOLS,
    hedging_protocol,
    paper_sae_options,
    paper_train,
)
from toymodels.runs import Run, check_run_folder
from toymodels.sae import SAE, make_sae
from toymodels.train import TrainConfig

WIDTH_ARCHITECTURES = ("batchtopk", "relu-l1")
PROTOCOL_CHOICES = (*PROTOCOLS, "both")
# The paper's L1 coefficients on raw activations (Gemma-2-2B layer 12, Llama-3.2-1B layer 7).
PAPER_L1 = {"google/gemma-2-2b": 10.0, "meta-llama/Llama-3.2-1B": 0.5}
PAPER_L1_LR = 7e-5
PAPER_L1_WARMUP_STEPS = 10_000
INIT_ROWS = 16_384  # rows for the normalisation scale and b_dec (train_on_cache's default)


@dataclass(frozen=True)
class StageSettings:
    """How one protocol trains one architecture's stack: resolved from LLMHedgingConfig."""

    protocol: str
    """toolkit or paper."""
    initial: TrainConfig
    """The initial stage's trainer."""
    stages: TrainConfig
    """The control and extended stages' trainer (seed + 1 applied by _protocol)."""
    sae_options: dict
    """SAE config fields: sparsity (k or l1), ranking, aux-k coefficient, dead window."""
    normalize: bool
    """Train on activations scaled to mean norm sqrt(d_model)."""
    b_dec_init: str
    """How b_dec starts (train_on_cache's b_dec_init)."""
    stage_options: dict
    """hedging_protocol's fold_initial and reset_dead_counters."""


def _settings(
    protocol: str, architecture: str, config: LLMHedgingConfig, split: CacheSplit
) -> StageSettings:
    """The toolkit's or the paper's settings of one stack (see the module docstring)."""
    train = config.train
    if protocol == "toolkit":
        sparsity = {"l1": config.l1} if architecture == "relu-l1" else {"k": config.k}
        dead = {"dead_after_samples": _dead_after(train.samples, train.batch_size)}
        return StageSettings(
            protocol, train, train, {**sparsity, **dead}, config.normalize, "geometric_median", {}
        )
    stage = paper_train(train)
    initial = stage
    if architecture == "relu-l1":
        stage = stage.replace(lr=PAPER_L1_LR)
        initial = stage.replace(l1_warmup_steps=min(PAPER_L1_WARMUP_STEPS, stage.n_steps))
        options = {"l1": paper_l1(split, config.l1, train.seed)}
    else:
        options = {"k": config.k, **paper_sae_options(train.batch_size)}
    return StageSettings(protocol, initial, stage, options, False, "zero", PAPER_STAGE_OPTIONS)


def paper_l1(split: CacheSplit, toolkit_l1: float, seed: int) -> float:
    """The paper's L1 coefficient for the cache's model on raw activations; for other models
    the toolkit's coefficient (normalised units) carried to raw units, l1 * mean ||x|| /
    sqrt(d_model), measured on the rows train_on_cache draws for its scale."""
    model = split.manifest["config"]["model"]
    if model in PAPER_L1:
        return PAPER_L1[model]
    return toolkit_l1 / normalisation_scale(input_sample(split, INIT_ROWS, seed))


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
    settings: StageSettings,
) -> list[dict]:
    """Initial training then the protocol; one row per member with the control's quality."""
    folder = name if settings.protocol == "toolkit" else f"{settings.protocol}-{name}"
    checkpoints = run.path("checkpoints", folder)
    stage = settings.stages
    trained = train_on_cache(
        sae,
        split,
        settings.initial,
        normalize=settings.normalize,
        b_dec_init=settings.b_dec_init,
        init_rows=INIT_ROWS,
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
        **settings.stage_options,
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
    """relu-l1: L1 coefficient (in normalised input units; the paper protocol uses the paper's
    value on raw activations, or this one carried to raw units on other models)."""
    mus: tuple[float, ...] = (0.0, 0.25, 1.0)
    """Balance-matryoshka mu values, levels = widths (empty: skip)."""
    seeds: int = 1
    """Independent initialisations of every width."""
    normalize: bool = True
    """Train on activations scaled to mean norm sqrt(d_model) (toolkit protocol; paper: raw)."""
    held_out_tokens: int = 16_384
    """Rows kept out of training, for the control SAEs' quality."""
    protocol: str = "toolkit"
    """toolkit | paper | both: how every stage trains (the hedging paper's code: constant lr, Adam
    betas (0, 0.999), raw activations, the initial SAE folded, ...; see llm.hedging); both runs
    each on the same cache and seeds, with a protocol column in the tables."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(samples=200_000, checkpoint_every=200, progress=False)
    )
    """Every stage (initial, control, extended) trains train.samples tokens (T)."""

    @property
    def protocols(self) -> tuple[str, ...]:
        """The protocols this run trains, in order."""
        return PROTOCOLS if self.protocol == "both" else (self.protocol,)

    def __post_init__(self) -> None:
        require_choice("protocol", self.protocol, PROTOCOL_CHOICES)
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
    hedging_vs_mu), under each protocol of config.protocol (column protocol; with both, table
    hedging_by_protocol compares them). Checkpoints make an interrupted run resume."""
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
    mu_members = [(s, float(mu)) for s in range(config.seeds) for mu in config.mus]
    rows, mu_rows, metrics = [], [], {}
    metrics |= {
        "n_new": config.n_new,
        "tokens_per_stage": config.train.samples,
        "predicted_sign_width_vs_hedging": "negative",
    }
    for protocol in config.protocols:
        for architecture in config.architectures:
            settings = _settings(protocol, architecture, config, split)
            if protocol == "paper":
                metrics.setdefault("paper_protocol", {})[architecture] = _describe(settings)
            sae = make_sae(
                architecture,
                d_in=split.d_model,
                n_latents=widths[-1],
                n_members=len(members),
                widths=[w for _, w in members],
                **settings.sae_options,
                generator=torch.Generator().manual_seed(seed),
            )
            results = _protocol(run, architecture, sae, split, config, held_out_ND, settings)
            rows += [
                {"width": w, "architecture": architecture, "seed": s, "protocol": protocol}
                | _row(r)
                for (s, w), r in zip(members, results, strict=True)
            ]
        if config.mus:
            settings = _settings(protocol, "matryoshka", config, split)
            sae = make_sae(
                "matryoshka",
                inner="batchtopk",
                d_in=split.d_model,
                n_latents=widths[-1],
                n_members=len(mu_members),
                levels=widths,
                mu=[m for _, m in mu_members],
                **settings.sae_options,
                generator=torch.Generator().manual_seed(seed),
            )
            results = _protocol(run, "matryoshka", sae, split, config, held_out_ND, settings)
            mu_rows += [
                {"mu": mu, "seed": s, "width": widths[-1], "protocol": protocol} | _row(r)
                for (s, mu), r in zip(mu_members, results, strict=True)
            ]
    table = pd.DataFrame(rows)
    run.write_table("hedging_vs_width", table)
    for (protocol, architecture), group in table.groupby(["protocol", "architecture"], sort=False):
        suffix = architecture + ("" if protocol == "toolkit" else f"_{protocol}")
        rho = _spearman(group.width.tolist(), group.hedging_degree.tolist())
        metrics[f"spearman_width_vs_hedging_{suffix}"] = rho
        metrics[f"hedging_falls_with_width_{suffix}"] = None if rho is None else rho < 0
        metrics[f"mean_hedging_by_width_{suffix}"] = (
            group.groupby("width").hedging_degree.mean().to_dict()
        )
    if len(config.protocols) > 1:
        run.write_table("hedging_by_protocol", _by_protocol(table))
    if mu_rows:
        mu_table = pd.DataFrame(mu_rows)
        run.write_table("hedging_vs_mu", mu_table)
        for protocol, group in mu_table.groupby("protocol", sort=False):
            suffix = "" if protocol == "toolkit" else f"_{protocol}"
            metrics[f"spearman_mu_vs_hedging{suffix}"] = _spearman(
                group.mu.tolist(), group.hedging_degree.tolist()
            )
            metrics[f"mean_hedging_by_mu{suffix}"] = (
                group.groupby("mu").hedging_degree.mean().to_dict()
            )
    run.write_metrics(metrics)
    return run


def _by_protocol(table: pd.DataFrame) -> pd.DataFrame:
    """h per protocol, architecture and width: mean, standard deviation, min and max over
    seeds."""
    spread = table.groupby(["architecture", "width", "protocol"]).hedging_degree.agg(
        ["mean", "std", "min", "max", "count"]
    )
    return (
        spread.add_prefix("hedging_degree_")
        .rename(columns={"hedging_degree_count": "seeds"})
        .reset_index()
    )


def _describe(settings: StageSettings) -> dict:
    """What the paper protocol resolved to for one stack (JSON-ready), for metrics."""
    return {
        "initial_lr": settings.initial.lr,
        "stage_lr": settings.stages.lr,
        "adam_betas": list(settings.stages.adam_betas),
        "decay_fraction": settings.stages.decay_fraction,
        "l1_warmup_steps_initial": settings.initial.l1_warmup_steps,
        **settings.sae_options,
        "normalize": settings.normalize,
        "b_dec_init": settings.b_dec_init,
        **settings.stage_options,
    }


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
