"""`toy scenarios`: trained ReLU-L1 SAEs on the hedging paper's two-feature worlds next to theory.

Every (scenario, L1, width) configuration is trained `restarts` times from the family's random
tied initialisation (decoder rows of norm 0.1), all in ONE stack; the restart with the lowest
held-out loss stands for the configuration (a single latent has local minima: tracking the child,
the parent's complement, or dying). Its folded parameters in the feature basis are set next to
theory's global optimum (tables components and losses); table restarts holds every restart's exact
expected loss and its gap to the optimum, so how often gradient descent reaches the optimum is a
measurement too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from theory.architectures import architecture_loss
from theory.config import (
    config_to_json,
    require_choice,
    require_numbers,
    require_positive_int,
    require_positive_ints,
)
from theory.features import PAPER_L1, SCENARIOS, FeatureModel, WorldConfig, scenario
from theory.optimum import Optimum, global_optimum
from theory.predictions import catalogue
from theory.sae import SAEParams, SAESpec, expected_loss
from toymodels.experiments.common import (
    EmbeddedWorlds,
    best_of_restarts,
    cosine_distance,
    held_out_loss,
    match_latents,
    one_torch_thread,
)
from toymodels.runs import Run
from toymodels.sae import make_sae
from toymodels.train import TrainConfig, to_feature_basis, train


@dataclass(frozen=True)
class FitConfig:
    """How toy SAEs are fitted to a small feature model (the defaults reach theory's optimum,
    see the tests)."""

    restarts: int = 16
    """Initialisations per configuration; the best held-out loss wins (each lands on the
    optimum with probability >= 3/8, measured)."""
    d_in: int = 50
    """Dimension the features are embedded in (orthonormal directions)."""
    held_out_samples: int = 32_768
    """Fresh samples on which restarts are compared."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            samples=300_000,
            batch_size=1024,
            lr=1e-2,
            decay_fraction=0.3,
            device="cpu",
            progress=False,
        )
    )

    def __post_init__(self) -> None:
        for name in ("restarts", "d_in", "held_out_samples"):
            require_positive_int(name, getattr(self, name))


class Fits(NamedTuple):
    """Per config: the best restart's parameters and every restart's, in the feature basis (not
    folded)."""

    best: list[SAEParams]
    restarts: list[list[SAEParams]]


def train_saes(
    worlds: Sequence[FeatureModel],
    configs: Sequence[tuple[int, float, int]],
    fit: FitConfig,
    spec: SAESpec | None = None,
    sae_options: dict | None = None,
) -> Fits:
    """Train configs (world index, l1, width) x restarts as one stack; per config, the best
    restart (lowest held-out loss) and all restarts. `spec` gives the variant (architecture
    with its k, l0 or matryoshka levels and mu, tied, decoder bias); its width and l1 are the
    configs' (l1 is 0 for every architecture but relu-l1 and matryoshka). `sae_options` are
    further fields of the architecture's SAE config (e.g. a JumpReLU's estimator)."""
    spec = spec or SAESpec()
    members = [c for _ in range(fit.restarts) for c in configs]
    seed = fit.train.seed
    # Each restart draws its own data stream: restarts sharing one stream were measured to fall
    # into the same wrong basin together. Held-out losses use common samples per world, so
    # restarts of one configuration are compared on identical data.
    n_worlds = len(worlds)
    data = EmbeddedWorlds(
        [w for _ in range(fit.restarts) for w in worlds],
        [r * n_worlds + w for r in range(fit.restarts) for w, _, _ in configs],
        fit.d_in,
        seed,
    )
    held_out = EmbeddedWorlds(worlds, [w for w, _, _ in members], fit.d_in, seed)
    sae = make_sae(
        spec.architecture,
        d_in=fit.d_in,
        n_latents=max(width for _, _, width in members),
        n_members=len(members),
        widths=[width for _, _, width in members],
        tied=spec.tied,
        decoder_bias=spec.decoder_bias,
        generator=torch.Generator().manual_seed(seed),
        **_sparsity(spec, [l1 for _, l1, _ in members]),
        **(sae_options or {}),
    )
    train(sae, data, fit.train)
    losses = held_out_loss(sae, held_out, fit.held_out_samples, seed=seed + 1)
    params = to_feature_basis(sae, data.directions_ND)
    n = len(configs)  # members are restart-major
    return Fits(
        [params[m] for m in best_of_restarts(losses, n)],
        [params[c::n] for c in range(n)],
    )


