"""Exact optima of small SAEs on feature models, by enumerating activation regions.

On a feature model an SAE latent is active on some set A of states. Inside one such region the
ReLU is the identity on A and zero elsewhere, so the loss is smooth. Writing each latent's
decoder as a unit direction e times its norm, and its norm-scaled code g_s = ||d|| h_s, the
reconstruction b + sum_i e_i g_si and the decoder-norm-weighted L1 term l1 sum_i g_si depend on
(e, g, b) only. The codes are linear in a few parameters psi_i per latent:

* untied: g_s = z_s . theta with z_s = (x_s, 1), any affine function of x;
* tied (encoder = decoder = sqrt(kappa) e): g_s = kappa e.x_s + t with kappa = ||d||^2 >= 0.

For fixed directions E the loss is therefore a convex quadratic in psi = (psi_1..psi_k, b), and
the region's closure is a set of homogeneous linear constraints on psi: codes >= 0 on A,
pre-activation <= 0 off A (and kappa >= 0). On the closure the smooth loss equals the true loss
(a pre-activation of exactly 0 gives a zero code either way), so optima on a region boundary are
ordinary constrained optima: `_least_distance` solves that quadratic programme exactly (DAQP's
dual active-set method, then Lawson and Hanson's reduction of a least-distance programme to
non-negative least squares, each answer checked against the optimality conditions: the
quadratic is singular wherever a code has directions the loss does not see, and then rounding
can return a wrong point; the constraints the reduction found tight are then re-solved
exactly, and a primal active-set method is the last resort). What remains is a search over
unit directions:

* width 1, untied: closed form. Without the constraints, eliminating codes and biases leaves
  loss(e) = const - e^T H e + l1 w.e on the unit sphere (theory.closed_forms.
  width1_region_terms), whose stationary points are eigenvectors of H at l1 = 0 and roots of
  a secular polynomial otherwise. Its minimum is an exact lower bound on the region; when the
  minimiser satisfies the constraints it is the region's optimum, otherwise the constrained
  search below starts from the stationary points.
* otherwise: a low-dimensional smooth search (L-BFGS) over the directions of the constrained
  loss from the best distinct data-driven starts per region (untied: the next start only while
  the last beat the incumbent; tied: the three best); its gradient comes from the envelope
  theorem with the programme's multipliers. (Without the constraints the L1 term is
  unbounded below when two latents on one region point in opposite directions, so the
  constrained loss is searched from the start.)

Tied latents have one more kind of optimum: one approached only as the encoder gain grows
without bound, which no finite tied SAE attains. Let e = e0 + delta u with kappa ~ 1/delta: the
code kappa e.x + t stays finite only on states where e0.x is largest, a face F of the states'
convex hull, and there it becomes u.x + const, any affine function, while it falls to -infinity
off F; the decoder tends to e0, which must lie in F's normal cone (the cone of the outward
normals of the facets holding F). Nested limits (delta^2, ...) give nothing new: the face is the
smallest one holding the latent's states. So a tied latent whose states A lie on a proper face
also has a limit form (`_Face`): decoder e0 searched over that cone, code affine on A with
constraints on F's states only. The region search tries each latent finite and, where A lies
on a proper face, in its limit form; a limit optimum comes back realised at a finite gain whose
loss is within rounding (about 1e-8) of the infimum (`_limit_latent`). (Untied latents need no
such form: a steep encoder term along F's normal reproduces the limit at a finite gain.) The
argument assumes bounded codes, which l1 > 0 enforces; at l1 = 0 two latents with unbounded
codes and cancelling decoders might approach yet another limit (none met in random tests).

Regions are tuples of separable state sets, one per latent, searched by branch and bound: a
partial tuple is abandoned when a lower bound on every completion cannot beat the best loss so
far. That bound ignores the L1 term and relaxes the shared decoder bias and directions: states
that the same set L of latents fire on (with m latents still unassigned) are reconstructed in
an affine subspace of dimension |L| + m, so they cost at least the residual of the best such
subspace (the trailing eigenvalues of their weighted covariance; without a decoder bias,
linear subspaces and the uncentred second moment), and the groups whose sets lie inside one set
U of latents share a subspace of dimension |U| + m, so their union costs at least its residual
there (`_region_bound` takes the best of these; with every latent assigned the silent states
sit at b itself, a point of that subspace). Where more than MAX_REGIONS regions survive it (the
hedging paper's 12-state multi-latent toy at width 3: about 9.85 million) the model is
refused with a ValueError rather than searched for hours. A complete region's bound also
counts the L1 term (`_with_sparsity`: a share of the loss bounded through the fired states'
distance to the shared decoder bias); regions are searched in order of it and the search stops
at the first whose bound cannot beat the best. From PARALLEL_REGIONS regions on (Linux) the
search is shared among the CPUs: process w takes regions w, w + W, ... with its own incumbent,
and the best of theirs wins; each region draws its random start from its own index, so the
answer does not depend on W.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import daqp
import numpy as np
import scipy.linalg
import scipy.linalg.lapack
import scipy.optimize
import scipy.spatial

from theory.closed_forms import Width1Terms, width1_region_terms
from theory.features import FeatureModel, NumericFeatureModel
from theory.sae import SAEParams, SAESpec, codes, expected_loss, unit_rows

STARTS_PER_REGION = 3  # local searches per region, from the best distinct starts
ROUGH_STEPS = 3  # L-BFGS steps that rank a tied region's starts (see _search_region)
MAX_REGIONS = 200_000  # activation regions one exact optimum may list
TIE_TOL = 1e-10  # losses closer than this are the same optimum
RIDGE = 1e-12  # relative ridge that makes the region quadratic definite (codes' free directions)
RETRY_RIDGE = 1e-9  # ... and a larger one, tried where rounding defeats the first
FIRING_TOL = 1e-10  # pre-activations this close to 0 are on the boundary: the latent is off there
MAX_BOUND_STATES = 16  # the subspace-fit bound tabulates every subset of states
REGION_SLACK = 1e-9  # regions that could beat the best by less (a rounding error of a realised
# limit latent's loss) are not searched
SPARSITY_SHARES = (0.1, 0.25, 0.5, 1.0)  # shares of the loss the L1 bound is taken on
HUBER_STEPS = 60  # reweighted-mean steps of the L1 bound's minimisation over the decoder bias
LIMIT_TILTS = (1e-6, 1e-7, 1e-8, 1e-9)  # decoder tilts tried when realising a limit latent
PARALLEL_REGIONS = 500  # from this many regions the search is shared among the CPUs


@dataclass(frozen=True)
class Optimum:
    """Best SAE found by region enumeration and its exact loss. Untied parameters come back
    folded (unit decoder rows); tied ones stay tied (encoder = decoder, whose norm is then the
    encoder's gain). `active[i][s]` says whether latent i's code on state s is strictly positive;
    `regions_tried` counts the activation regions whose directions were searched."""

    params: SAEParams
    loss: float
    active: tuple[tuple[bool, ...], ...]
    regions_tried: int


# --- activation regions ------------------------------------------------------------------------
def _affine_design(states: np.ndarray) -> np.ndarray:
    """Rows z_s = (x_s, 1): codes and pre-activations are z_s . theta."""
    return np.hstack([states, np.ones((len(states), 1))])


@lru_cache(maxsize=64)
def _separable_sets(
    states_key: bytes, n_states: int, n_features: int
) -> tuple[tuple[bool, ...], ...]:
    """Every non-empty set of states an affine threshold can select (strictly positive on the
    set, <= 0 off it), found by a feasibility LP per subset."""
    states = np.frombuffer(states_key).reshape(n_states, n_features)
    Z = _affine_design(states)
    found = []
    for mask in itertools.product((False, True), repeat=n_states):
        if not any(mask):
            continue
        on = np.array(mask)
        # maximise margin m: z.theta >= m on A, z.theta <= 0 off A, m <= 1
        c = np.zeros(Z.shape[1] + 1)
        c[-1] = -1.0
        A_ub = np.vstack(
            [
                np.hstack([-Z[on], np.ones((on.sum(), 1))]),
                np.hstack([Z[~on], np.zeros(((~on).sum(), 1))]),
            ]
        )
        bounds = [(None, None)] * Z.shape[1] + [(None, 1.0)]
        res = scipy.optimize.linprog(c, A_ub=A_ub, b_ub=np.zeros(len(A_ub)), bounds=bounds)
        if res.status == 0 and -res.fun > 1e-9:
            found.append(mask)
    return tuple(found)


def separable_sets(world: NumericFeatureModel) -> tuple[tuple[bool, ...], ...]:
    """The activation regions a single ReLU latent can realise on this model's states."""
    states = np.ascontiguousarray(world.states, dtype=float)
    return _separable_sets(states.tobytes(), *states.shape)


def separable_masks(world: NumericFeatureModel) -> np.ndarray:
    """`separable_sets` as bit masks (bit s: state s), the empty set first."""
    sets = [sum(1 << s for s, on in enumerate(mask) if on) for mask in separable_sets(world)]
    return np.array([0, *sets], dtype=np.int64)


def firing_rows(masks: np.ndarray, n_states: int) -> np.ndarray:
    """(k, S) 0/1 rows of k bit masks: which states each latent fires on."""
    return ((np.asarray(masks)[:, None] >> np.arange(n_states)) & 1).astype(float)


# --- faces of the states' convex hull: where tied latents' limits live ---------------------------
class _Face(NamedTuple):
    """A tied latent in the limit of unbounded gain: it fires on states of one face of the
    states' convex hull, with any affine code there, and decodes along a direction in the face's
    normal cone (the cone of the outward normals of the facets holding the face)."""

    states: np.ndarray  # (S,) bool: the face's states; the code's constraints hold on these only
    generators: np.ndarray  # (g, n): unit outward normals of the facets holding the face


@lru_cache(maxsize=64)
def _hull_facets(
    states_key: bytes, n_states: int, n_features: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unit outward normals (m, n) of the facets of the states' convex hull and the states on
    each (m, S). A flat hull also gets +-each direction normal to its affine span, a 'facet'
    holding every state (every face's normal cone contains them)."""
    states = np.frombuffer(states_key).reshape(n_states, n_features)
    centred = states - states.mean(0)
    _, singular, basis = np.linalg.svd(centred)
    scale = max(1.0, float(np.abs(states).max()))
    rank = int((singular > 1e-9 * scale).sum())
    span = basis[:rank]
    normals, on = [], []
    if rank == 1:
        coord = centred @ span[0]
        for sign in (1.0, -1.0):
            normals.append(sign * span[0])
            on.append(sign * coord >= (sign * coord).max() - 1e-9 * scale)
    elif rank >= 2:
        equations = scipy.spatial.ConvexHull(centred @ span.T).equations  # normal.y + offset <= 0
        for equation in equations:
            normals.append(equation[:-1] @ span)
            on.append(np.abs(centred @ span.T @ equation[:-1] + equation[-1]) <= 1e-9 * scale)
    # qhull splits a facet into simplices: one row per distinct set of states
    first = np.sort(
        np.unique(np.array(on).reshape(len(on), n_states), axis=0, return_index=True)[1]
    )
    normals, on = [normals[i] for i in first], [on[i] for i in first]
    for direction in basis[rank:]:
        normals += [direction, -direction]
        on += [np.ones(n_states, bool)] * 2
    return unit_rows(np.array(normals)), np.array(on)


def _face_of(world: NumericFeatureModel, active_S: np.ndarray) -> _Face | None:
    """The smallest face of the states' hull holding the states `active_S` (bool), or None when
    no facet holds them all (the face is the whole hull: no limit)."""
    states = np.ascontiguousarray(world.states, dtype=float)
    normals, on = _hull_facets(states.tobytes(), *states.shape)
    holding = on[:, active_S].all(1)
    if not active_S.any() or not holding.any():
        return None
    return _Face(on[holding].all(0), normals[holding])


def _limit_variants(
    world: NumericFeatureModel, spec: SAESpec, active: np.ndarray
) -> list[tuple[_Face | None, ...]]:
    """Ways to search a region: every latent finite, then (tied only) each choice of latents
    taken in their limit of unbounded gain, where their states lie on a proper face (a latent
    on a single state only in its limit, which includes its finite forms)."""
    k = len(active)
    if not spec.tied:
        return [(None,) * k]
    options = []
    for a in active:
        face = _face_of(world, a > 0)
        if face is None:
            options.append([None])
        elif a.sum() == 1:
            # one state v: a finite latent must decode along the interior of v's normal cone,
            # the limit along all of it, with the same free code at v: the limit covers both
            options.append([face])
        else:
            options.append([None, face])
    return list(itertools.product(*options))


# --- lower bounds: subspace fits of the states each set of latents fires on ----------------------
class _Fits(NamedTuple):
    """Subspace fits of every set of states (bit mask M, bit s = state s)."""

    residual_MD: np.ndarray  # (2^S, n + 1): least weighted squared distance to d-dim subspaces
    scatter_MNN: np.ndarray  # (2^S, n, n): weighted scatters, whose trailing eigenvalues those are


def _fit_residuals(world: NumericFeatureModel, decoder_bias: bool) -> _Fits:
    """Entry [mask, d] of the residuals is the least weighted squared distance of the states in
    `mask` to a d-dimensional affine subspace (linear without a decoder bias): the sum of the
    trailing n - d eigenvalues of their scatter (centred; uncentred without a decoder bias)."""
    X, p = world.states, world.probabilities
    S, n = X.shape
    if S > MAX_BOUND_STATES:
        raise ValueError(
            f"exact optima enumerate subsets of states; {S} states is more than the "
            f"{MAX_BOUND_STATES} allowed"
        )
    member_MS = (np.arange(2**S)[:, None] >> np.arange(S)) & 1
    weight_MS = member_MS * p
    second_MNN = np.einsum("ms,si,sj->mij", weight_MS, X, X)
    if decoder_bias:
        mass_M = weight_MS.sum(1)
        first_MN = weight_MS @ X
        safe = np.where(mass_M > 0, mass_M, 1.0)
        second_MNN -= np.einsum("mi,mj->mij", first_MN, first_MN) / safe[:, None, None]
    return _Fits(_trailing_sums(second_MNN), second_MNN)


def _trailing_sums(scatter_MNN: np.ndarray) -> np.ndarray:
    """(..., n + 1): entry d is the sum of the n - d smallest eigenvalues of each scatter, the
    residual of its best d-dimensional subspace."""
    eig_MN = np.clip(np.linalg.eigvalsh(scatter_MNN), 0.0, None)  # ascending
    # keeping the top d eigen-directions leaves the n - d smallest eigenvalues
    kept = np.cumsum(eig_MN[..., ::-1], axis=-1)
    kept = np.concatenate([np.zeros((*kept.shape[:-1], 1)), kept], axis=-1)
    return eig_MN.sum(-1)[..., None] - kept


def _with_sparsity(
    world: NumericFeatureModel, spec: SAESpec, fits: np.ndarray, fired: np.ndarray
) -> np.ndarray:
    """Region bounds (R,) that add the L1 term to the subspace fits `fits` of regions whose
    latents fire on the states in the bit masks `fired` (R,).

    On a state s some latent fires on, with y = x_s - b and r = sum_i g_i e_i (so ||r|| <=
    sum_i g_i: codes are non-negative, decoders unit), the loss is at least ||y - r||^2 + l1 ||r||
    = (1 - share) ||y - r||^2 + share (||y - r||^2 + (l1 / share) ||r||) for any share in (0, 1],
    and min over r of the bracket is huber(||y||) with threshold lambda = l1 / share: t^2 up to
    lambda / 2, lambda t - lambda^2 / 4 above. States nobody fires on cost ||y||^2, split the
    same way. The first parts sum to at least (1 - share) times the subspace fit; the second is
    share times a convex function of the shared decoder bias b alone, minimised (with a
    certificate: strong convexity from the silent states) for every set of fired states."""
    bounds = fits.copy()
    l1 = float(spec.l1)
    if l1 == 0:
        return bounds
    unions, which = np.unique(fired, return_inverse=True)
    for share in SPARSITY_SHARES:
        sparsity = share * _huber_floor(world, l1 / share, unions, spec.decoder_bias)
        bounds = np.maximum(bounds, (1 - share) * fits + sparsity[which])
    return bounds


def _huber_floor(
    world: NumericFeatureModel, threshold: float, unions: np.ndarray, decoder_bias: bool
) -> np.ndarray:
    """For each bit mask of fired states (U,), a lower bound on min over b of
    sum_silent p ||x - b||^2 + sum_fired p huber(||x - b||) (b = 0 without a decoder bias):
    iteratively reweighted means (each step minimises a quadratic majorant), then the value
    less |gradient|^2 / (2 mu), mu = 2 P(silent) the strong convexity."""
    X, p = world.states, world.probabilities
    S = len(p)
    on_US = ((unions[:, None] >> np.arange(S)) & 1).astype(bool)
    b_UN = np.tile(p @ X, (len(unions), 1)) if decoder_bias else np.zeros((len(unions), X.shape[1]))

    def terms(b_UN: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        diff_USN = X[None] - b_UN[:, None]
        t_US = np.linalg.norm(diff_USN, axis=2)
        steep = on_US & (t_US > threshold / 2)
        value = np.where(steep, threshold * t_US - threshold**2 / 4, t_US**2) @ p
        slope_US = (
            np.where(steep, threshold / np.maximum(t_US, 1e-300), 2.0) * p
        )  # dF = -sum c (x - b)
        return value, slope_US, diff_USN

    for _ in range(HUBER_STEPS if decoder_bias else 0):
        _, slope_US, _ = terms(b_UN)
        b_UN = (slope_US @ X) / slope_US.sum(1, keepdims=True)  # per row: sum_s c_s x_s / sum c_s
    value, slope_US, diff_USN = terms(b_UN)
    if not decoder_bias:
        return value
    gradient = np.linalg.norm(np.einsum("us,usn->un", slope_US, diff_USN), axis=1)
    mu = 2.0 * (~on_US).astype(float) @ p
    return np.where(mu > 0, value - gradient**2 / (2.0 * np.maximum(mu, 1e-300)), 0.0).clip(0.0)


def _region_bound(
    fits: _Fits, masks: list[np.ndarray | int], unassigned: int, full: int
) -> np.ndarray:
    """Lower bound on the loss of every region that starts with latents firing on `masks`
    (arrays broadcast) and has `unassigned` more latents.

    Group L holds the states fired by exactly the latents L of `masks` (and perhaps by
    unassigned ones): reconstructed in b + span(decoders of L and of the unassigned), an affine
    subspace of dimension |L| + m. The groups whose sets lie inside one U (the silent group,
    reconstructed at b, among them) share b + span(U, the unassigned), of dimension |U| + m, so
    together they cost at least the residual of their union there; the other groups hold
    other states, so their own residuals add. The bound is the best of every group alone and,
    for each U, that cluster with the rest alone. (The clusters cut the width-2 regions
    searched on the 8-state model from 3,652 to 2,738, and the width-3 tuples listed on the
    12-state toy from 24.8 to 11.0 million; chains of two clusters add nothing at width 2.)

    With every latent assigned (m = 0) the silent group is reconstructed at b itself, a point
    of the cluster's subspace: it costs its own scatter Sigma_0 about its mean plus its mass
    times the squared distance of that mean to the subspace, so the cluster costs at least
    tr(Sigma_0) plus the residual of the scatter less Sigma_0 (the silent states collapsed onto
    their mean), never less than the plain union's residual. (That cuts the width-2 8-state
    regions searched from 2,738 to 2,029 and the 12-state toy's listed tuples to 9.85 million.)"""
    residual_MD = fits.residual_MD
    n = residual_MD.shape[1] - 1
    a = len(masks)
    group_L = []
    for L in range(2**a):
        group = full
        for i, mask in enumerate(masks):
            group = group & (mask if (L >> i) & 1 else ~mask)
        group_L.append(group)
    size_L = [L.bit_count() for L in range(2**a)]
    alone_L = [residual_MD[group_L[L], min(size_L[L] + unassigned, n)] for L in range(2**a)]
    best = sum(alone_L)
    for U in range(1, 2**a):
        union, rest = 0, 0.0
        for L in range(2**a):
            if L & ~U:
                rest = rest + alone_L[L]
            else:
                union = union | group_L[L]
        dim = min(size_L[U] + unassigned, n)
        if unassigned == 0 and dim < n:
            collapsed_NN = fits.scatter_MNN[union] - fits.scatter_MNN[group_L[0]]
            cluster = alone_L[0] + _trailing_sums(collapsed_NN)[..., dim]
        else:
            cluster = residual_MD[union, dim]
        best = np.maximum(best, rest + cluster)
    return best


# --- the convex inner problem: codes and biases for fixed decoder directions ---------------------
def _solve(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.linalg.solve through LAPACK's dgesv directly: at these sizes (tens of unknowns) numpy's
    wrapper costs twice the solve, and the inner problem solves a few systems per call."""
    _, _, x, info = scipy.linalg.lapack.dgesv(A, b)
    if info != 0:
        raise np.linalg.LinAlgError(f"singular system (dgesv info {info})")
    return x


def _least_distance(
    G: np.ndarray, rhs: np.ndarray, C: np.ndarray, guess: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """argmin psi^T G psi - 2 rhs.psi subject to C psi >= 0, and multipliers lam >= 0 with
    2 (G psi - rhs) = C^T lam.

    `guess` (bool, one per constraint) names the constraints thought to be tight, e.g. those of
    a nearby problem. DAQP's dual active-set method (Arnstrom, Bemporad and Axehill, IEEE TAC
    2022) starts from them; its answer is checked against the optimality conditions. Where
    rounding defeats it (under 1% of the calls of a width-2 search), or G is too singular:

    With G = L L^T (plus a tiny ridge: G is only semi-definite when codes have directions the
    loss does not see) and u = L^T (psi - psi0), psi0 the unconstrained minimiser, this is the
    least-distance programme min ||u|| s.t. C L^-T u >= -C psi0, whose solution is
    u = H^T v / (1 - h.v) for v the non-negative least-squares solution of [H^T; h^T] v = e_last
    (Lawson and Hanson, Solving Least Squares Problems, ch. 23)."""
    m = len(G)
    if m == 0:
        return np.zeros(0), np.zeros(len(C))
    for ridge in (RIDGE, RETRY_RIDGE):
        ridged = G.copy()
        ridged.reshape(-1)[:: m + 1] += ridge * (np.trace(G) / m + 1e-6)  # a view: fast
        found = _least_distance_ridged(ridged, rhs, C, guess)
        if found is not None:
            return found
    return _active_set(G, rhs, C)


def _least_distance_ridged(
    G: np.ndarray, rhs: np.ndarray, C: np.ndarray, guess: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """`_least_distance` for a definite G, or None where rounding defeats it: DAQP's dual
    active-set method first (warm-started from the guessed tight set; its answer checked),
    then the reduction to non-negative least squares."""
    if len(C) == 0:
        return _solve(G, rhs), np.zeros(0)
    sense = np.zeros(len(C), np.int32) if guess is None else guess.astype(np.int32)
    psi, _, status, info = daqp.solve(
        2.0 * G, -2.0 * rhs, C, *_daqp_bounds(len(C)), sense, primal_tol=1e-12
    )
    if status == 1:  # optimal; DAQP's multipliers of lower bounds are <= 0
        lam = np.maximum(-info["lam"], 0.0)
        if _solves(G, rhs, C, psi, lam):
            return psi, lam
    psi0 = _solve(G, rhs)
    slack = C @ psi0
    if slack.min() >= 0:
        return psi0, np.zeros(len(C))
    m = len(G)
    L, info = scipy.linalg.lapack.dpotrf(G, lower=1)  # its upper triangle is left as G's
    if info != 0:
        return None

    def triangular(rhs: np.ndarray, transposed: int = 0) -> np.ndarray:  # L^-1 or L^-T
        return scipy.linalg.lapack.dtrtrs(L, rhs, lower=1, trans=transposed)[0]

    H = triangular(C.T).T  # C L^-T
    f = np.zeros(m + 1)
    f[-1] = 1.0
    # when the feasible set has no interior (a code forced to vanish) rounding can make the
    # reduction report infeasibility: loosen the constraints by a rounding-sized margin
    for margin in (0.0, 1e-12, 1e-9):
        E = np.vstack([H.T, (-slack - margin)[None, :]])
        v = scipy.optimize.nnls(E, f, maxiter=50 * len(C))[0]
        r = E @ v - f
        if -r[-1] > 1e-12:
            psi, lam = psi0 + triangular(-r[:-1] / r[-1], 1), 2.0 * v / -r[-1]
            if _solves(G, rhs, C, psi, lam):
                return psi, lam
            # an ill-conditioned G spoils the values but seldom which constraints are tight
            found = _tight_solve(G, rhs, C, v > 0) if (v > 0).any() else None
            if found is not None:
                return found
    return None


@lru_cache(maxsize=256)
def _daqp_bounds(m: int) -> tuple[np.ndarray, np.ndarray]:
    """DAQP's upper and lower bounds of m constraints C psi >= 0, made once per size (DAQP only
    reads them, though it asks for writable buffers). Upper bounds of 1e30 and above are absent
    to DAQP (np.inf gave NaN answers once a warm-started constraint was active)."""
    return np.full(m, 1e30), np.zeros(m)


def _solves(
    G: np.ndarray, rhs: np.ndarray, C: np.ndarray, psi: np.ndarray, lam: np.ndarray
) -> bool:
    """Whether (psi, lam) satisfies the programme's optimality conditions up to rounding: a tiny
    r[-1] in the reduction magnifies NNLS's rounding into a wrong answer."""
    G_psi = G @ psi
    big = np.abs(np.concatenate([G_psi, rhs, psi]))  # one pass for the three scales
    scale = max(1.0, 2.0 * float(big[: 2 * len(psi)].max()))
    if np.abs(2.0 * (G_psi - rhs) - C.T @ lam).max() > 1e-8 * scale:
        return False  # not stationary
    size = max(1.0, float(big[2 * len(psi) :].max()))
    slack = C @ psi
    return bool(
        slack.min() >= -1e-9 * size
        and np.abs(lam * slack).max() <= 1e-9 * size * max(1.0, float(lam.max()))
    )


def _active_set(G: np.ndarray, rhs: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_least_distance` by the primal active-set method (Nocedal and Wright, Numerical
    Optimization, 16.3) with null-space steps, which tolerate dependent tight constraints: the
    slow, sure path where rounding defeats the reduction. It starts from the feasible point
    where every constrained parameter (every code) is 0 and the rest (the decoder bias) is
    optimal."""
    m = len(G)
    G = G + RIDGE * (np.trace(G) / m + 1e-6) * np.eye(m)
    psi = np.zeros(m)
    free = ~np.abs(C).any(0)  # the decoder bias: no constraint involves it
    if free.any():
        psi[free] = np.linalg.solve(G[np.ix_(free, free)], rhs[free])
    # every constraint holds with equality at the start, so any of them may start tight: those
    # the unconstrained minimiser breaks are a good guess (few to drop or add)
    tight = (C @ np.linalg.solve(G, rhs)) < 0
    lam = np.zeros(len(C))
    for _ in range(20 * (m + len(C))):
        basis = scipy.linalg.null_space(C[tight]) if tight.any() else np.eye(m)
        reduced = basis.T @ G @ basis
        step = (
            basis @ np.linalg.solve(reduced, basis.T @ (rhs - G @ psi))
            if basis.size
            else np.zeros(m)
        )
        if np.abs(step).max() <= 1e-13 * max(1.0, np.abs(psi).max()):
            lam = np.zeros(len(C))
            if tight.any():
                lam[tight] = np.linalg.lstsq(C[tight].T, 2.0 * (G @ psi - rhs), rcond=None)[0]
            if lam.min() >= -1e-12 * max(1.0, np.abs(lam).max()):
                return psi, np.clip(lam, 0.0, None)
            tight[int(np.argmin(lam))] = False
            continue
        along = C @ step
        blocking = (~tight) & (along < -1e-15)
        ratios = np.where(blocking, -(C @ psi) / np.where(blocking, along, -1.0), np.inf)
        hit = int(np.argmin(ratios))
        psi = psi + min(1.0, max(ratios[hit], 0.0)) * step
        if ratios[hit] < 1.0:
            tight[hit] = True
    return psi, np.clip(lam, 0.0, None)


def _tight_solve(
    G: np.ndarray, rhs: np.ndarray, C: np.ndarray, tight: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """The minimiser with the `tight` constraints held at equality and its multipliers, if it
    satisfies every constraint with non-negative multipliers (so solves the programme)."""
    m, w = len(G), int(tight.sum())
    tight_C = C[tight]
    kkt = np.zeros((m + w, m + w))
    kkt[:m, :m] = G
    kkt[:m, m:] = tight_C.T
    kkt[m:, :m] = tight_C
    target = np.zeros(m + w)
    target[:m] = rhs
    try:
        solution = _solve(kkt, target)
    except np.linalg.LinAlgError:
        return None
    psi, lam_tight = solution[:m], -2.0 * solution[m:]
    size = max(1.0, np.abs(psi).max())
    if (
        lam_tight.min() < -1e-12 * max(1.0, np.abs(lam_tight).max())
        or (C @ psi).min() < -1e-10 * size
        or np.abs(kkt @ solution - target).max() > 1e-10 * max(1.0, np.abs(target).max())
    ):
        return None
    lam = np.zeros(len(C))
    lam[tight] = np.clip(lam_tight, 0.0, None)
    return psi, lam


@dataclass(frozen=True)
class _Inner:
    """The inner problem's solution for fixed directions: loss, codes (S, k), decoder bias (n),
    the loss's gradient with respect to the directions (k, n) and the code parameters psi_i."""

    loss: float
    codes: np.ndarray
    bias: np.ndarray
    grad: np.ndarray
    code_params: list[np.ndarray]


def _inner_solve(
    world: NumericFeatureModel,
    spec: SAESpec,
    directions: np.ndarray,
    active: np.ndarray,
    l1: float,
    pre_constraints: np.ndarray | None = None,
    faces: tuple[_Face | None, ...] | None = None,
) -> _Inner:
    """Exact minimum over codes and decoder bias for unit decoder rows `directions` (k, n), on
    the closure of the region. A tied latent with a face is taken in its limit of unbounded
    gain: an affine code constrained on the face's states only. A matryoshka loss
    (spec.loss_levels) is a weighted sum of level quadratics, each the full one with the
    codes of latents outside the level zeroed (see `_region_solver`).

    `pre_constraints` (m, S, k), untied only, replaces the ReLU region's constraints by
    sum_si C[r, s, i] pre_si >= 0 (other architectures' regions, e.g. TopK's ordering)."""
    return _region_solver(world, spec, active, l1, pre_constraints, faces)(directions)


def _region_solver(  # noqa: ANN202 (the solver closure)
    world: NumericFeatureModel,
    spec: SAESpec,
    active: np.ndarray,
    l1: float,
    pre_constraints: np.ndarray | None = None,
    faces: tuple[_Face | None, ...] | None = None,
):
    """`_inner_solve` for one region as a function of the directions alone, with every moment
    of the states that does not depend on them computed once.

    Lifted, latent i's code is m_is z_s . theta_i with m_is = 1 on its states, theta_i = psi_i
    (an affine code) or theta_i = T_i psi_i with T_i = [[e_i, 0], [0, 1]] (a finite tied latent:
    kappa e_i.x + t). The quadratic's code block is T^T ((R R^T) * W) T with W = sum_s p_s
    (m z)_s (m z)_s^T over all latents and R repeating each latent's direction once per lifted
    coefficient; the constraints of affine codes do not depend on the directions at all. Each
    call starts from the constraints that were tight at the previous call (BFGS moves a little).
    The gradient comes from the envelope theorem: at the inner optimum only the explicit
    dependence on E counts, including that of the tied constraints kappa e.x_s + t through
    their multipliers.

    A matryoshka loss sums levels j (weight beta_j, latents keep_j) of the same quadratic with
    the codes outside the level zeroed, and weighs latent i's L1 by w_i. Per lifted coefficient
    that only reweighs the direction-free moments, once per region: W o sum_j beta_j keep_j
    keep_j^T, the rows of Y and the coupling v by sum_j beta_j keep_j, the bias block by
    sum_j beta_j and the L1 vector by w. The lift T and the faces act on the lifted
    coefficients, so they take the sums as they are. The loss and the envelope gradient sum the
    levels' residuals. One level (a plain SAE) is the plain quadratic and skips all of this."""
    X, p = world.states, world.probabilities
    S, n = X.shape
    k = len(active)
    Z = _affine_design(X)
    faces = faces or (None,) * k
    finite_tied = [spec.tied and face is None for face in faces]
    lifted = np.concatenate([Z * a[:, None] for a in active], axis=1)  # (S, k (n + 1))
    W = (lifted * p[:, None]).T @ lifted
    Y = (lifted * p[:, None]).T @ X  # row (i, a): sum_s p_s m_is z_sa x_s
    v = p @ lifted
    size = [2 if tied else n + 1 for tied in finite_tied]
    q = np.cumsum([0, *size])
    n_code, n_psi = q[-1], q[-1] + (n if spec.decoder_bias else 0)
    levels = spec.loss_levels()
    l1_weight_K = levels.l1_weight_K
    nested = len(levels.weight_J) > 1  # one level is the plain loss (weight 1, w = 1)
    bias_weight = 1.0
    Y_weighted, coupling_v, linear_v = Y, v, v  # the plain moments
    if nested:
        keep_JL = np.repeat(levels.prefix_JK, n + 1, axis=1).astype(float)  # per lifted coeff
        weight_L = levels.weight_J @ keep_JL  # sum_j beta_j [coefficient's latent in level j]
        W = W * ((keep_JL.T * levels.weight_J) @ keep_JL)
        Y_weighted = Y * weight_L[:, None]
        coupling_v = v * weight_L
        linear_v = v * np.repeat(l1_weight_K, n + 1)
        bias_weight = float(levels.weight_J.sum())
    side = np.where(active, 1.0, -1.0)  # (k, S): codes >= 0 on A, pre-activations <= 0 off A
    held = [face.states if face is not None else np.ones(S, bool) for face in faces]
    signed = [(side[i][:, None] * Z)[held[i]] for i in range(k)]
    first_row = np.cumsum([0] + [int(h.sum()) + t for h, t in zip(held, finite_tied, strict=True)])
    C = np.zeros((first_row[-1], n_psi))
    for i in range(k):
        if not finite_tied[i]:
            C[first_row[i] : first_row[i] + len(signed[i]), q[i] : q[i + 1]] = signed[i]
        else:
            C[first_row[i + 1] - 1, q[i]] = 1.0  # kappa >= 0
    if pre_constraints is not None:  # untied: pre_si = z_s . psi_i, as the codes
        C = np.zeros((len(pre_constraints), n_psi))
        for i in range(k):
            C[:, q[i] : q[i + 1]] = pre_constraints[:, :, i] @ Z
    G = np.zeros((n_psi, n_psi))
    rhs = np.zeros(n_psi)
    if spec.decoder_bias:
        G[n_code:, n_code:] = np.eye(n) * (p.sum() * bias_weight)
        rhs[n_code:] = (p @ X) * bias_weight
    scale = max(1.0, float(np.abs(X).max()))
    tied_latents = np.flatnonzero(finite_tied)
    any_tied = len(tied_latents) > 0
    tight = [None]  # the constraints tight at the previous call
    l1_pull = 0.5 * l1 * linear_v
    active_SK, p_S1 = np.ascontiguousarray(active.T), p[:, None]
    all_psi, all_rows = np.ones(n_psi, bool), np.ones(len(C), bool)  # no latent forced silent

    def lift(directions: np.ndarray) -> np.ndarray | None:
        """T: lifted coefficients (k (n + 1)) from psi's code part, or None when it is I."""
        if not any_tied:
            return None
        T = np.zeros((k * (n + 1), n_code))
        for i, e in enumerate(directions):
            rows = slice(i * (n + 1), (i + 1) * (n + 1))
            if finite_tied[i]:
                T[rows, q[i]][:n] = e
                T[i * (n + 1) + n, q[i] + 1] = 1.0
            else:
                T[rows, q[i] : q[i + 1]] = np.eye(n + 1)
        return T

    def solve(directions: np.ndarray) -> _Inner:
        R = np.repeat(directions, n + 1, axis=0)
        code_G = (R @ R.T) * W
        code_rhs = (Y_weighted * R).sum(1) - l1_pull
        coupling = coupling_v[:, None] * R  # d^2 / d theta d b
        linear = linear_v
        T = lift(directions)
        if T is not None:
            code_G, code_rhs, coupling, linear = (
                T.T @ code_G @ T,
                T.T @ code_rhs,
                T.T @ coupling,
                T.T @ linear_v,
            )
            for i in tied_latents:
                C[first_row[i] : first_row[i + 1] - 1, q[i] : q[i + 1]] = (
                    signed[i] @ T[i * (n + 1) : (i + 1) * (n + 1), q[i] : q[i + 1]]
                )
        G[:n_code, :n_code] = code_G
        rhs[:n_code] = code_rhs
        if spec.decoder_bias:
            G[:n_code, n_code:] = coupling
            G[n_code:, :n_code] = coupling.T
        # a finite tied latent whose direction does not separate its states can only be silent
        # (kappa = t = 0): its constraints have no interior, which the reduction cannot take
        keep, rows = all_psi, all_rows
        for i in tied_latents:
            along = X @ directions[i]
            on = active[i] > 0
            if on.any() and (~on).any() and along[on].min() < along[~on].max() - 1e-12 * scale:
                if keep is all_psi:
                    keep, rows = all_psi.copy(), all_rows.copy()
                keep[q[i] : q[i + 1]] = False
                rows[first_row[i] : first_row[i + 1]] = False
        if keep is all_psi:
            psi, lam = _least_distance(G, rhs, C, tight[0])
        else:
            psi, lam = np.zeros(n_psi), np.zeros(len(C))
            psi[keep], lam[rows] = _least_distance(
                G[np.ix_(keep, keep)], rhs[keep], C[np.ix_(rows, keep)]
            )
        tight[0] = lam > 0
        theta = psi[:n_code] if T is None else T @ psi[:n_code]
        codes_SK = (Z @ theta.reshape(k, n + 1).T) * active_SK
        bias = psi[n_code:] if spec.decoder_bias else np.zeros(n)
        pull_SKN = None
        if nested:
            residual = X - bias - np.einsum("sk,jk,kn->jsn", codes_SK, levels.prefix_JK, directions)
            squares = levels.weight_J @ (residual**2).sum(2)
            # d loss / d g_si through the reconstructions: -2 sum_j beta_j [i in level j] r_js
            pull_SKN = np.einsum("j,jk,jsn->skn", levels.weight_J, levels.prefix_JK, residual)
            grad = -2.0 * np.einsum("sk,s,skn->kn", codes_SK, p, pull_SKN)
        else:
            residual = X - bias - codes_SK @ directions
            squares = (residual**2).sum(1)
            grad = -2.0 * codes_SK.T @ (p_S1 * residual)
        loss = float(p @ squares + l1 * linear @ psi[:n_code])
        for i in tied_latents:  # a tied code depends on e through kappa * e.x ...
            kappa = psi[q[i]]
            pulled = residual if pull_SKN is None else pull_SKN[:, i]
            weight = p * active[i] * (l1 * l1_weight_K[i] - 2.0 * pulled @ directions[i])
            weight = weight - lam[first_row[i] : first_row[i] + S] * side[i]  # and the constraints
            grad[i] += kappa * weight @ X
        code_params = [psi[q[i] : q[i + 1]].copy() for i in range(k)]
        return _Inner(loss, codes_SK, bias.copy(), grad, code_params)

    return solve


def _realise(
    world: NumericFeatureModel,
    spec: SAESpec,
    directions: np.ndarray,
    inner: _Inner,
    faces: tuple[_Face | None, ...] | None = None,
    tilt: float = 1e-8,
) -> SAEParams:
    """SAE parameters of an inner solution: folded when untied, tied when tied. Latents whose
    codes vanish everywhere get zero parameters; pre-activations left a rounding error above 0
    off the firing states are pushed back to 0 (the encoder bias moves by that error). A tied
    latent in its limit of unbounded gain is realised at a finite gain, its decoder tilted by
    about `tilt` off its limit direction (see `_limit_latent`)."""
    k, n = directions.shape
    b = inner.bias
    encoder, encoder_bias, decoder = np.zeros((k, n)), np.full(k, -1.0), np.zeros((k, n))
    scale = max(1.0, float(np.abs(world.states).max()))
    faces = faces or (None,) * k
    for i, psi in enumerate(inner.code_params):
        if not (inner.codes[:, i] > FIRING_TOL * scale).any():
            continue  # dead: zero encoder and decoder, negative bias
        if spec.tied and faces[i] is not None:
            slope, t = _limit_latent(world, directions[i], psi, faces[i], tilt)
            gain = np.linalg.norm(slope) ** 0.5  # slope = kappa e with kappa = gain^2
            encoder[i] = decoder[i] = slope / gain
            encoder_bias[i] = (t + slope @ b) / gain
        elif spec.tied:
            kappa, t = max(float(psi[0]), 1e-24), float(psi[1])
            gain = np.sqrt(kappa)
            encoder[i] = decoder[i] = gain * directions[i]
            encoder_bias[i] = (t + kappa * directions[i] @ b) / gain
        else:
            encoder[i], decoder[i] = psi[:n], directions[i]
            encoder_bias[i] = psi[n] + psi[:n] @ b  # the pre-activation uses x - b_dec
    pre = (world.states - b) @ encoder.T + encoder_bias
    stray = np.where(pre <= FIRING_TOL * scale, pre, -np.inf).max(0)
    encoder_bias -= np.clip(stray, 0.0, None)
    return SAEParams(encoder, encoder_bias, decoder, b.copy())


def _limit_latent(
    world: NumericFeatureModel, direction: np.ndarray, theta: np.ndarray, face: _Face, tilt: float
) -> tuple[np.ndarray, float]:
    """A finite tied latent (slope kappa e and offset t of its code kappa e.x + t) whose code is
    exactly theta's affine code a.x + c on the face's states and negative off them, with e
    within about `tilt` of the limit direction e0 (in the face's normal cone).

    With w the sum of the face's facet normals (w.x is largest exactly on the face) and
    u = e0 + tilt w + tilt eta a, the code u.(x - x_F) / (tilt eta) + a.x + c is a.x + c on the
    face (e0.x and w.x are constant there) and falls off it: e0.x does not rise, w.x drops by a
    margin, and eta is small enough for that drop to outweigh a.x + c."""
    X = world.states
    a, c = theta[:-1], float(theta[-1])
    w = face.generators.sum(0)
    anchor = X[face.states][0]
    drop = (anchor - X[~face.states]) @ w  # > 0 off the face
    rise = np.clip(X[~face.states] @ a + c, 1e-12, None)
    eta = min(1.0, 0.5 * float((drop / rise).min())) if len(drop) else 1.0
    slope = (direction + tilt * w + tilt * eta * a) / (tilt * eta)
    return slope, c + a @ anchor - slope @ anchor


# --- direction search ---------------------------------------------------------------------------
def _unit_rows(y: np.ndarray, k: int, n: int) -> np.ndarray:
    rows = y.reshape(k, n)
    rows = rows / np.maximum(np.abs(rows).max(axis=1, keepdims=True), 1e-300)  # no overflow
    return unit_rows(rows)


def _top_directions(second_KNN: np.ndarray, fallback_KN: np.ndarray) -> np.ndarray:
    """Top eigenvectors (K, n) of a stack of second moments, signed to a positive sum; the
    fallback row where a moment vanishes."""
    vals_KN, vecs_KNN = np.linalg.eigh(second_KNN)
    top_KN = vecs_KNN[:, :, -1]
    signs = np.sign(top_KN.sum(1))
    top_KN = top_KN * np.where(signs == 0, 1.0, signs)[:, None]
    return np.where((vals_KN[:, -1] > 1e-15)[:, None], top_KN, fallback_KN)


def _direction_starts(
    world: NumericFeatureModel, active: np.ndarray, rng: np.random.Generator, separators: bool
) -> list[np.ndarray]:
    """Starting decoder directions for a region, one row per latent: the top uncentred
    principal direction of the states only that latent fires on, of all its states, their
    mean, the nearest feature directions to these three, with `separators` the normal of a
    separating threshold for its states (a tied latent's encoder must separate them, so its
    direction cannot be just any of the others), halfway between that normal and the
    principal direction and the first tilted by 1e-4 toward the normal, per latent the first
    with that latent's row replaced by the principal direction of what the others' rows leave
    of its states, the second made orthonormal in latent order (width up to the dimension),
    and one random draw. (Untied ReLU and matryoshka searches go without separators: on the
    8-state model they were 12% of the inner solves, and 40 random untied models gave the same
    optima without them, within 2.2e-13.)"""
    X, p = world.states, world.probabilities
    k, n = len(active), X.shape[1]
    fallback = np.ones(n) / np.sqrt(n)
    on = active.astype(bool)
    only = on & (on.sum(0) == 1)
    weights_KS = np.concatenate([only, on]) * p
    families = list(
        _top_directions(
            np.einsum("ks,si,sj->kij", weights_KS, X, X), np.tile(fallback, (2 * k, 1))
        ).reshape(2, k, n)
    )
    means = np.stack([(p * a) @ X for a in active])
    families.append(_unit_rows(means + 1e-12 * fallback, k, n))
    for rows in list(families):
        families.append(np.eye(n)[np.abs(rows).argmax(1)])
    if separators:
        states = np.ascontiguousarray(X, dtype=float)
        normals = np.stack(
            [
                _separator(states.tobytes(), *states.shape, tuple(a)) if a.any() else fallback
                for a in on
            ]
        )
        families.append(normals)
        families.append(_unit_rows(normals + families[1], k, n))
        # a tied latent's best direction can be the limit of ones that barely separate its states
        # (the loss falls toward a direction where a state it must leave out ties with one it
        # fires on): start a hair's breadth on the separating side of the principal direction
        families.append(_unit_rows(families[0] + 1e-4 * normals, k, n))
    # one latent on what the other latents' principal directions leave of its states, the
    # others principal: a child latent beside a parent's takes the child's own direction (the
    # principal one of a state holding both features leans to the parent, and so does its
    # nearest feature direction)
    left_KSN = []
    for i in range(k):
        u, singular, _ = np.linalg.svd(np.delete(families[0], i, axis=0).T, full_matrices=False)
        others = u[:, singular > 1e-12 * max(singular.max(initial=0.0), 1e-300)]  # an orth basis
        left_KSN.append(X - (X @ others) @ others.T)
    left_KSN = np.array(left_KSN)
    leftover = _top_directions(
        np.einsum("ks,ksi,ksj->kij", on * p, left_KSN, left_KSN), families[0]
    )
    for i in range(k):
        rows = families[0].copy()
        rows[i] = leftover[i]
        families.append(rows)
    # tied SAEs with little L1 decode like PCA, along orthogonal directions: each latent's
    # principal direction of all its states less its span with the earlier latents' (CI's
    # draw, tied matryoshka at l1 0: every other start led to a worse basin, 1.6e-3 above)
    if k <= n:
        q_NK, r_KK = np.linalg.qr(families[1].T)
        families.append((q_NK * np.where(np.diag(r_KK) < 0, -1.0, 1.0)).T)
    families.append(_unit_rows(rng.normal(size=(k, n)), k, n))
    # families often coincide (a state set's principal direction is a feature direction): keep
    # the first of each, so that the searches from the best starts start apart (+ 0.0: -0 is 0)
    rounded_FX = np.round(unit_rows(np.array(families)), 9).reshape(len(families), -1) + 0.0
    first = np.sort(np.unique(rounded_FX, axis=0, return_index=True)[1])
    return [families[f] for f in first]


@lru_cache(maxsize=4096)
def _separator(
    states_key: bytes, n_states: int, n_features: int, on: tuple[bool, ...]
) -> np.ndarray:
    """Unit normal w of a maximum-margin affine threshold selecting the `on` states:
    w.x + c >= m on them, <= -m off them, |w_j| <= 1, m as large as possible."""
    states = np.frombuffer(states_key).reshape(n_states, n_features)
    Z = _affine_design(states)
    mask = np.array(on)
    sign = np.where(mask, -1.0, 1.0)[:, None]
    A_ub = np.hstack([sign * Z, np.ones((n_states, 1))])
    c = np.zeros(n_features + 2)
    c[-1] = -1.0
    bounds = [(-1.0, 1.0)] * n_features + [(None, None), (None, None)]
    res = scipy.optimize.linprog(c, A_ub=A_ub, b_ub=np.zeros(n_states), bounds=bounds)
    w = res.x[:n_features] if res.status == 0 else np.ones(n_features)
    return w / max(np.linalg.norm(w), 1e-300)


# Search coordinates y: a free latent's decoder row itself (any length); a limit latent's
# weights on its face's facet normals, squared so that its direction stays in their cone.
def _coordinates(rows: np.ndarray, faces: tuple[_Face | None, ...]) -> np.ndarray:
    """Search coordinates of decoder rows (k, n); a limit latent starts inside its cone, leaning
    toward the normals its row points along."""
    return np.concatenate(
        [
            row if face is None else np.sqrt(np.clip(face.generators @ row, 0.0, None) + 0.1)
            for row, face in zip(rows, faces, strict=True)
        ]
    )


def _rows(
    y: np.ndarray, n: int, faces: tuple[_Face | None, ...]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Decoder rows (not yet unit) of search coordinates, and each latent's share of y."""
    sizes = [n if face is None else len(face.generators) for face in faces]
    parts = np.split(y, np.cumsum(sizes)[:-1])
    rows = [
        part if face is None else part**2 @ face.generators
        for part, face in zip(parts, faces, strict=True)
    ]
    return np.array(rows), parts


def _directions(y: np.ndarray, n: int, faces: tuple[_Face | None, ...]) -> np.ndarray:
    """Unit decoder directions (k, n) of search coordinates y."""
    return _unit_rows(_rows(y, n, faces)[0], len(faces), n)


class _Reduced:
    """The region's loss as a function of the search coordinates y (decoder rows, k * n flat,
    without limit latents) and its gradient, from the region's solver `solve` (see
    `_region_solver`). Every evaluation is kept, keyed by y: a local search starts where the
    ranking of starts evaluated, and ends where it evaluated last or before, so neither end
    needs another inner solve."""

    def __init__(self, solve, n: int, faces: tuple[_Face | None, ...]) -> None:  # noqa: ANN001
        self.solve, self.n, self.faces = solve, n, faces
        self.plain = all(face is None for face in faces)  # the coordinates are the rows
        self.seen: dict[bytes, tuple[float, np.ndarray, np.ndarray, _Inner]] = {}

    def __call__(self, y: np.ndarray) -> tuple[float, np.ndarray]:
        if not np.isfinite(y).all():  # a runaway line-search step: reject it
            return np.inf, np.zeros_like(y)
        key = y.tobytes()
        if key not in self.seen:
            self.seen[key] = self._evaluate(y)
        loss, grad, _, _ = self.seen[key]
        return loss, grad.copy()  # L-BFGS may keep and change what it gets

    def at(self, y: np.ndarray) -> tuple[np.ndarray, _Inner]:
        """Unit decoder directions (k, n) of coordinates y and their inner solution."""
        self(y)
        _, _, directions, inner = self.seen[y.tobytes()]
        return directions, inner

    def _evaluate(self, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, _Inner]:
        k, n, faces = len(self.faces), self.n, self.faces
        rows, parts = (y.reshape(k, n), None) if self.plain else _rows(y, n, faces)
        norms = np.maximum(np.sqrt((rows * rows).sum(1, keepdims=True)), 1e-300)
        e = rows / norms
        inner = self.solve(e)
        g = inner.grad
        tangent = (g - (g * e).sum(1, keepdims=True) * e) / norms
        if self.plain:
            return inner.loss, tangent.ravel(), e, inner
        pulled = [
            t if face is None else 2.0 * part * (face.generators @ t)
            for t, part, face in zip(tangent, parts, faces, strict=True)
        ]
        return inner.loss, np.concatenate(pulled), e, inner


def _descend(fun, y0: np.ndarray, maxiter: int = 200) -> tuple[np.ndarray, float]:  # noqa: ANN001
    """L-BFGS-B on `fun` from search coordinates y0: the end point and its loss (the start where
    a line search that only met rejected, infinite, steps ends on one: seen with TopK k 1 at
    width 3 on 2 features, where NNLS then raised on the NaN rows)."""
    with np.errstate(over="ignore", invalid="ignore"):  # trial steps far out are rejected
        res = scipy.optimize.minimize(
            fun,
            y0,
            jac=True,
            method="L-BFGS-B",  # measured 1.3x faster than scipy's BFGS here, same optima
            options={"gtol": 1e-7, "ftol": 1e-15, "maxiter": maxiter},
        )
    if np.isfinite(res.x).all() and np.isfinite(res.fun):
        return res.x, float(res.fun)
    return y0, float(fun(y0)[0])


def _minimise(fun, start: np.ndarray, faces: tuple[_Face | None, ...] | None = None) -> np.ndarray:  # noqa: ANN001
    """Unit decoder directions (k, n) of a local minimum of `fun` from decoder rows `start`."""
    k, n = start.shape
    faces = faces or (None,) * k
    return _directions(_descend(fun, _coordinates(start, faces))[0], n, faces)


def _search_region(
    world: NumericFeatureModel,
    spec: SAESpec,
    active: np.ndarray,
    l1: float,
    starts: list[np.ndarray],
    to_beat: float,
    pre_constraints: np.ndarray | None = None,
    faces: tuple[_Face | None, ...] | None = None,
) -> list[tuple[np.ndarray, _Inner]]:
    """Local optima over unit decoder directions of a region's closure, from the best
    STARTS_PER_REGION distinct starts. Untied, starts are ranked by their loss, and a start
    whose local optimum does not beat `to_beat` ends the region's search. Tied, a direction
    sets the encoder too and regions hold more basins, which a start's own loss does not tell
    apart: every start takes ROUGH_STEPS L-BFGS steps, and the best STARTS_PER_REGION of those
    go on to their local optima (CI's draws, width 2 at l1 0.3: the optimum's basin came from
    the start with the worst loss, and from none of the three best). With `faces`, the tied
    latents that have one are taken in their limit of unbounded gain."""
    n = world.states.shape[1]
    faces = faces or (None,) * len(active)
    solve = _region_solver(world, spec, active, l1, pre_constraints, faces)
    closed = _Reduced(solve, n, faces)
    points = [_coordinates(start, faces) for start in starts]
    if spec.tied:
        points, values = zip(*(_descend(closed, y, ROUGH_STEPS) for y in points), strict=True)
    else:
        values = [closed(y)[0] for y in points]
    found = []
    for j in np.argsort(values, kind="stable")[:STARTS_PER_REGION]:
        found.append(closed.at(_descend(closed, points[j])[0]))
        if found[-1][1].loss > to_beat - 1e-12 and not spec.tied:
            break
    return found


def _width1_points(
    world: NumericFeatureModel, spec: SAESpec, active: np.ndarray, l1: float
) -> list[tuple[float, np.ndarray]]:
    """Width 1, untied: every stationary point of the unconstrained region (closed form) with
    its loss, best first; the first is the region's exact unconstrained minimum."""
    terms = width1_region_terms(world, active[0].astype(bool), l1, spec.decoder_bias)
    if terms is None:
        return []
    points = [
        (float(terms.constant - e @ terms.H @ e + l1 * terms.w @ e), e[None, :])
        for e in sphere_stationary_points(terms, l1)
    ]
    return sorted(points, key=lambda point: point[0])


def _width1_optimum(
    world: NumericFeatureModel,
    spec: SAESpec,
    actives: list[np.ndarray],
    l1: float,
    best: Optimum,
) -> Optimum:
    """Regions in order of their exact unconstrained minimum, until it cannot beat or tie the
    best (ties go to the sparser solution, see `_better`).
    First pass: each stationary point with the region's constraints imposed at its direction
    (where the unconstrained minimiser is feasible, that is the region's optimum). Second pass:
    the constrained search over directions from the best STARTS_PER_REGION stationary points of
    regions that can still beat the best."""
    points = [_width1_points(world, spec, active, l1) for active in actives]
    order = [r for r in np.argsort([p[0][0] if p else np.inf for p in points]) if points[r]]
    settled = set()
    for r in order:
        if points[r][0][0] > best.loss + TIE_TOL:
            break
        for value, e in points[r]:
            if value > best.loss + TIE_TOL:
                break
            inner = _inner_solve(world, spec, e, actives[r], l1)
            best = _candidate(world, spec, e, inner, best)
            if inner.loss <= points[r][0][0] + 1e-12:
                settled.add(r)  # the region's unconstrained minimum is feasible: its optimum
                break
    for r in order:
        if points[r][0][0] > best.loss + TIE_TOL:
            break
        if r in settled:
            continue
        solve = _region_solver(world, spec, actives[r], l1)
        closed = _Reduced(solve, world.states.shape[1], (None,))
        for value, e in points[r][:STARTS_PER_REGION]:
            if value > best.loss + TIE_TOL:
                break
            directions = _minimise(closed, e)
            inner = solve(directions)
            best = _candidate(world, spec, directions, inner, best)
    return best


def sphere_stationary_points(terms: Width1Terms, l1: float) -> list[np.ndarray]:
    """Every stationary point of -e^T H e + l1 w.e over unit e.

    Stationarity is (nu I - H) e = -(l1/2) w. In H's eigenbasis (values h_i, w components c_i)
    e_i = -(l1/2) c_i / (nu - h_i), and ||e|| = 1 is the secular equation
    prod_j (nu - h_j)^2 - sum_i (l1 c_i / 2)^2 prod_{j != i} (nu - h_j)^2 = 0, a polynomial of
    degree 2n whose real roots give the candidates. The global minimiser on the sphere usually
    has codes of the wrong sign (the L1 term rewards negative codes), which is why every
    stationary point is returned and the region's constraints choose. Eigenvectors of H (both
    signs) cover l1 = 0 and the hard case where w misses an eigenvector.
    """
    vals, vecs = np.linalg.eigh(terms.H)
    points = [s * vecs[:, j] for j in range(len(vals)) for s in (1.0, -1.0)]
    c = 0.5 * l1 * (vecs.T @ terms.w)
    if l1 == 0 or np.allclose(c, 0):
        return points
    poly = np.polynomial.Polynomial
    squares = [poly([-h, 1.0]) ** 2 for h in vals]
    secular = np.prod(squares) - sum(
        c[i] ** 2 * np.prod([sq for j, sq in enumerate(squares) if j != i])
        for i in range(len(vals))
    )
    for nu in secular.roots():
        if abs(nu.imag) > 1e-9 * max(1.0, abs(nu.real)) or np.any(np.isclose(nu.real, vals)):
            continue
        e = vecs @ (-c / (nu.real - vals))
        points.append(e / np.linalg.norm(e))
    return points


# --- the public entry point ---------------------------------------------------------------------
def global_optimum(
    model: FeatureModel | NumericFeatureModel, spec: SAESpec, seed: int = 0
) -> Optimum:
    """The global optimum of `spec` on `model` by branch and bound over activation regions.

    Regions are listed with their subspace-fit bound below the all-dead SAE's loss and
    searched in order of that bound, each skipped once its bound cannot beat the best so far.
    Width 1 untied uses the closed form per region; other variants search decoder directions
    with every other parameter solved exactly on the region's closure. Untied parameters come
    back folded (unit decoder rows), tied ones tied; latents that never fire have zero
    parameters. Other architectures (`spec.architecture`) go to theory.architectures.
    """
    if spec.architecture not in ("relu-l1", "matryoshka"):  # theory.gated's regions
        from theory.architectures import architecture_optimum

        return architecture_optimum(model, spec, seed)
    world = model.numeric() if isinstance(model, FeatureModel) else model
    l1 = float(spec.l1)
    S, n = world.states.shape
    k = spec.width
    fits = _fit_residuals(world, spec.decoder_bias)
    masks = separable_masks(world)
    nobody = np.eye(n)[:1].repeat(k, 0)
    silent = _inner_solve(world, spec, nobody, np.zeros((k, S)), l1)
    best = _candidate(world, spec, nobody, silent, None)
    full = 2**S - 1
    group_K = spec.loss_levels().prefix_JK.sum(0)  # latents of one level are interchangeable
    regions = _regions(fits, masks, k, full, best.loss, group_K)
    masks_RK = masks[np.array(regions, dtype=np.int64).reshape(len(regions), k)]
    subspace = np.asarray(_region_bound(fits, list(masks_RK.T), 0, full), dtype=float)
    fired = np.bitwise_or.reduce(masks_RK, axis=1)
    bounds = _with_sparsity(world, spec, subspace, fired)
    order = np.argsort(bounds, kind="stable")
    regions, bounds = [regions[i] for i in order], bounds[order]

    if k == 1:
        actives = [firing_rows(masks[list(r)], S) for r in regions]
        best = _width1_optimum(world, spec, actives, l1, best)
        return Optimum(best.params, best.loss, best.active, len(regions))
    workers = _workers(len(regions))
    share = (world, spec, masks, regions, bounds, best, seed)
    if workers == 1:
        best, tried = _search_regions(*share, 0, 1)
    else:
        # each process takes every workers-th region, pruning with its own incumbent (a little
        # weaker than one shared incumbent: a few more regions are searched)
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            jobs = [pool.submit(_search_regions, *share, w, workers) for w in range(workers)]
            found = [job.result() for job in jobs]
        tried = sum(count for _, count in found)
        for candidate, _ in found:
            if _better(candidate.loss, np.array(candidate.active, dtype=float), best, world):
                best = candidate
    return Optimum(best.params, best.loss, best.active, tried)


def _workers(n_regions: int) -> int:
    """Processes to search `n_regions` regions with: one below PARALLEL_REGIONS, otherwise the
    CPUs this process may use (Linux only: elsewhere the start methods re-import the caller's
    script, which need not guard its top level)."""
    if n_regions < PARALLEL_REGIONS or not sys.platform.startswith("linux"):
        return 1
    return max(1, len(os.sched_getaffinity(0)))


def _search_regions(
    world: NumericFeatureModel,
    spec: SAESpec,
    masks: np.ndarray,
    regions: list[tuple[int, ...]],
    bounds: np.ndarray,
    best: Optimum,
    seed: int,
    first: int,
    step: int,
) -> tuple[Optimum, int]:
    """Search regions[first::step] (bounds ascending) from the incumbent `best` until a bound
    cannot beat it: the best found and how many regions were searched. Region r draws its
    random start from (seed, r), so the answer does not depend on how regions are shared."""
    S = world.states.shape[0]
    tried = 0
    for r in range(first, len(regions), step):
        if bounds[r] > best.loss - REGION_SLACK:
            break  # regions come in order of their bound, and the best has improved
        active = firing_rows(masks[list(regions[r])], S)
        tried += 1
        starts = _direction_starts(world, active, np.random.default_rng((seed, r)), spec.tied)
        for faces in _limit_variants(world, spec, active):
            for directions, inner in _search_region(
                world, spec, active, float(spec.l1), starts, best.loss, faces=faces
            ):
                best = _candidate(world, spec, directions, inner, best, faces)
    return best, tried


def _regions(
    fits: _Fits,
    masks: np.ndarray,
    k: int,
    full: int,
    to_beat: float,
    group_K: np.ndarray | None = None,
) -> list[tuple[int, ...]]:
    """Every tuple of k separable sets (indices into `masks`, never increasing among latents of
    one group `group_K`, default all: those are interchangeable, and dead latents come last)
    whose subspace-fit bound is below `to_beat`, except the all-dead one."""
    found = []
    group_K = np.zeros(k) if group_K is None else group_K

    def grow(chosen: list[int]) -> None:
        if len(chosen) == k:
            if any(chosen):
                found.append(tuple(chosen))
            return
        if len(found) > MAX_REGIONS:
            # every region's bound is at least the residual of the best k-dimensional subspace
            # of all states (its cluster of every latent), so that residual bounds every SAE
            floor = fits.residual_MD[full, min(k, fits.residual_MD.shape[1] - 1)]
            raise ValueError(
                f"more than {MAX_REGIONS} activation regions survive the lower bound; this "
                "model and width are too large for the exact optimum (theory.numeric."
                "numeric_optimum, derive --method numeric, searches it without a guarantee; "
                "every SAE of this width has "
                f"loss >= {floor:.6g} here, the residual of the best {k}-dimensional subspace)"
            )
        same = chosen and group_K[len(chosen)] == group_K[len(chosen) - 1]
        options = np.arange((chosen[-1] if same else len(masks) - 1) + 1)
        bounds = _region_bound(
            fits, [masks[c] for c in chosen] + [masks[options]], k - len(chosen) - 1, full
        )
        for j in np.nonzero(bounds < to_beat - 1e-12)[0]:
            grow([*chosen, int(options[j])])

    grow([])
    return found


def _candidate(
    world: NumericFeatureModel,
    spec: SAESpec,
    directions: np.ndarray,
    inner: _Inner,
    best: Optimum | None,
    faces: tuple[_Face | None, ...] | None = None,
) -> Optimum:
    """`best`, or the SAE realising this inner solution if it is better. A latent in its limit
    of unbounded gain is realised at the tilt (hence gain) whose loss is lowest: a larger tilt
    moves the decoder off its limit direction, a smaller one loses digits to the large gain."""
    tilts = LIMIT_TILTS if faces is not None and any(f is not None for f in faces) else (1e-8,)
    levels = spec.loss_levels()
    realised = [_realise(world, spec, directions, inner, faces, tilt) for tilt in tilts]
    losses = [float(expected_loss(world, params, float(spec.l1), levels)) for params in realised]
    params, loss = realised[int(np.argmin(losses))], min(losses)
    fired = codes(world, params) > 0
    return (
        Optimum(params, loss, _fired(fired.T), 0) if _better(loss, fired.T, best, world) else best
    )


def _better(
    loss: float, active: np.ndarray, best: Optimum | None, world: NumericFeatureModel
) -> bool:
    """Lower loss wins; exact ties (e.g. at l1 = 0 a latent firing on the complementary states
    with the opposite sign and a shifted decoder bias) go to the sparser solution, the limit
    of l1 -> 0+."""
    if best is None or loss < best.loss - TIE_TOL:
        return True
    firing = float((active @ world.probabilities).sum())
    best_firing = float((np.array(best.active, dtype=float) @ world.probabilities).sum())
    return loss <= best.loss + TIE_TOL and firing < best_firing - 1e-12


def _fired(active: np.ndarray) -> tuple[tuple[bool, ...], ...]:
    return tuple(tuple(bool(b) for b in row) for row in active)
