"""BatchTopK SAEs on feature models: the expected training loss and its exact optimum.

A BatchTopK SAE keeps the k * B largest contributions h_si ||d_i|| of a batch of B samples.
As B grows, that is keeping every (state, latent) pair whose score is above one shared
threshold t, the score at which the kept pairs' probability mass reaches k:

    kept fraction f_si = 1 above t, 0 below; the pair at t keeps (k - mass above) / p_s of
    its samples (a state is an atom, so the batch splits it); t = 0 and everything positive
    is kept when the positive scores' mass is at most k.
    loss = sum_s p_s E_f ||x_s - x_hat_s||^2          (E[L0] = min(k, mass of positive scores))

This is the expected-loss form (the population loss training descends), chosen over the
inference form (a JumpReLU with one fixed threshold) because it is what the trained weights
optimise; the inference threshold a trained SAE converges to is then t, reported as every
latent's `threshold` (0 when the budget does not bind: any t below the smallest kept score
gives the same SAE). With unit decoder rows scores are codes. A region fixes the kept set K_i
of every latent (a super-level set of an affine function, so one of ReLU's separable sets)
and, when the budget binds, the pair (s*, i*) on the threshold; its closure (theory.gated):

* budget slack (mass(K) <= k): pre >= 0 on kept pairs, <= 0 on the others (the ReLU region
  at l1 = 0);
* budget binding (mass(K) < k < mass(K) + p_s*): state s* becomes two cells, one with
  i* kept (weight k - mass(K)) and one without; kept pre >= pre_s*i* >= every other pre,
  pre_s*i* >= 0;
* mass(K) = k exactly: kept pre >= 0 and >= every other pre.

Width <= k never binds the budget: BatchTopK is then the ReLU SAE at l1 = 0.
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
    _Fits,
    _region_bound,
    _regions,
    firing_rows,
    global_optimum,
    separable_masks,
)
from theory.sae import SAEParams, SAESpec

MASS_TOL = 1e-12  # kept masses this close to k fill the budget exactly


def kept_fractions(world: NumericFeatureModel, params: SAEParams, k: int) -> np.ndarray:
    """(S, width) fraction of each state's samples that keep each latent (scores descending,
    ties to the lower state then latent index, until the mass reaches k)."""
    scores_SK = np.maximum(pre_activations(world, params), 0.0) * np.linalg.norm(
        params.decoder, axis=1
    )
    S, width = scores_SK.shape
    order = np.argsort(-scores_SK.ravel(), kind="stable")
    fractions = np.zeros(S * width)
    mass = 0.0
    for pair in order:
        s = pair // width
        if scores_SK.ravel()[pair] <= 0 or mass >= k - MASS_TOL:
            break
        p = world.probabilities[s]
        fractions[pair] = min(1.0, (k - mass) / p) if p > 0 else 1.0
        mass += p * fractions[pair]
    return fractions.reshape(S, width)


def batchtopk_codes(world: NumericFeatureModel, params: SAEParams, k: int) -> np.ndarray:
    """(S, width) expected codes: relu(pre) times the kept fraction."""
    relu_SK = np.maximum(pre_activations(world, params), 0.0)
    return relu_SK * kept_fractions(world, params, k)


def batchtopk_loss(world: NumericFeatureModel, params: SAEParams, k: int) -> float:
    """Exact expected training loss of a BatchTopK SAE (see the module docstring)."""
    fractions_SK = kept_fractions(world, params, k)
    relu_SK = np.maximum(pre_activations(world, params), 0.0)
    full_SK = fractions_SK >= 1.0
    partial = np.argwhere((fractions_SK > 0) & ~full_SK)
    weight_S = world.probabilities.copy()
    loss = 0.0
    for s, i in partial:  # the threshold's state: a mixture of keeping i and not
        f = fractions_SK[s, i]
        with_SK = full_SK.copy()
        with_SK[s, i] = True
        only = np.zeros_like(weight_S)
        only[s] = f * world.probabilities[s]
        loss += gated_loss(world, params, relu_SK * with_SK, only)
        weight_S[s] *= 1 - f
    return loss + gated_loss(world, params, relu_SK * full_SK, weight_S)


def batchtopk_optimum(
    model: FeatureModel | NumericFeatureModel, spec: SAESpec, seed: int = 0
) -> Optimum:
    """The exact optimum of the expected BatchTopK loss (`spec.k` codes per sample on average)."""
    world = model.numeric() if isinstance(model, FeatureModel) else model
    k = spec.k
    if spec.width <= k:
        relu = global_optimum(world, SAESpec(spec.width, decoder_bias=spec.decoder_bias), seed)
        params = _with_threshold(relu.params, 0.0)
        return Optimum(params, batchtopk_loss(world, params, k), relu.active, relu.regions_tried)
    silent = _with_threshold(silent_params(world, spec), 0.0)
    return gated_optimum(
        world,
        spec,
        _batchtopk_regions(world, spec, batchtopk_loss(world, silent, k)),
        silent,
        lambda params: batchtopk_loss(world, params, k),
        lambda params: batchtopk_codes(world, params, k),
        lambda params, region: _finish(world, params, region),
        seed,
    )


def _with_threshold(params: SAEParams, t: float) -> SAEParams:
    return dataclasses.replace(params, threshold=np.full(len(params.encoder_bias), t))


def _finish(world: NumericFeatureModel, params: SAEParams, region: GatedRegion) -> SAEParams:
    """The inference threshold: the score on the threshold pair, the smallest kept score when
    the kept mass is exactly k, 0 when the budget is slack."""
    kind, partial = region.tag
    if kind == "slack":
        return _with_threshold(params, 0.0)
    pre_SK = pre_activations(world, params)
    if kind == "binding":
        s, i = partial
        return _with_threshold(params, float(pre_SK[s, i]))
    return _with_threshold(params, float(pre_SK[region.active.T > 0].min()))


def _batchtopk_regions(
    world: NumericFeatureModel, spec: SAESpec, to_beat: float
) -> list[GatedRegion]:
    S = len(world.states)
    p = world.probabilities
    k = spec.k
    fits = _fit_residuals(world, spec.decoder_bias)
    masks = separable_masks(world)
    full = 2**S - 1
    regions = []
    for chosen in _regions(fits, masks, spec.width, full, to_beat):
        chosen_masks = list(masks[list(chosen)])
        active = firing_rows(chosen_masks, S)
        mass = float((active @ p).sum())
        bound = float(_region_bound(fits, chosen_masks, 0, full))
        if mass <= k + MASS_TOL:
            regions.append(GatedRegion(world, active, _slack(active), 0.0, bound, ("slack", None)))
        if abs(mass - k) <= MASS_TOL:
            regions.append(
                GatedRegion(world, active, _pairwise(active), 0.0, bound, ("exact", None))
            )
        if mass >= k - MASS_TOL:
            continue
        for s, i in np.argwhere(active.T == 0):
            if mass + p[s] <= k + MASS_TOL:
                continue
            regions.append(_binding(world, fits, chosen_masks, active, (s, i), k, mass))
    return [r for r in regions if r.bound < to_beat]


def _slack(active: np.ndarray) -> np.ndarray:
    width, S = active.shape
    side = np.where(active, 1.0, -1.0)
    return np.stack(
        [single_constraint(S, width, (s, i, side[i, s])) for i in range(width) for s in range(S)]
    )


def _pairwise(active: np.ndarray, skip: tuple[int, int] | None = None) -> np.ndarray:
    """kept pre >= 0 and >= every dropped pre (except the pair `skip`)."""
    width, S = active.shape
    kept = [tuple(x) for x in np.argwhere(active.T > 0)]
    dropped = [tuple(x) for x in np.argwhere(active.T == 0) if tuple(x) != skip]
    rows = [single_constraint(S, width, (s, i, 1.0)) for s, i in kept]
    rows += [
        single_constraint(S, width, (s, i, 1.0), (t, j, -1.0)) for s, i in kept for t, j in dropped
    ]
    return np.stack(rows)


def _binding(
    world: NumericFeatureModel,
    fits: _Fits,
    chosen_masks: list[int],
    active: np.ndarray,
    pair: tuple[int, int],
    k: int,
    mass: float,
) -> GatedRegion:
    """The region whose threshold sits on `pair` = (s*, i*): s* split into a cell without i*
    (index s*) and one with it (index S)."""
    s_star, i_star = int(pair[0]), int(pair[1])
    S = len(world.states)
    p = world.probabilities
    fraction = (k - mass) / p[s_star]
    cell_p = np.append(p, fraction * p[s_star])
    cell_p[s_star] *= 1 - fraction
    split = np.append(np.arange(S), s_star)
    cells = dataclasses.replace(
        world,
        patterns=world.patterns[split],
        probabilities=cell_p,
        state_magnitudes=None if world.state_magnitudes is None else world.state_magnitudes[split],
    )
    width = len(active)
    cell_active = np.hstack([active, active[:, s_star : s_star + 1]])
    cell_active[i_star, S] = 1.0
    threshold = (S, i_star, 1.0)  # pre on the threshold pair, read on its "with" cell
    rows = [single_constraint(S + 1, width, threshold)]
    for s, i in np.argwhere(active.T > 0):
        rows.append(single_constraint(S + 1, width, (s, i, 1.0), (S, i_star, -1.0)))
    for t, j in np.argwhere(active.T == 0):
        if (t, j) != (s_star, i_star):
            rows.append(single_constraint(S + 1, width, threshold, (t, j, -1.0)))
    with_masks = list(chosen_masks)
    with_masks[i_star] = with_masks[i_star] | (1 << s_star)
    full = 2**S - 1
    bound = fraction * float(_region_bound(fits, with_masks, 0, full)) + (1 - fraction) * float(
        _region_bound(fits, chosen_masks, 0, full)
    )
    return GatedRegion(
        cells, cell_active, np.stack(rows), 0.0, bound, ("binding", (s_star, i_star))
    )
