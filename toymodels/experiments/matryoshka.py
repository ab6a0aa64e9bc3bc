"""`toy matryoshka`: balance matryoshka SAEs on the hedging paper's toy, sweeping mu.

One parent (P = 0.25) with three read-out children (P(. | parent) = 0.15 each) and a hidden
child (P(. | parent) = 0.55); a width-4 ReLU-L1 matryoshka SAE with levels [1, 4] and L1 3e-2,
level weights mu^(n - j). The inner level's single latent should become the parent (the latent
measured is the one with the largest decoder component on the parent). Too much
inner weight (mu = 1) makes it hedge: POSITIVE decoder components on the read-out children;
none (mu = 0) lets the outer level's sparsity absorb them: NEGATIVE encoder components. Every mu x
seed is a member of ONE stack; the best mu has the cleanest parent latent.

protocol = "paper" follows the paper's toy (toymodels.hedging's table): the L1 applies per level,
weighted by beta (the inner latent pays lambda (1 + mu)); the SAE starts AT the true features
(latent i's encoder column and decoder row = feature i for the parent and the three read-out
children, no noise, b_dec 0); 24,414 steps of 128 samples (the paper's 100M "tokens" in steps of
4096, each step drawing one context of 128) at a constant lr 3e-4 with Adam betas (0, 0.999).
Starting at the features makes the seeds of one mu identical (they share the batches), as in the
paper, which trains one SAE per figure.

Theory sits beside the measurement: theory.matryoshka's exact optimum of the same loss (the basin
the paper's toy starts in) gives the hedging and absorption the measures should read at each mu,
and its balancing mu (where the inner latent's encoder stops absorbing and starts hedging). The
cosine of every latent's decoder and encoder with every true feature, per level (the paper's
heatmaps), is one long table with theory's cosines beside the trained ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from theory.config import require_choice, require_number, require_numbers, require_positive_int
from theory.features import hierarchical
from theory.matryoshka import balancing_mu, basin_optimum, read_out_components
from theory.predictions import tracking_hedging_coefficient
from theory.sae import SAESpec, unit_rows
from toymodels.experiments.common import EmbeddedWorlds, match_latents, one_torch_thread
from toymodels.hedging import PROTOCOLS, paper_train
from toymodels.runs import Run
from toymodels.sae import make_sae
from toymodels.train import TrainConfig, train

MU_VALUES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
P_PARENT, P_READ_OUT, P_HIDDEN = 0.25, 0.15, 0.55
READ_OUT = (1, 2, 3)  # feature indices of the read-out children; 4 is the hidden child
LEVELS = (1, 4)
PAPER_STEPS, PAPER_BATCH, PAPER_LR = 24_414, 128, 3e-4


def matryoshka_world():  # noqa: ANN201 (FeatureModel)
    return hierarchical(P_PARENT, [P_READ_OUT] * len(READ_OUT) + [P_HIDDEN])


@dataclass(frozen=True)
class ToyMatryoshkaConfig:
    """`toy matryoshka`: balance matryoshka SAEs on the hedging paper's toy, sweeping mu."""

    mu_values: tuple[float, ...] = MU_VALUES
    """Balance values mu (level j weighs mu^(n-j))."""
    seeds: int = 3
    """Independent initialisations per mu."""
    l1: float = 3e-2
    """L1 coefficient."""
    d_in: int = 50
    """Dimension the features are embedded in."""
    protocol: str = "toolkit"
    """toolkit | paper: the paper's toy (per-level L1, SAE started at the true features, 24,414
    steps of 128 samples at lr 3e-4, constant, Adam betas (0, 0.999)); train's samples,
    batch_size, lr and schedule are then the paper's."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            samples=400_000, batch_size=1024, lr=1e-2, device="cpu", progress=False
        )
    )

    def __post_init__(self) -> None:
        require_choice("protocol", self.protocol, PROTOCOLS)
        require_numbers("mu_values", self.mu_values, 0)
        require_number("l1", self.l1, 0)
        for name in ("seeds", "d_in"):
            require_positive_int(name, getattr(self, name))


@one_torch_thread
def run_matryoshka(config: ToyMatryoshkaConfig, out: str | Path) -> Run:
    seed = config.train.seed
    members = [(r, float(mu)) for r in range(config.seeds) for mu in config.mu_values]
    world = matryoshka_world()
    data = EmbeddedWorlds([world], [0] * len(members), config.d_in, seed)
    run = Run(out, config, seeds={"sae_init_and_data": seed}, kind="toy-matryoshka")
    paper = config.protocol == "paper"
    sae = make_sae(
        "matryoshka",
        inner="relu-l1",
        d_in=config.d_in,
        n_latents=4,
        n_members=len(members),
        levels=list(LEVELS),
        mu=[mu for _, mu in members],
        l1=config.l1,
        decoder_init_norm=1.0,
        level_sparsity=paper,
        generator=torch.Generator().manual_seed(seed),
    )
    stage = config.train
    if paper:
        with torch.no_grad():  # latent i = feature i: the parent, then the read-out children
            sae.W_dec.copy_(data.directions_ND[: sae.n_latents].expand_as(sae.W_dec))
            sae.W_enc.copy_(sae.W_dec.transpose(1, 2))
        stage = paper_train(
            stage.replace(samples=PAPER_STEPS * PAPER_BATCH, batch_size=PAPER_BATCH, lr=PAPER_LR)
        )
    train(sae, data, stage)
    sae.fold_decoder_norms()
    with torch.no_grad():
        decoder_MFN = sae.W_dec @ data.directions_ND.T
        encoder_MFN = sae.W_enc.transpose(1, 2) @ data.directions_ND.T
        # cosines with the features: decoder rows are unit after folding, encoder columns not
        encoder_cosine_MFN = encoder_MFN / sae.W_enc.norm(dim=1).clamp(min=1e-12)[..., None]
    rows = []
    for m, (replicate, mu) in enumerate(members):
        # The parent's latent: the inner level's one when mu > 0 works; at mu = 0 any latent.
        parent = int(decoder_MFN[m, :, 0].argmax())
        decoder, encoder = decoder_MFN[m, parent], encoder_MFN[m, parent]
        read_dec, read_enc = decoder[list(READ_OUT)], encoder[list(READ_OUT)]
        rows.append(
            {
                "mu": mu,
                "seed": replicate,
                "parent_latent": parent,
                "decoder_parent": float(decoder[0]),
                "encoder_parent": float(encoder[0]),
                "hedging": float(read_dec.clamp(min=0).mean()),
                "absorption": float((-read_enc).clamp(min=0).mean()),
                "decoder_read_out_mean": float(read_dec.mean()),
                "encoder_read_out_mean": float(read_enc.mean()),
                "decoder_hidden": float(decoder[4]),
                "encoder_hidden": float(encoder[4]),
            }
        )
    table = pd.DataFrame(rows)
    table["error"] = table.hedging + table.absorption
    run.write_table("matryoshka_vs_mu", table)
    spec = theory_spec(config.l1, paper)
    optima = {
        mu: basin_optimum(world, replace(spec, mu=mu), 0, READ_OUT) for mu in config.mu_values
    }
    cosines = cosine_table(members, decoder_MFN, encoder_cosine_MFN, optima)
    run.write_table("cosines_by_level", cosines)
    by_mu = table.groupby("mu")[["hedging", "absorption", "error"]].mean()
    theory = theory_table(optima)
    by_mu_table = by_mu.add_suffix("_measured").join(theory.set_index("mu")).reset_index()
    run.write_table("theory_vs_measured_by_mu", by_mu_table)
    balance = balancing_mu(world, spec, 0, READ_OUT, bracket=THEORY_BRACKET, xtol=1e-4)
    low, high = best_mu_interval(table, seed=seed)
    best_mu = float(by_mu.error.idxmin())
    run.write_table(
        "balance",
        pd.DataFrame(
            [
                {
                    "measured_best_mu": best_mu,
                    "measured_low_95": low,
                    "measured_high_95": high,
                    "theory_balancing_mu": balance.mu,
                    "theory_best_mu_on_grid": float(theory.mu[theory.error_theory.idxmin()]),
                }
            ]
        ),
    )
    run.write_metrics(
        {
            "best_mu": best_mu,
            "best_mu_interval_95": [low, high],
            "theory_balancing_mu": balance.mu,
            "theory_best_mu_on_grid": float(theory.mu[theory.error_theory.idxmin()]),
            "theory_hedging_by_mu": dict(zip(theory.mu, theory.hedging_theory, strict=True)),
            "theory_absorption_by_mu": dict(zip(theory.mu, theory.absorption_theory, strict=True)),
            "world": world.describe(),
            "hedging_by_mu": by_mu.hedging.to_dict(),
            "absorption_by_mu": by_mu.absorption.to_dict(),
            "formulas": {
                "tracking_hedging_coefficient": tracking_hedging_coefficient(False).latex,
                "level_weights": r"\beta_j = \mu^{\,n-j}",
                "balancing_mu": r"\bar{W}_{\mathrm{enc}}[0, \mathrm{read\,out}](\mu) = 0",
            },
        }
    )
    return run


THEORY_BRACKET = (0.0, 1.0)  # where theory looks for the balancing mu


def theory_spec(l1: float, level_sparsity: bool) -> SAESpec:
    """The toy's SAE as theory sees it (mu is set per point)."""
    return SAESpec(
        len(READ_OUT) + 1,
        float(l1),
        architecture="matryoshka",
        levels=LEVELS,
        level_sparsity=level_sparsity,
    )


