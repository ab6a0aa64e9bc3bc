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
ordinary constrained optima: `_least_distance` solves that quadratic programme exactly (Lawson
and Hanson's reduction of a least-distance programme to non-negative least squares). What
remains is a search over unit directions:

* width 1, untied: closed form. Without the constraints, eliminating codes and biases leaves
  loss(e) = const - e^T H e + l1 w.e on the unit sphere (theory.closed_forms.
  width1_region_terms), whose stationary points are eigenvectors of H at l1 = 0 and roots of
  a secular polynomial otherwise. Its minimum is an exact lower bound on the region; when the
  minimiser satisfies the constraints it is the region's optimum, otherwise the constrained
  search below starts from the stationary points.
* otherwise: a low-dimensional smooth search (BFGS) over the directions of the constrained
  loss from the two best of a few data-driven starts per region; its gradient comes from the
  envelope theorem with the programme's multipliers. (Without the constraints the L1 term is
  unbounded below when two latents on one region point in opposite directions, so the
  constrained loss is searched from the start.)

Regions are tuples of separable state sets, one per latent, searched by branch and bound: a
partial tuple is abandoned when a lower bound on every completion cannot beat the best loss so
far. The bound ignores the L1 term and relaxes the shared decoder bias and directions: states
that the same set L of latents fire on (with m latents still unassigned) are reconstructed in
an affine subspace of dimension |L| + m, so they cost at least the residual of the best such
subspace (the trailing eigenvalues of their weighted covariance; without a decoder bias,
linear subspaces and the uncentred second moment). Where more than MAX_REGIONS regions survive
it (the hedging paper's 12-state multi-latent toy at width 3: about 25 million) the model is
refused with a ValueError rather than searched for hours.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.optimize

from theory.closed_forms import Width1Terms, width1_region_terms
from theory.features import FeatureModel, NumericFeatureModel
from theory.sae import SAEParams, SAESpec, codes, expected_loss, unit_rows

STARTS_PER_REGION = 2  # local searches per region, from the best starts by their loss
MAX_REGIONS = 200_000  # activation regions one exact optimum may list
TIE_TOL = 1e-10  # losses closer than this are the same optimum
RIDGE = 1e-12  # relative ridge that makes the region quadratic definite (codes' free directions)
FIRING_TOL = 1e-10  # pre-activations this close to 0 are on the boundary: the latent is off there
MAX_BOUND_STATES = 16  # the subspace-fit bound tabulates every subset of states


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


# --- lower bounds: subspace fits of the states each set of latents fires on ----------------------
def _fit_residuals(world: NumericFeatureModel, decoder_bias: bool) -> np.ndarray:
    """(2^S, n + 1): entry [mask, d] is the least weighted squared distance of the states in
    `mask` (bit s = state s) to a d-dimensional affine subspace (linear without a decoder bias)."""
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
    eig_MN = np.clip(np.linalg.eigvalsh(second_MNN), 0.0, None)  # ascending
    # keeping the top d eigen-directions leaves the n - d smallest eigenvalues
    kept = np.concatenate([np.zeros((2**S, 1)), np.cumsum(eig_MN[:, ::-1], axis=1)], axis=1)
    return eig_MN.sum(1)[:, None] - kept


def _region_bound(
    residual_MD: np.ndarray, masks: list[np.ndarray | int], unassigned: int, full: int
) -> np.ndarray:
    """Lower bound on the loss of every region that starts with latents firing on `masks`
    (arrays broadcast) and has `unassigned` more latents."""
    n = residual_MD.shape[1] - 1
    total = 0.0
    for L in itertools.product((False, True), repeat=len(masks)):
        group = full
        for inside, mask in zip(L, masks, strict=True):
            group = group & (mask if inside else ~mask)
        total = total + residual_MD[group, min(sum(L) + unassigned, n)]
    return total


# --- the convex inner problem: codes and biases for fixed decoder directions ---------------------
def _least_distance(G: np.ndarray, rhs: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """argmin psi^T G psi - 2 rhs.psi subject to C psi >= 0, and multipliers lam >= 0 with
    2 (G psi - rhs) = C^T lam.

    With G = L L^T (plus a tiny ridge: G is only semi-definite when codes have directions the
    loss does not see) and u = L^T (psi - psi0), psi0 the unconstrained minimiser, this is the
    least-distance programme min ||u|| s.t. C L^-T u >= -C psi0, whose solution is
    u = H^T v / (1 - h.v) for v the non-negative least-squares solution of [H^T; h^T] v = e_last
    (Lawson and Hanson, Solving Least Squares Problems, ch. 23)."""
    m = len(G)
    G = G + RIDGE * (np.trace(G) / m + 1e-6) * np.eye(m)
    psi0 = np.linalg.solve(G, rhs)
    slack = C @ psi0
    if slack.min() >= 0:
        return psi0, np.zeros(len(C))
    L = np.linalg.cholesky(G)
    H = np.linalg.solve(L, C.T).T  # C L^-T
    f = np.zeros(m + 1)
    f[-1] = 1.0
    # when the feasible set has no interior (a code forced to vanish) rounding can make the
    # reduction report infeasibility: loosen the constraints by a rounding-sized margin
    for margin in (0.0, 1e-12, 1e-9):
        E = np.vstack([H.T, (-slack - margin)[None, :]])
        v = scipy.optimize.nnls(E, f, maxiter=50 * len(C))[0]
        r = E @ v - f
        if -r[-1] > 1e-12:
            return psi0 + np.linalg.solve(L.T, -r[:-1] / r[-1]), 2.0 * v / -r[-1]
    return np.zeros(m), np.zeros(len(C))  # psi = 0 is always feasible


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
) -> _Inner:
    """Exact minimum over codes and decoder bias for unit decoder rows `directions` (k, n), on
    the closure of the region. A matryoshka loss (spec.loss_levels) is a weighted sum of
    level quadratics, each the full one with the code columns of latents outside the level
    zeroed: G = sum_j beta_j G o (keep_j keep_j^T), rhs = sum_j beta_j rhs o keep_j.

    The gradient comes from the envelope theorem: at the inner optimum only the explicit
    dependence on E counts, including that of the tied constraints kappa e.x_s + t through
    their multipliers."""
    X, p = world.states, world.probabilities
    S, n = X.shape
    k = len(directions)
    Z = _affine_design(X)
    bases = [Z if not spec.tied else np.stack([X @ e, np.ones(S)], axis=1) for e in directions]
    masked = [basis * active[i][:, None] for i, basis in enumerate(bases)]
    q = np.cumsum([0] + [basis.shape[1] for basis in bases])
    n_psi = q[-1] + (n if spec.decoder_bias else 0)
    J = np.zeros((S, n, n_psi))  # x_hat_s = J_s psi, psi = (psi_1..psi_k, b)
    for i, basis in enumerate(masked):
        J[:, :, q[i] : q[i + 1]] = directions[i][None, :, None] * basis[:, None, :]
    if spec.decoder_bias:
        J[:, :, q[-1] :] = np.eye(n)[None]
    levels = spec.loss_levels()
    nested = len(levels.weight_J) > 1  # one level is the plain loss (weight 1, w = 1)
    linear = np.zeros(n_psi)  # d(sum_s p_s sum_i w_i g_si) / d psi
    linear[: q[-1]] = np.concatenate(masked, axis=1).T @ p
    G = np.einsum("s,sai,saj->ij", p, J, J)
    rhs = np.einsum("s,sai,sa->i", p, J, X)
    if nested:
        owner = np.repeat(np.arange(k), np.diff(q))  # the latent of each code parameter
        keep_JP = np.hstack(
            [levels.prefix_JK[:, owner], np.ones((len(levels.weight_J), n_psi - q[-1]))]
        )
        linear[: q[-1]] *= levels.l1_weight_K[owner]
        G = G * ((keep_JP.T * levels.weight_J) @ keep_JP)
        rhs = rhs * (levels.weight_J @ keep_JP)
    rhs = rhs - 0.5 * l1 * linear
    side = np.where(active, 1.0, -1.0)  # (k, S): codes >= 0 on A, pre-activations <= 0 off A
    rows = []
    for i, basis in enumerate(bases):
        block = np.zeros((S, n_psi))
        block[:, q[i] : q[i + 1]] = side[i][:, None] * basis
        rows.append(block)
        if spec.tied:  # kappa >= 0
            rows.append(np.eye(n_psi)[q[i]][None])
    psi, lam = _least_distance(G, rhs, np.vstack(rows))
    code_params = [psi[q[i] : q[i + 1]] for i in range(k)]
    codes_SK = np.stack([masked[i] @ code_params[i] for i in range(k)], axis=1)
    bias = psi[q[-1] :] if spec.decoder_bias else np.zeros(n)
    if nested:
        residual_JSN = X - np.einsum("sai,ji->jsa", J, psi * keep_JP)
        loss = float(levels.weight_J @ (residual_JSN**2).sum(2) @ p + l1 * linear @ psi)
        # d loss / d g_si through the reconstructions: -2 sum_j beta_j [i in level j] r_js
        pull_SKN = np.einsum("j,jk,jsa->ska", levels.weight_J, levels.prefix_JK, residual_JSN)
        grad = -2.0 * np.einsum("sk,s,ska->ka", codes_SK, p, pull_SKN)
    else:
        residual = X - np.einsum("sai,i->sa", J, psi)
        loss = float(p @ (residual**2).sum(1) + l1 * linear @ psi)
        grad = -2.0 * codes_SK.T @ (p[:, None] * residual)
    if spec.tied:  # the code itself depends on e through kappa * e.x ...
        stride = S + 1
        for i in range(k):
            kappa = psi[q[i]]
            pulled = pull_SKN[:, i] if nested else residual
            pull = levels.l1_weight_K[i] * l1 - 2.0 * pulled @ directions[i]
            weight = p * active[i] * pull
            weight = weight - lam[i * stride : i * stride + S] * side[i]  # and the constraints
            grad[i] += kappa * weight @ X
    return _Inner(loss, codes_SK, bias, grad, code_params)


def _realise(
    world: NumericFeatureModel, spec: SAESpec, directions: np.ndarray, inner: _Inner
) -> SAEParams:
    """SAE parameters of an inner solution: folded when untied, tied when tied. Latents whose
    codes vanish everywhere get zero parameters; pre-activations left a rounding error above 0
    off the firing states are pushed back to 0 (the encoder bias moves by that error)."""
    k, n = directions.shape
    b = inner.bias
    encoder, encoder_bias, decoder = np.zeros((k, n)), np.full(k, -1.0), np.zeros((k, n))
    scale = max(1.0, float(np.abs(world.states).max()))
    for i, psi in enumerate(inner.code_params):
        if not (inner.codes[:, i] > FIRING_TOL * scale).any():
            continue  # dead: zero encoder and decoder, negative bias
        if spec.tied:
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


# --- direction search ---------------------------------------------------------------------------
def _unit_rows(y: np.ndarray, k: int, n: int) -> np.ndarray:
    rows = y.reshape(k, n)
    rows = rows / np.maximum(np.abs(rows).max(axis=1, keepdims=True), 1e-300)  # no overflow
    return unit_rows(rows)


def _top_direction(second: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(second)
    return vecs[:, -1] * np.sign(vecs[:, -1].sum() or 1.0) if vals[-1] > 1e-15 else fallback


def _direction_starts(
    world: NumericFeatureModel, active: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Starting decoder directions for a region, one row per latent: the top uncentred
    principal direction of the states only that latent fires on, of all its states, their
    mean, the normal of a separating threshold for its states (a tied latent's encoder must
    separate them, so its direction cannot be just any of the others), halfway between that
    normal and the principal direction, the first tilted by 1e-4 toward the normal, the nearest
    feature directions to the first three, and one random draw."""
    X, p = world.states, world.probabilities
    k, n = len(active), X.shape[1]
    fallback = np.ones(n) / np.sqrt(n)
    on = active.astype(bool)
    only = on & (on.sum(0) == 1)
    families = []
    for sets in (only, on):
        families.append(
            np.stack([_top_direction((X * (p * a)[:, None]).T @ X, fallback) for a in sets])
        )
    means = np.stack([(p * a) @ X for a in active])
    families.append(_unit_rows(means + 1e-12 * fallback, k, n))
    for rows in list(families):
        families.append(np.eye(n)[np.abs(rows).argmax(1)])
    states = np.ascontiguousarray(X, dtype=float)
    normals = np.stack(
        [_separator(states.tobytes(), *states.shape, tuple(a)) if a.any() else fallback for a in on]
    )
    families.append(normals)
    families.append(_unit_rows(normals + families[1], k, n))
    # a tied latent's best direction can be the limit of ones that barely separate its states
    # (the loss falls toward a direction where a state it must leave out ties with one it
    # fires on): start a hair's breadth on the separating side of the principal direction
    families.append(_unit_rows(families[0] + 1e-4 * normals, k, n))
    families.append(_unit_rows(rng.normal(size=(k, n)), k, n))
    return families


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


def _reduced(world: NumericFeatureModel, spec: SAESpec, active: np.ndarray, l1: float):  # noqa: ANN202 (a closure for scipy)
    """The region's loss as a function of the decoder rows (k * n flat) and its gradient."""
    k, n = len(active), world.states.shape[1]

    def fun(y: np.ndarray) -> tuple[float, np.ndarray]:
        if not np.isfinite(y).all():  # a runaway line-search step: reject it
            return np.inf, np.zeros_like(y)
        rows = y.reshape(k, n)
        norms = np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-300)
        e = rows / norms
        inner = _inner_solve(world, spec, e, active, l1)
        g = inner.grad
        return inner.loss, ((g - (g * e).sum(1, keepdims=True) * e) / norms).ravel()

    return fun


def _minimise(fun, start: np.ndarray) -> np.ndarray:  # noqa: ANN001
    k, n = start.shape
    with np.errstate(over="ignore", invalid="ignore"):  # trial steps far out are rejected
        res = scipy.optimize.minimize(
            fun, start.ravel(), jac=True, method="BFGS", options={"gtol": 1e-7, "maxiter": 200}
        )
    return _unit_rows(res.x, k, n)


def _search_region(
    world: NumericFeatureModel,
    spec: SAESpec,
    active: np.ndarray,
    l1: float,
    starts: list[np.ndarray],
    to_beat: float,
) -> list[tuple[np.ndarray, _Inner]]:
    """Local optima over unit decoder directions of a region's closure, from the best
    STARTS_PER_REGION starts (by their loss); a start whose local optimum does not beat
    `to_beat` ends the region's search."""
    closed = _reduced(world, spec, active, l1)
    values = [closed(start.ravel())[0] for start in starts]
    found = []
    for j in np.argsort(values, kind="stable")[:STARTS_PER_REGION]:
        directions = _minimise(closed, starts[j])
        found.append((directions, _inner_solve(world, spec, directions, active, l1)))
        if found[-1][1].loss > to_beat - 1e-12:
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
        closed = _reduced(world, spec, actives[r], l1)
        for value, e in points[r][:STARTS_PER_REGION]:
            if value > best.loss + TIE_TOL:
                break
            directions = _minimise(closed, e)
            inner = _inner_solve(world, spec, directions, actives[r], l1)
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
    parameters.
    """
    world = model.numeric() if isinstance(model, FeatureModel) else model
    l1 = float(spec.l1)
    S, n = world.states.shape
    k = spec.width
    residual_MD = _fit_residuals(world, spec.decoder_bias)
    sets = [0] + [sum(1 << s for s, on in enumerate(mask) if on) for mask in separable_sets(world)]
    masks = np.array(sets, dtype=np.int64)
    rng = np.random.default_rng(seed)
    nobody = np.eye(n)[:1].repeat(k, 0)
    silent = _inner_solve(world, spec, nobody, np.zeros((k, S)), l1)
    best = _candidate(world, spec, nobody, silent, None)
    full = 2**S - 1
    group_K = spec.loss_levels().prefix_JK.sum(0)  # latents of one level are interchangeable
    regions = _regions(residual_MD, masks, k, full, best.loss, group_K)
    bounds = [float(_region_bound(residual_MD, list(masks[list(r)]), 0, full)) for r in regions]
    regions = [regions[i] for i in np.argsort(bounds, kind="stable")]

    def as_active(region: tuple[int, ...]) -> np.ndarray:
        return ((masks[list(region)][:, None] >> np.arange(S)) & 1).astype(float)

    if k == 1 and not spec.tied:
        best = _width1_optimum(world, spec, [as_active(r) for r in regions], l1, best)
        return Optimum(best.params, best.loss, best.active, len(regions))
    tried = 0
    for region in regions:
        active = as_active(region)
        if _region_bound(residual_MD, list(masks[list(region)]), 0, full) > best.loss - 1e-12:
            continue  # the best has improved since the region was listed
        tried += 1
        starts = _direction_starts(world, active, rng)
        for directions, inner in _search_region(world, spec, active, l1, starts, best.loss):
            best = _candidate(world, spec, directions, inner, best)
    return Optimum(best.params, best.loss, best.active, tried)


def _regions(
    residual_MD: np.ndarray,
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
            raise ValueError(
                f"more than {MAX_REGIONS} activation regions survive the lower bound; this "
                "model and width are too large for the exact optimum (theory.numeric."
                "numeric_optimum searches it without a guarantee)"
            )
        same = chosen and group_K[len(chosen)] == group_K[len(chosen) - 1]
        options = np.arange((chosen[-1] if same else len(masks) - 1) + 1)
        bounds = _region_bound(
            residual_MD, [masks[c] for c in chosen] + [masks[options]], k - len(chosen) - 1, full
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
) -> Optimum:
    """`best`, or the SAE realising this inner solution if it is better."""
    params = _realise(world, spec, directions, inner)
    loss = float(expected_loss(world, params, float(spec.l1), spec.loss_levels()))
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
