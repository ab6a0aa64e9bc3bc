"""JumpReLU SAEs on feature models: codes, exact loss and the exact optimum.

A latent fires when its pre-activation exceeds its own threshold theta_i >= 0, and the loss
pays l0 per firing latent:

    h_si = pre_si * [pre_si > theta_i]
    loss = E ||x - x_hat||^2 + l0 * E[#{i : h_i != 0}]

Folding decoder norms rescales pre-activations and thresholds together, so unit decoder rows
lose nothing. A region fixes the set A_i of states latent i fires on; each A_i is a super-level
set of an affine function, so the same separable sets as ReLU's (theory.optimum), chosen
independently per latent. Inside it the penalty is the constant l0 sum_i P(A_i), and a
threshold exists iff the firing pre-activations are non-negative and none is below a silent
one. The closure (theory.gated) is therefore

    pre_si >= 0                for s in A_i,
    pre_si >= pre_ti           for s in A_i, t not in A_i,

and the threshold realised is theta_i = max(0, max over silent states of pre_ti): the largest
value that keeps the silent states silent (pre > theta is strict). The subspace-fit bound of
theory.optimum plus the region's penalty prunes the regions.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from theory.features import FeatureModel, NumericFeatureModel
from theory.gated import (
    GatedRegion,
    gated_loss,
    gated_optimum,
    pre_activations,
    silent_params,
    single_constraint,
)
from theory.optimum import (
    Optimum,
    _fit_residuals,
    _region_bound,
    _regions,
    firing_rows,
    separable_masks,
)
from theory.sae import SAEParams, SAESpec


def jumprelu_codes(world: NumericFeatureModel, params: SAEParams) -> np.ndarray:
    """(S, width) codes pre * [pre > threshold]."""
    pre_SK = pre_activations(world, params)
    return np.where(pre_SK > params.threshold, pre_SK, 0.0)


def jumprelu_loss(world: NumericFeatureModel, params: SAEParams, l0: float) -> float:
    """Exact expected loss E ||x - x_hat||^2 + l0 E[L0] of a JumpReLU SAE."""
    fired_SK = pre_activations(world, params) > params.threshold
    mse = gated_loss(world, params, jumprelu_codes(world, params), world.probabilities)
    return mse + l0 * float(world.probabilities @ fired_SK.sum(1))


def jumprelu_optimum(
    model: FeatureModel | NumericFeatureModel, spec: SAESpec, seed: int = 0
) -> Optimum:
    """The exact optimum of a JumpReLU SAE with L0 coefficient `spec.l0`."""
    world = model.numeric() if isinstance(model, FeatureModel) else model
    l0 = float(spec.l0)
    silent = _with_thresholds(world, silent_params(world, spec))
    return gated_optimum(
        world,
        spec,
        jumprelu_regions(world, spec, jumprelu_loss(world, silent, l0), l0),
        silent,
        lambda params: jumprelu_loss(world, params, l0),
        lambda params: jumprelu_codes(world, params),
        lambda params, region: _with_thresholds(world, params, region.active),
        seed,
    )


def jumprelu_regions(
    world: NumericFeatureModel, spec: SAESpec, to_beat: float, l0: float
) -> list[GatedRegion]:
    """Every tuple of per-latent firing sets whose bound (subspace fit + l0 E[L0]) beats
    `to_beat`."""
    S = len(world.states)
    fits = _fit_residuals(world, spec.decoder_bias)
    masks = separable_masks(world)
    full = 2**S - 1
    regions = []
    for chosen in _regions(fits, masks, spec.width, full, to_beat):
        active = firing_rows(masks[list(chosen)], S)
        penalty = l0 * float((active @ world.probabilities).sum())
        bound = float(_region_bound(fits, list(masks[list(chosen)]), 0, full)) + penalty
        if bound < to_beat:
            regions.append(
                GatedRegion(world, active, threshold_constraints(active), penalty, bound, chosen)
            )
    return regions


def threshold_constraints(active: np.ndarray) -> np.ndarray:
    """Closure of per-latent thresholds: firing pre >= 0 and >= every silent pre of the latent."""
    width, S = active.shape
    rows = []
    for i in range(width):
        on, off = np.nonzero(active[i])[0], np.nonzero(active[i] == 0)[0]
        for s in on:
            rows.append(single_constraint(S, width, (s, i, 1.0)))
            rows += [single_constraint(S, width, (s, i, 1.0), (t, i, -1.0)) for t in off]
    if not rows:
        return np.zeros((0, S, width))
    return np.stack(rows)


def _with_thresholds(
    world: NumericFeatureModel, params: SAEParams, active: np.ndarray | None = None
) -> SAEParams:
    """Thresholds max(0, largest pre-activation on the states each latent must stay silent on
    (all of them when `active` is None))."""
    pre_SK = pre_activations(world, params)
    silent_SK = np.ones_like(pre_SK, dtype=bool) if active is None else active.T == 0
    highest = np.where(silent_SK, pre_SK, -np.inf).max(0)
    return dataclasses.replace(params, threshold=np.maximum(highest, 0.0))
