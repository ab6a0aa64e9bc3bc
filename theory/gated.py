"""Exact optima of gated SAEs (TopK, BatchTopK, JumpReLU): regions cut out by order constraints.

The ReLU-L1 search of theory.optimum carries over. With unit decoder rows e_i and untied
parameters, every pre-activation is affine in the input, pre_si = z_s . theta_i with
z_s = (x_s, 1), and a gated SAE keeps some of them as codes: which ones (the region) is decided
by comparisons between pre-activations, zero and thresholds. Fixing the region fixes

* the cells the loss sums over: the states, or (BatchTopK) a state split in two by the batch
  keeping a fraction of one of its codes,
* which code is kept on which cell (`active`), so the reconstruction error is the same convex
  quadratic in (theta, b) as a ReLU region at l1 = 0,
* a constant penalty (JumpReLU's l0 E[L0]),
* the closure, homogeneous linear constraints sum C[r, c, i] pre_ci >= 0 on theta: TopK's
  ordering, a threshold between kept and dropped pre-activations, ...

so `theory.optimum._inner_solve` solves each region's closure exactly for fixed directions and
`_search_region` searches the directions (BFGS from several starts, width 1 adding the closed
form's stationary points). Unlike ReLU's, these losses jump on the region boundary (a code
that ties with the one it displaces, or equals its threshold, is dropped), so the closure's
optimum can be an infimum the SAE only approaches: the parameters returned are the closure's
optimum moved by 1e-9 (relative) toward a strictly interior point of the region (a
margin-maximising LP that also proves the region is non-empty), and the loss returned is the
true loss of those parameters.

"Exact" therefore means: global over the regions with an interior (every one whose lower
bound, subspace fit plus penalty, beats the best is searched; a tie held exactly is a boundary
point whose true loss is that of the region its tie-break picks, whose closure contains it),
the codes and biases of each region solved exactly for the directions found, directions by
local search from several starts as theory.optimum does for width >= 2; the value is the
infimum of the loss up to the 1e-9 nudge. Infima can sit at infinity: TopK with k = 1, two
latents and a decoder bias reconstructs the four 2-feature states ever better with nearly
parallel decoders, codes near 600 and a decoder bias near -600 along them; the search then
stops where BFGS does (loss about 1e-7) and the numeric minimiser similarly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import scipy.optimize

from theory.features import NumericFeatureModel
from theory.optimum import (
    TIE_TOL,
    Optimum,
    _affine_design,
    _direction_starts,
    _search_region,
    _width1_points,
)
from theory.sae import SAEParams, SAESpec

NUDGE = 1e-9  # relative step from the closure's optimum into the region's interior
MIN_MARGIN = 1e-9  # a region whose largest margin is smaller has no interior


@dataclass(frozen=True)
class GatedRegion:
    """One region of a gated SAE (see the module docstring)."""

    cells: NumericFeatureModel
    """States the loss sums over, with their weights (a split state appears twice)."""
    active: np.ndarray
    """(k, C) 1 where latent i's code is kept on cell c."""
    constraints: np.ndarray
    """(m, C, k) closure: sum_ci C[r, c, i] pre_ci >= 0 (strict inside the region)."""
    penalty: float
    """Constant added to the reconstruction error inside the region."""
    bound: float
    """Lower bound on the region's loss (penalty included)."""
    tag: object = None
    """What the architecture needs to finish parameters (e.g. the partial pair)."""


def region_interior(region: GatedRegion) -> np.ndarray | None:
    """theta (k, n + 1) strictly inside the region (every constraint >= a positive margin), or
    None when the region has no interior."""
    Z = _affine_design(region.cells.states)
    m, C, k = region.constraints.shape
    rows = np.einsum("rci,cj->rij", region.constraints, Z).reshape(m, -1)
    size = rows.shape[1]
    cost = np.zeros(size + 1)
    cost[-1] = -1.0  # maximise the margin
    A_ub = np.hstack([-rows, np.ones((m, 1))])
    bounds = [(-1.0, 1.0)] * size + [(None, 1.0)]
    res = scipy.optimize.linprog(cost, A_ub=A_ub, b_ub=np.zeros(m), bounds=bounds)
    if res.status != 0 or -res.fun <= MIN_MARGIN:
        return None
    return res.x[:size].reshape(k, -1)


def folded_params(directions: np.ndarray, theta: np.ndarray, bias: np.ndarray) -> SAEParams:
    """Unit decoder rows `directions`, pre-activations z . theta_i (theta_i = (w_i, c_i)):
    the encoder reads x - b_dec, so its bias is c_i + w_i . b."""
    encoder = theta[:, :-1].copy()
    return SAEParams(encoder, theta[:, -1] + encoder @ bias, directions.copy(), bias.copy())


