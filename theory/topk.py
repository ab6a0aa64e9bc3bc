"""TopK SAEs on feature models: codes, exact loss and the exact optimum.

Each state keeps its k largest contributions h_i ||d_i|| (the toolkit's TopK ranks by
contribution), among the positive ones:

    h_si = relu(pre_si) * [i is among the k largest relu(pre_s.) ||d_.|| on state s]
    loss = E ||x - x_hat||^2                  (no sparsity term: k is the sparsity)

With unit decoder rows the contribution is the code itself. A region fixes the set A_s of kept
latents on every state (|A_s| <= k); its closure (theory.gated) is

    pre_si >= 0                for i in A_s,
    pre_si <= pre_sj           for i not in A_s, j in A_s, when |A_s| = k (i lost the ranking),
    pre_si <= 0                for i not in A_s, when |A_s| < k (nothing positive was dropped).

A latent's kept states need not be one half-space (it can lose the ranking on some), so every
subset of states is a candidate per latent; the subspace-fit bound of theory.optimum prunes
the tuples. With width <= k nothing is ever dropped: TopK is then the ReLU SAE at l1 = 0, whose
optimum theory.optimum finds (closed form at width 1).
"""

from __future__ import annotations

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
    global_optimum,
)
from theory.sae import SAEParams, SAESpec


def topk_codes(world: NumericFeatureModel, params: SAEParams, k: int) -> np.ndarray:
    """(S, width) codes: each state's k largest contributions (ties to the lower index)."""
    relu_SK = np.maximum(pre_activations(world, params), 0.0)
    scores_SK = relu_SK * np.linalg.norm(params.decoder, axis=1)
    rank_SK = np.argsort(np.argsort(-scores_SK, axis=1, kind="stable"), axis=1)
    return relu_SK * (rank_SK < k)


def topk_loss(world: NumericFeatureModel, params: SAEParams, k: int) -> float:
    """Exact expected loss E ||x - x_hat||^2 of a TopK SAE."""
    return gated_loss(world, params, topk_codes(world, params, k), world.probabilities)


def topk_optimum(
    model: FeatureModel | NumericFeatureModel, spec: SAESpec, seed: int = 0
) -> Optimum:
    """The exact optimum of a TopK SAE (`spec.k` per state), see the module docstring."""
    world = model.numeric() if isinstance(model, FeatureModel) else model
    k = spec.k
    if spec.width <= k:
        relu = global_optimum(world, SAESpec(spec.width, decoder_bias=spec.decoder_bias), seed)
        loss = topk_loss(world, relu.params, k)
        return Optimum(relu.params, loss, relu.active, relu.regions_tried)
    silent = silent_params(world, spec)
    return gated_optimum(
        world,
        spec,
        _topk_regions(world, spec, topk_loss(world, silent, k)),
        silent,
        lambda params: topk_loss(world, params, k),
        lambda params: topk_codes(world, params, k),
        lambda params, region: params,
        seed,
    )


def _topk_regions(world: NumericFeatureModel, spec: SAESpec, to_beat: float) -> list[GatedRegion]:
    S = len(world.states)
    width, k = spec.width, spec.k
    fits = _fit_residuals(world, spec.decoder_bias)
    masks = np.arange(2**S)  # any set of states: a latent can lose the ranking anywhere
    full = 2**S - 1
    regions = []
    for chosen in _regions(fits, masks, width, full, to_beat):
        active = firing_rows(masks[list(chosen)], S)
        if (active.sum(0) > k).any():
            continue
        bound = float(_region_bound(fits, list(masks[list(chosen)]), 0, full))
        regions.append(GatedRegion(world, active, _topk_constraints(active, k), 0.0, bound, chosen))
    return regions


def _topk_constraints(active: np.ndarray, k: int) -> np.ndarray:
    width, S = active.shape
    rows = []
    for s in range(S):
        kept = np.nonzero(active[:, s])[0]
        dropped = np.nonzero(active[:, s] == 0)[0]
        rows += [single_constraint(S, width, (s, i, 1.0)) for i in kept]
        for i in dropped:
            if len(kept) == k:
                rows += [single_constraint(S, width, (s, j, 1.0), (s, i, -1.0)) for j in kept]
            else:
                rows.append(single_constraint(S, width, (s, i, -1.0)))
    return np.stack(rows)