def _sparsity(spec: SAESpec, l1_per_member: list[float]) -> dict:
    """The toy SAE config's sparsity hyperparameters for `spec`'s architecture."""
    if spec.architecture == "relu-l1":
        return {"l1": l1_per_member}
    if spec.architecture == "matryoshka":  # the toolkit's matryoshka SAE on ReLU-L1 latents
        return {
            "l1": l1_per_member,
            "inner": "relu-l1",
            "levels": list(spec.levels or (spec.width,)),
            "mu": spec.mu,
            "level_sparsity": spec.level_sparsity,
        }
    if any(l1_per_member):
        raise ValueError(f"l1 applies to relu-l1 only; {spec.architecture} has none")
    if spec.architecture == "jumprelu":
        return {"l0_coefficient": float(spec.l0)}
    return {"k": spec.k}


def compare(world: FeatureModel, spec: SAESpec, trained: SAEParams, optimum: Optimum) -> dict:
    """Trained (folded, latents matched to the optimum's, within their levels for a matryoshka
    spec) against theory's optimum, the loss by `spec`'s architecture."""
    folded = trained.folded()
    # latents of one level are interchangeable, of different levels not
    group_K = spec.loss_levels().prefix_JK.sum(0)
    order = np.concatenate(
        [
            np.flatnonzero(group_K == g)[
                match_latents(folded.decoder[group_K == g], optimum.params.decoder[group_K == g])
            ]
            for g in sorted(set(group_K), reverse=True)
        ]
    )
    matched = SAEParams(
        folded.encoder[order],
        folded.encoder_bias[order],
        folded.decoder[order],
        folded.decoder_bias,
        None if folded.threshold is None else folded.threshold[order],
    )
    measured_loss = architecture_loss(world.numeric(), trained, spec)
    return {
        "params": matched,
        "decoder_cosine_distance": [
            cosine_distance(a, b)
            for a, b in zip(matched.decoder, optimum.params.decoder, strict=True)
        ],
        "decoder_child_components": {
            "measured": matched.decoder[:, 1:].tolist(),
            "theory": optimum.params.decoder[:, 1:].tolist(),
        },
        "expected_loss": measured_loss,
        "loss_gap": measured_loss - optimum.loss,
    }


QUANTITIES = {  # table quantity -> (parameter, feature index or None)
    "decoder_parent": ("decoder", 0),
    "decoder_child": ("decoder", 1),
    "encoder_parent": ("encoder", 0),
    "encoder_child": ("encoder", 1),
    "encoder_bias": ("encoder_bias", None),
}


@dataclass(frozen=True)
class ScenariosConfig:
    """`toy scenarios`: width-1 and width-2 ReLU-L1 SAEs on the hedging paper's two-feature
    scenarios, each next to theory's exact optimum."""

    scenarios: tuple[str, ...] = tuple(SCENARIOS)
    """Scenarios to train on."""
    l1_values: tuple[float, ...] = PAPER_L1
    """L1 coefficients."""
    widths: tuple[int, ...] = (1, 2)
    """SAE widths."""
    fit: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self) -> None:
        for name in self.scenarios:
            require_choice("scenario", name, SCENARIOS)
        require_numbers("l1_values", self.l1_values, 0)
        require_positive_ints("widths", self.widths)