def gated_optimum(
    world: NumericFeatureModel,
    spec: SAESpec,
    regions: Iterable[GatedRegion],
    silent: SAEParams,
    exact_loss: Callable[[SAEParams], float],
    firing: Callable[[SAEParams], np.ndarray],
    finish: Callable[[SAEParams, GatedRegion], SAEParams],
    seed: int = 0,
) -> Optimum:
    """Best SAE over `regions` (searched in order of their bounds), starting from `silent`
    (every latent dead). `exact_loss` is the architecture's true loss, `firing` its (S, k)
    firing indicator, `finish` sets thresholds on a region's realised parameters."""
    rng = np.random.default_rng(seed)
    inner_spec = SAESpec(width=spec.width, decoder_bias=spec.decoder_bias)
    best = _scored(silent, exact_loss, firing)
    tried = 0
    for region in sorted(regions, key=lambda r: r.bound):
        if region.bound > best.loss - 1e-12:
            break
        interior = region_interior(region)
        if interior is None:
            continue
        tried += 1
        # the separator starts stay: the gated guarantee was measured with them
        starts = _direction_starts(region.cells, region.active, rng, separators=True)
        if spec.width == 1 and len(region.cells.states) == len(world.states):
            starts += [e for _, e in _width1_points(region.cells, inner_spec, region.active, 0.0)]
        found = _search_region(
            region.cells,
            inner_spec,
            region.active,
            0.0,
            starts,
            best.loss - region.penalty,
            region.constraints,
        )
        for directions, inner in found:
            theta = np.stack(inner.code_params)
            params = _nudged(directions, theta, inner.bias, interior, region, finish, exact_loss)
            candidate = _scored(params, exact_loss, firing)
            if _better(candidate, best, world):
                best = candidate
    return Optimum(best.params, best.loss, best.active, tried)


def _nudged(
    directions: np.ndarray,
    theta: np.ndarray,
    bias: np.ndarray,
    interior: np.ndarray,
    region: GatedRegion,
    finish: Callable[[SAEParams, GatedRegion], SAEParams],
    exact_loss: Callable[[SAEParams], float],
) -> SAEParams:
    """The closure's optimum moved a hair into the region; latents kept nowhere are zeroed
    (zero encoder and decoder, encoder bias -1: never kept, never ranked above a kept code)."""
    scale = max(float(np.abs(theta).max()), 1e-12) / float(np.abs(interior).max())
    alive = region.active.any(axis=1)
    tries = []
    for step in (NUDGE, 1e3 * NUDGE):  # the larger step if rounding defeats the first
        moved = theta + step * scale * interior
        params = folded_params(directions, moved, bias)
        params = SAEParams(
            np.where(alive[:, None], params.encoder, 0.0),
            np.where(alive, params.encoder_bias, -1.0),
            np.where(alive[:, None], params.decoder, 0.0),
            params.decoder_bias,
        )
        params = finish(params, region)
        tries.append((exact_loss(params), params))
    return min(tries, key=lambda pair: pair[0])[1]


def _scored(
    params: SAEParams,
    exact_loss: Callable[[SAEParams], float],
    firing: Callable[[SAEParams], np.ndarray],
) -> Optimum:
    fired = firing(params) > 0
    return Optimum(params, exact_loss(params), tuple(map(tuple, fired.T.tolist())), 0)


def _better(candidate: Optimum, best: Optimum, world: NumericFeatureModel) -> bool:
    """Lower loss wins; ties go to the sparser SAE (as theory.optimum's)."""
    if candidate.loss < best.loss - TIE_TOL:
        return True
    mass = float((np.array(candidate.active, dtype=float) @ world.probabilities).sum())
    best_mass = float((np.array(best.active, dtype=float) @ world.probabilities).sum())
    return candidate.loss <= best.loss + TIE_TOL and mass < best_mass - 1e-12


def silent_params(world: NumericFeatureModel, spec: SAESpec) -> SAEParams:
    """Every latent dead; the decoder bias (if any) at the mean, the best it can do alone."""
    k, n = spec.width, world.states.shape[1]
    bias = world.probabilities @ world.states if spec.decoder_bias else np.zeros(n)
    return SAEParams(np.zeros((k, n)), np.full(k, -1.0), np.zeros((k, n)), bias)


def pre_activations(world: NumericFeatureModel, params: SAEParams) -> np.ndarray:
    """(S, k) pre-activations W (x - b_dec) + b_enc."""
    return (world.states - params.decoder_bias) @ params.encoder.T + params.encoder_bias


def gated_loss(
    world: NumericFeatureModel, params: SAEParams, codes_SK: np.ndarray, weight_S: np.ndarray
) -> float:
    """sum_s weight_s ||x_s - (codes_s D + b)||^2."""
    x_hat = codes_SK @ params.decoder + params.decoder_bias
    return float(weight_S @ ((world.states - x_hat) ** 2).sum(1))


def single_constraint(C: int, k: int, *terms: tuple[int, int, float]) -> np.ndarray:
    """A (C, k) constraint row from (cell, latent, coefficient) terms."""
    row = np.zeros((C, k))
    for cell, latent, coefficient in terms:
        row[cell, latent] += coefficient
    return row
