"""Exact optima of matryoshka SAEs (ReLU-L1 latents) and the balance mu that ends absorption.

Levels are prefixes m_1 < ... < m_n = k of the latents; level j reconstructs with its prefix only
and weighs beta_j = mu^(n-j) (the outer level weighs 1):

    x_hat_j = b + sum_{i < m_j} h_i d_i
    loss = sum_j beta_j E||x - x_hat_j||^2 + l1 E sum_i w_i h_i ||d_i||

with w_i = sum_{j : i < m_j} beta_j when the L1 applies per level (the hedging paper's toy: with
levels [1, k] the inner latent pays l1 (1 + mu)), else w_i = 1 (SAESpec.loss_levels).

Exact optimum. In an activation region with fixed decoder directions the codes are the same
affine functions of a few parameters psi as for a plain SAE, so each level's error is a convex
quadratic in psi (the plain one with the codes of latents outside the level zeroed) and their
weighted sum is one convex quadratic: theory.optimum's region search applies as it is, with its
inner problem summing the levels and its lower bounds (the subspace fit of the MSE and the L1
term's) still valid: the outer level weighs 1 and holds every latent and w_i >= 1, so the loss
is at least the plain loss of the same SAE. Latents are interchangeable only within
a level, so regions are listed per level. `global_optimum(model, spec)` with a matryoshka spec is
that search (models of at most 16 states).

The balance. With a parent whose children have latents of their own in the outer levels ("read
out") and a single inner latent, the inner level wants that latent to carry everything that fires
with the parent (hedging: POSITIVE components of the read-out children in its decoder and
encoder), while the outer level's sparsity wants the children's latents to absorb the parent
(absorption: NEGATIVE encoder components, the latent switches off where a child fires). mu moves
the optimum from one to the other. `balancing_mu` is the root in mu of the inner latent's mean
ENCODER component on the read-out children: below it the encoder absorbs, above it it hedges.
(Its decoder components are >= 0 on both sides: absorption shows in the encoder, hedging moves
both, so the encoder is the component whose sign says which force wins.)

The hedging paper's toy has 17 states, beyond the region enumeration, so the optimum there is
taken over the basin the paper's toy starts in (`basin_optimum`): the inner latent fires on the
parent's states with at most r read-out children (r = 0 .. all: absorption switching it off),
latent 1 + i on read-out child i's states; each region is solved exactly on its closure. The
global optimum can lie elsewhere (a latent shared by two features); the paper's protocol starts
at the true features and stays in this basin, which is the one its figure and the balance
describe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import scipy.optimize

from theory.features import FeatureModel, NumericFeatureModel
from theory.optimum import (
    Optimum,
    _candidate,
    _direction_starts,
    _search_region,
    global_optimum,
)
from theory.sae import SAEParams, SAESpec

MAX_EXACT_STATES = 16  # beyond this the region enumeration is refused: use the basin


@dataclass(frozen=True)
class ReadOut:
    """The inner latent's components on the read-out children (means over them): decoder and
    encoder signed, hedging = mean positive decoder part, absorption = mean negative encoder
    part (the toy experiment's measures)."""

    decoder: float
    encoder: float
    hedging: float
    absorption: float


@dataclass(frozen=True)
class Balance:
    """`balancing_mu`'s answer: the root, the bracket it was searched in and the inner latent's
    read-out components at the root."""

    mu: float
    bracket: tuple[float, float]
    read_out: ReadOut


def _check(spec: SAESpec, read_out: Sequence[int], n_features: int) -> None:
    if spec.architecture != "matryoshka" or not spec.levels or spec.levels[0] != 1:
        raise ValueError(
            f"the basin (one inner latent for the parent) needs a matryoshka spec whose first "
            f"level is one latent, got "
            f"architecture {spec.architecture!r} levels {list(spec.levels)}"
        )
    if not read_out or any(not 0 <= f < n_features for f in read_out):
        raise ValueError(f"read_out must name features in 0..{n_features - 1}, got {read_out}")


def read_out_components(params: SAEParams, read_out: Sequence[int], latent: int = 0) -> ReadOut:
    """Components of `latent` (folded) on the read-out features."""
    folded = params.folded()
    decoder = folded.decoder[latent, list(read_out)]
    encoder = folded.encoder[latent, list(read_out)]
    return ReadOut(
        float(decoder.mean()),
        float(encoder.mean()),
        float(np.clip(decoder, 0, None).mean()),
        float(np.clip(-encoder, 0, None).mean()),
    )


def basin_regions(
    world: NumericFeatureModel, parent: int, read_out: Sequence[int]
) -> list[np.ndarray]:
    """Activation regions (k, S) of the basin: latent 0 on the parent's states with at most r
    read-out children firing (r = 0 .. all), latent 1 + i on read-out child i's states."""
    X = world.states
    children = [X[:, f] > 0 for f in read_out]
    count = np.sum(children, axis=0)
    return [
        np.vstack([(X[:, parent] > 0) & (count <= r), *children]).astype(float)
        for r in range(len(read_out) + 1)
    ]


def basin_optimum(
    model: FeatureModel | NumericFeatureModel,
    spec: SAESpec,
    parent: int = 0,
    read_out: Sequence[int] = (1,),
    seed: int = 0,
) -> Optimum:
    """The best SAE of `spec` over the basin's regions (`basin_regions`), each solved exactly
    on its closure by theory.optimum's direction search (started also at the true features)."""
    world = model.numeric() if isinstance(model, FeatureModel) else model
    n = world.states.shape[1]
    _check(spec, read_out, n)
    if spec.width != 1 + len(read_out):
        raise ValueError(
            f"the basin has one latent for the parent and one per read-out child: width must be "
            f"{1 + len(read_out)}, got {spec.width}"
        )
    rng = np.random.default_rng(seed)
    features = np.eye(n)[[parent, *read_out]]
    best, tried = None, 0
    for active in basin_regions(world, parent, read_out):
        starts = [*_direction_starts(world, active, rng, spec.tied), features]
        for directions, inner in _search_region(
            world, spec, active, float(spec.l1), starts, np.inf
        ):
            best = _candidate(world, spec, directions, inner, best)
        tried += 1
    return Optimum(best.params, best.loss, best.active, tried)


def matryoshka_optimum(
    model: FeatureModel | NumericFeatureModel,
    spec: SAESpec,
    parent: int = 0,
    read_out: Sequence[int] = (1,),
    seed: int = 0,
) -> Optimum:
    """The global optimum where the region enumeration allows it (at most MAX_EXACT_STATES
    states), else the basin's (`basin_optimum`)."""
    world = model.numeric() if isinstance(model, FeatureModel) else model
    if len(world.states) <= MAX_EXACT_STATES:
        return global_optimum(world, spec, seed=seed)
    return basin_optimum(world, spec, parent, read_out, seed)


def read_out_by_mu(
    model: FeatureModel | NumericFeatureModel,
    spec: SAESpec,
    mu_values: Sequence[float],
    parent: int = 0,
    read_out: Sequence[int] = (1,),
) -> list[ReadOut]:
    """The inner latent's read-out components at the basin's optimum for each mu."""
    world = model.numeric() if isinstance(model, FeatureModel) else model
    return [
        read_out_components(
            basin_optimum(world, replace(spec, mu=float(mu)), parent, read_out).params, read_out
        )
        for mu in mu_values
    ]


def balancing_mu(
    model: FeatureModel | NumericFeatureModel,
    spec: SAESpec,
    parent: int = 0,
    read_out: Sequence[int] = (1,),
    bracket: tuple[float, float] = (0.0, 1.0),
    xtol: float = 1e-6,
) -> Balance:
    """The mu at which the inner latent's mean encoder component on the read-out children
    crosses zero (absorption below, hedging above), by brentq over the basin's exact optimum.
    `spec.mu` is ignored. Refused, naming the components at the ends, when the bracket holds no
    sign change (an "unbalanceable" model)."""
    world = model.numeric() if isinstance(model, FeatureModel) else model
    _check(spec, read_out, world.states.shape[1])
    low, high = (float(v) for v in bracket)
    if not 0 <= low < high:
        raise ValueError(f"bracket must satisfy 0 <= low < high, got {bracket}")

    def encoder(mu: float) -> float:
        return read_out_by_mu(world, spec, [mu], parent, read_out)[0].encoder

    at_low, at_high = encoder(low), encoder(high)
    if at_low * at_high > 0:
        raise ValueError(
            f"no balance in mu in [{low:g}, {high:g}]: the inner latent's read-out encoder "
            f"component is {at_low:.4g} at {low:g} and {at_high:.4g} at {high:g} (same sign)"
        )
    mu = float(scipy.optimize.brentq(encoder, low, high, xtol=xtol))
    (components,) = read_out_by_mu(world, spec, [mu], parent, read_out)
    return Balance(mu, (low, high), components)