@one_torch_thread
def run_scenarios(config: ScenariosConfig, out: str | Path) -> Run:
    """Train every scenario x L1 x width (one stack) and write the comparison run folder."""
    worlds = [scenario(name) for name in config.scenarios]
    configs = [
        (w, float(l1), int(width))
        for w in range(len(worlds))
        for l1 in config.l1_values
        for width in config.widths
    ]
    seed = config.fit.train.seed
    run = Run(
        out,
        config,
        seeds={"sae_init_and_data": seed, "held_out": seed + 1},
        kind="toy-scenarios",
    )
    fits = train_saes(worlds, configs, config.fit)
    rows, losses, restarts = [], [], []
    for (w, l1, width), params, tries in zip(configs, fits.best, fits.restarts, strict=True):
        optimum = global_optimum(worlds[w], SAESpec(width, l1))
        result = compare(worlds[w], SAESpec(width, l1), params, optimum)
        key = {"scenario": config.scenarios[w], "l1": l1, "width": width}
        numeric = worlds[w].numeric()
        restarts += [
            {**key, "restart": r, "expected_loss": loss, "loss_gap": loss - optimum.loss}
            for r, loss in enumerate(float(expected_loss(numeric, t, l1)) for t in tries)
        ]
        for latent in range(width):
            for quantity, (field_name, feature) in QUANTITIES.items():
                predicted = getattr(optimum.params, field_name)[latent]
                measured = getattr(result["params"], field_name)[latent]
                if feature is not None:
                    predicted, measured = predicted[feature], measured[feature]
                rows.append(
                    {
                        **key,
                        "latent": latent,
                        "quantity": quantity,
                        "predicted": float(predicted),
                        "measured": float(measured),
                        "difference": float(measured - predicted),
                    }
                )
        losses.append(
            {
                **key,
                "predicted_loss": optimum.loss,
                "measured_loss": result["expected_loss"],
                "loss_gap": result["loss_gap"],
                "max_decoder_cosine_distance": max(result["decoder_cosine_distance"]),
            }
        )
    components, loss_table = pd.DataFrame(rows), pd.DataFrame(losses)
    run.write_table("components", components)
    run.write_table("losses", loss_table)
    run.write_table("restarts", pd.DataFrame(restarts))
    child = components[components.quantity == "decoder_child"]
    run.write_metrics(
        {
            "max_decoder_cosine_distance": float(loss_table.max_decoder_cosine_distance.max()),
            "max_decoder_child_error": float(child.difference.abs().max()),
            "max_loss_gap": float(loss_table.loss_gap.max()),
            "n_configurations": len(configs),
            "formulas": {p.name: p.latex for p in catalogue()},
        }
    )
    return run


@dataclass(frozen=True)
class ToyTrainConfig:
    """`toy train`: one SAE (any architecture theory solves) trained on a feature model, next to
    theory's optimum for the same architecture."""

    world: WorldConfig = field(default_factory=WorldConfig)
    sae: SAESpec = field(default_factory=SAESpec)
    fit: FitConfig = field(
        default_factory=lambda: FitConfig(
            restarts=1,
            train=TrainConfig(
                samples=2_000_000, batch_size=1024, lr=1e-2, device="cpu", progress=False
            ),
        )
    )


@one_torch_thread
def train_against_theory(config: ToyTrainConfig) -> dict:
    """Train the SAE, find theory's optimum, and return one JSON-ready record: the trained
    parameters in the feature basis (folded, latents matched to the optimum's), its exact
    expected loss, `derive`'s record under "theory" and their "difference"."""
    from theory.derive import optimum_record

    model, spec = config.world.feature_model(), config.sae
    start = time.perf_counter()
    # the SAE trains on the world as sampled (noise included); theory's optimum and the exact
    # losses are of its noiseless states (the state coordinates: the feature basis unless the
    # world has cosines)
    (trained,) = train_saes([model], [(0, float(spec.l1), spec.width)], config.fit, spec).best
    clean = model.noiseless()
    optimum = global_optimum(clean, spec, seed=config.fit.train.seed)
    result = compare(clean, spec, trained, optimum)
    return {
        **result["params"].to_json(),
        "expected_loss": result["expected_loss"],
        "theory": {**optimum_record(clean, spec, optimum), "model": model.describe()},
        "difference": {
            "decoder_cosine_distance": result["decoder_cosine_distance"],
            "decoder_child_components": result["decoder_child_components"],
            "loss_gap": result["loss_gap"],
        },
        "training": {**config_to_json(config.fit), "architecture": spec.architecture},
        "seconds": time.perf_counter() - start,
    }