def theory_table(optima: dict[float, object]) -> pd.DataFrame:
    """Theory's read-out measures of the inner latent at each mu (the basin's exact optimum)."""
    rows = []
    for mu, optimum in optima.items():
        components = read_out_components(optimum.params, READ_OUT)
        rows.append(
            {
                "mu": float(mu),
                "hedging_theory": components.hedging,
                "absorption_theory": components.absorption,
                "error_theory": components.hedging + components.absorption,
                "decoder_read_out_theory": components.decoder,
                "encoder_read_out_theory": components.encoder,
                "loss_theory": optimum.loss,
            }
        )
    return pd.DataFrame(rows)


def cosine_table(
    members: list[tuple[int, float]],
    decoder_MFN: torch.Tensor,
    encoder_MFN: torch.Tensor,
    optima: dict[float, object],
) -> pd.DataFrame:
    """Cosine of each latent's decoder and encoder with each true feature (the paper's heatmaps;
    inputs are cosines already), per member, with the level the latent joins and theory's
    cosines for the same mu beside them. The inner latent is theory's inner latent; the outer
    ones, interchangeable, are matched to theory's by their decoders."""
    rows = []
    for m, (replicate, mu) in enumerate(members):
        theory = optima[mu].params
        theory_dec, theory_enc = unit_rows(theory.decoder), unit_rows(theory.encoder)
        decoder_FN, encoder_FN = decoder_MFN[m].double().numpy(), encoder_MFN[m].double().numpy()
        outer = 1 + match_latents(decoder_FN[1:], theory_dec[1:])
        for latent, trained in enumerate([0, *outer]):
            level = 1 + int(np.searchsorted(LEVELS, latent, side="right"))
            for feature in range(decoder_FN.shape[1]):
                rows.append(
                    {
                        "mu": mu,
                        "seed": replicate,
                        "level": level,
                        "latent": latent,
                        "trained_latent": int(trained),
                        "feature": feature,
                        "decoder_cosine": float(decoder_FN[trained, feature]),
                        "encoder_cosine": float(encoder_FN[trained, feature]),
                        "decoder_cosine_theory": float(theory_dec[latent, feature]),
                        "encoder_cosine_theory": float(theory_enc[latent, feature]),
                    }
                )
    return pd.DataFrame(rows)


def best_mu_interval(
    table: pd.DataFrame, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% bootstrap interval of the mu with the least error (hedging + absorption): seeds are
    resampled with replacement; each resample's best mu is the argmin of its mean error."""
    error_SM = table.pivot(index="seed", columns="mu", values="error")
    mus = error_SM.columns.to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(error_SM), size=(n_resamples, len(error_SM)))
    best = mus[error_SM.to_numpy()[picks].mean(axis=1).argmin(axis=1)]
    return float(np.quantile(best, 0.025)), float(np.quantile(best, 0.975))
