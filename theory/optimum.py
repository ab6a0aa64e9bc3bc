"""Exact optima of small SAEs on feature models, by enumerating activation regions.

On a feature model an SAE latent is active on some set A of states. Inside one such region the
ReLU is the identity on A and zero elsewhere, so the loss is smooth. Writing each latent's
decoder as a unit direction e times its norm, and its norm-scaled code g_s = ||d|| h_s (an affine
function of x_s on A), reconstruction and the decoder-norm-weighted L1 term depend on (e, g)
only. For fixed directions E every other parameter (codes, biases) enters a convex quadratic,
solved exactly by one linear solve. What remains is a search over unit directions:

* width 1, untied: closed form. Eliminating codes and biases leaves
  loss(e) = const - e^T H e + l1 w.e on the unit sphere: eigenvectors of H at l1 = 0, the
  roots of a secular polynomial otherwise (see `width1_region_terms`).
* otherwise: a low-dimensional smooth search over directions (multi-start) per region.

Each region's stationary point is kept only if it is consistent (codes >= 0 on A and the affine
pre-activation <= 0 off A); the best consistent region is the global optimum.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.optimize

from theory.features import FeatureModel, NumericFeatureModel
from theory.sae import SAEParams, SAESpec, expected_loss

CONSISTENCY_TOL = 1e-9
MAX_STARTS_PER_REGION = 6
TIE_TOL = 1e-10  # losses closer than this are the same optimum


@dataclass(frozen=True)
class Optimum:
    """Best SAE found by region enumeration: folded parameters (unit decoder rows), its exact
    loss, and which states each latent fires on (one boolean per state, model state order)."""

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


def _consistent_encoder(
    Z: np.ndarray, on: np.ndarray, theta: np.ndarray, codes: np.ndarray
) -> np.ndarray | None:
    """An affine encoder equal to `codes` on the active states and <= 0 elsewhere, or None.

    The least-squares theta is tried first; when the active states do not pin theta down, the
    free directions are used (LP) to push the inactive states below zero."""
    if np.any(codes[on] < -CONSISTENCY_TOL):
        return None
    if np.all(Z[~on] @ theta <= CONSISTENCY_TOL):
        return theta
    k = Z.shape[1]
    res = scipy.optimize.linprog(
        np.zeros(k),
        A_eq=Z[on] if on.any() else None,
        b_eq=codes[on] if on.any() else None,
        A_ub=Z[~on],
        b_ub=np.full((~on).sum(), -1e-12),
        bounds=[(None, None)] * k,
    )
    return res.x if res.status == 0 else None


# --- the convex inner problem: codes and biases for fixed decoder directions ---------------------
def _inner_solve(
    world: NumericFeatureModel,
    spec: SAESpec,
    directions: np.ndarray,
    active: np.ndarray,
    l1: float,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Exact minimum over codes and decoder bias for unit decoder rows `directions` (k, n).

    Returns (loss, codes (S, k), decoder bias (n,), gradient of the loss with respect to the
    directions (k, n)). Untied codes are free affine functions of x on each latent's active
    states; tied codes are kappa * e.x + t (encoder parallel to the decoder). The gradient uses
    the envelope theorem: at the inner optimum only the explicit dependence on E counts.
    """
    X, p = world.states, world.probabilities
    S, n = X.shape
    k = len(directions)
    Z = _affine_design(X)
    bases = []  # code_si = basis_i[s] . theta_i, zero off the active states
    for i in range(k):
        basis = Z if not spec.tied else np.stack([X @ directions[i], np.ones(S)], axis=1)
        bases.append(basis * active[i][:, None])
    q = np.cumsum([0] + [b.shape[1] for b in bases])
    n_psi = q[-1] + (n if spec.decoder_bias else 0)
    J = np.zeros((S, n, n_psi))  # x_hat_s = J_s psi, psi = (theta_1..theta_k, b)
    for i, basis in enumerate(bases):
        J[:, :, q[i] : q[i + 1]] = directions[i][None, :, None] * basis[:, None, :]
    if spec.decoder_bias:
        J[:, :, q[-1] :] = np.eye(n)[None]
    linear = np.zeros(n_psi)  # d(sum_s p_s sum_i g_si) / d psi
    linear[: q[-1]] = np.concatenate(bases, axis=1).T @ p
    G = np.einsum("s,sai,saj->ij", p, J, J)
    rhs = np.einsum("s,sai,sa->i", p, J, X) - 0.5 * l1 * linear
    psi = np.linalg.lstsq(G, rhs, rcond=None)[0]
    residual = X - np.einsum("sai,i->sa", J, psi)
    loss = float(p @ (residual**2).sum(1) + l1 * linear @ psi)
    codes = np.stack([bases[i] @ psi[q[i] : q[i + 1]] for i in range(k)], axis=1)
    bias = psi[q[-1] :] if spec.decoder_bias else np.zeros(n)
    grad = -2.0 * codes.T @ (p[:, None] * residual)
    if spec.tied:  # the code itself depends on e through kappa * e.x
        for i in range(k):
            kappa = psi[q[i]]
            weight = p * active[i] * (l1 - 2.0 * residual @ directions[i])
            grad[i] += kappa * weight @ X
    return loss, codes, bias, grad


def _params_from_codes(
    world: NumericFeatureModel,
    spec: SAESpec,
    directions: np.ndarray,
    active: np.ndarray,
    codes: np.ndarray,
    bias: np.ndarray,
) -> SAEParams | None:
    """Folded SAE parameters realising `codes` (S, k), or None if some latent is inconsistent."""
    Z = _affine_design(world.states)
    k, n = directions.shape
    encoder, encoder_bias = np.zeros((k, n)), np.zeros(k)
    for i in range(k):
        on = active[i].astype(bool)
        theta = np.linalg.lstsq(Z[on], codes[on, i], rcond=None)[0]
        if spec.tied:
            # tied codes are kappa * e.x + t with kappa > 0 (the encoder is the decoder row)
            proj = world.states @ directions[i]
            basis = np.stack([proj, np.ones(len(proj))], axis=1)
            kappa, t = np.linalg.lstsq(basis[on], codes[on, i], rcond=None)[0]
            if kappa <= 0 and on.sum() > 1 and np.ptp(proj[on]) > 1e-12:
                return None
            kappa = max(kappa, 0.0)
            theta = np.append(kappa * directions[i], t)
        theta = _consistent_encoder(Z, on, theta, codes[:, i])
        if theta is None:
            return None
        encoder[i] = theta[:n]
        encoder_bias[i] = theta[n] + theta[:n] @ bias  # pre-activation uses x - b_dec
    return SAEParams(encoder, encoder_bias, directions.copy(), bias)


# --- width 1, untied: the closed form -----------------------------------------------------------
@dataclass(frozen=True)
class Width1Terms:
    """loss(e) = constant - e^T H e + l1 * w.e over unit decoder directions e in one region."""

    H: np.ndarray
    w: np.ndarray
    constant: float


def width1_region_terms(
    world: NumericFeatureModel, on: np.ndarray, l1: float, decoder_bias: bool
) -> Width1Terms | None:
    """Reduce a width-1 untied region to its quadratic form on the sphere.

    With M = C^T Z^+ C (C = sum_A p z x^T, Z = sum_A p z z^T, z = (x, 1)), mu = E[x],
    mu_A = sum_A p x, mu_off = mu - mu_A and P = P(A):
      decoder bias:    H = M - mu mu^T + mu_off mu_off^T / (1 - P),  w = mu_A - P mu_off / (1 - P),
                       constant = E||x||^2 - ||mu||^2 - l1^2 P / (4 (1 - P));
      no decoder bias: H = M, w = mu_A, constant = E||x||^2 - l1^2 P / 4.
    Returns None for a region with no stationary point (P = 1 with a decoder bias and l1 > 0).
    """
    X, p = world.states, world.probabilities
    Z = _affine_design(X)
    pa = p * on
    C = Z.T @ (pa[:, None] * X)
    Zm = Z.T @ (pa[:, None] * Z)
    M = C.T @ np.linalg.pinv(Zm) @ C
    second = float(p @ (X**2).sum(1))
    mu, mu_A = X.T @ p, X.T @ pa
    P = float(pa.sum())
    if not decoder_bias:
        return Width1Terms(M, mu_A, second - l1**2 * P / 4)
    mu_off = mu - mu_A
    if P > 1 - 1e-12:
        if l1 > 0:
            return None
        return Width1Terms(M - np.outer(mu, mu), np.zeros_like(mu), second - mu @ mu)
    H = M - np.outer(mu, mu) + np.outer(mu_off, mu_off) / (1 - P)
    w = mu_A - P * mu_off / (1 - P)
    return Width1Terms(H, w, second - mu @ mu - l1**2 * P / (4 * (1 - P)))


def sphere_stationary_points(terms: Width1Terms, l1: float) -> list[np.ndarray]:
    """Every stationary point of -e^T H e + l1 w.e over unit e.

    Stationarity is (nu I - H) e = -(l1/2) w. In H's eigenbasis (values h_i, w components c_i)
    e_i = -(l1/2) c_i / (nu - h_i), and ||e|| = 1 is the secular equation
    prod_j (nu - h_j)^2 - sum_i (l1 c_i / 2)^2 prod_{j != i} (nu - h_j)^2 = 0, a polynomial of
    degree 2n whose real roots give the candidates. The global minimiser on the sphere usually
    has codes of the wrong sign (the L1 term rewards negative codes), which is why every
    stationary point is returned and the region's consistency check chooses. Eigenvectors of H
    (both signs) cover l1 = 0 and the hard case where w misses an eigenvector.
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


# --- direction search for the other variants ------------------------------------------------------
def _unit_rows(y: np.ndarray, k: int, n: int) -> np.ndarray:
    rows = y.reshape(k, n)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-300)


def _direction_starts(n: int, k: int, rng: np.random.Generator, n_random: int) -> list[np.ndarray]:
    """Starting decoder directions: features, pairs of features, and random draws."""
    singles = [np.eye(n)[i] for i in range(n)]
    pairs = [
        (np.eye(n)[i] + np.eye(n)[j]) / np.sqrt(2) for i, j in itertools.combinations(range(n), 2)
    ]
    candidates = singles + pairs
    starts = (
        [np.stack(c) for c in itertools.permutations(candidates, k)] if k <= len(candidates) else []
    )
    starts += [rng.normal(size=(k, n)) for _ in range(n_random)]
    return [_unit_rows(s.ravel(), k, n) for s in starts]


def _search_region(
    world: NumericFeatureModel,
    spec: SAESpec,
    active: np.ndarray,
    l1: float,
    starts: list[np.ndarray],
    to_beat: float,
) -> list[np.ndarray]:
    """Local minima over unit decoder directions of the region's reduced loss.

    Starts are tried best first; once a local minimum fails to beat `to_beat` (the best
    consistent loss so far; the region's unconstrained loss bounds its consistent loss from
    below) the region is abandoned."""
    k, n = spec.width, world.states.shape[1]

    def reduced(y: np.ndarray) -> tuple[float, np.ndarray]:
        rows = y.reshape(k, n)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        e = rows / norms
        loss, _, _, grad_e = _inner_solve(world, spec, e, active, l1)
        grad_y = (grad_e - (grad_e * e).sum(1, keepdims=True) * e) / norms  # through e = y/||y||
        return loss, grad_y.ravel()

    starts = sorted(starts, key=lambda e: reduced(e.ravel())[0])[:MAX_STARTS_PER_REGION]
    found = []
    for start in starts:
        res = scipy.optimize.minimize(
            reduced, start.ravel(), jac=True, method="BFGS", options={"gtol": 1e-9}
        )
        if res.fun > to_beat - 1e-12:
            break
        found.append(_unit_rows(res.x, k, n))
    return found


# --- the public entry point ---------------------------------------------------------------------
def global_optimum(
    model: FeatureModel | NumericFeatureModel, spec: SAESpec, seed: int = 0
) -> Optimum:
    """The global optimum of `spec` on `model` by enumerating activation regions.

    Width 1 untied uses the closed form per region; other variants search decoder directions per
    region with every other parameter solved exactly. Parameters come back folded (unit decoder
    rows); latents that never fire have zero parameters.
    """
    world = model.numeric() if isinstance(model, FeatureModel) else model
    l1 = float(spec.l1)
    n, k = world.states.shape[1], spec.width
    singles = [np.array(a, dtype=float) for a in separable_sets(world)]
    dead = np.zeros(len(world.probabilities))
    region_choices = [dead, *singles]
    rng = np.random.default_rng(seed)
    # latents are interchangeable: enumerate unordered regions (dead latents last)
    regions = [
        np.stack([region_choices[i] for i in sorted(combo, reverse=True)])
        for combo in itertools.combinations_with_replacement(range(len(region_choices)), k)
    ]
    if k == 1 and not spec.tied:
        return _width1_optimum(world, spec, regions, l1)
    starts = _direction_starts(n, k, rng, n_random=2)
    # promising regions first, so the pruning bound tightens early
    regions.sort(key=lambda a: min(_inner_solve(world, spec, e, a, l1)[0] for e in starts))
    best: Optimum | None = None
    for active in regions:
        if best is not None and _silent_states_bound(world, spec, active) > best.loss - 1e-12:
            continue
        if not active.any():
            candidates = [np.eye(n)[:1].repeat(k, 0)]
        else:
            to_beat = np.inf if best is None else best.loss
            candidates = _search_region(world, spec, active, l1, starts, to_beat)
        for directions in candidates:
            best = _consider(best, world, spec, directions, active, l1, len(regions))
    assert best is not None  # the all-dead SAE is always consistent
    return best


def _width1_optimum(
    world: NumericFeatureModel, spec: SAESpec, regions: list[np.ndarray], l1: float
) -> Optimum:
    """Width 1, untied: every region's stationary points have closed-form losses, so sort them
    all and take the first one that is consistent; no other point needs checking."""
    n = world.states.shape[1]
    candidates = []  # (closed-form loss, active, directions)
    for active in regions:
        if not active.any():
            dead = np.eye(n)[:1]
            candidates.append((_inner_solve(world, spec, dead, active, l1)[0], active, dead))
            continue
        terms = width1_region_terms(world, active[0].astype(bool), l1, spec.decoder_bias)
        if terms is None:
            continue
        for e in sphere_stationary_points(terms, l1):
            value = terms.constant - e @ terms.H @ e + l1 * terms.w @ e
            candidates.append((value, active, e[None, :]))
    candidates.sort(key=lambda c: c[0])
    best: Optimum | None = None
    for value, active, directions in candidates:
        if best is not None and value > best.loss + TIE_TOL:
            break
        best = _consider(best, world, spec, directions, active, l1, len(regions))
    assert best is not None  # the all-dead SAE is always consistent
    return best


def _consider(
    best: Optimum | None,
    world: NumericFeatureModel,
    spec: SAESpec,
    directions: np.ndarray,
    active: np.ndarray,
    l1: float,
    n_regions: int,
) -> Optimum | None:
    """`best`, or this region's stationary point if it is consistent and better."""
    params = _realise(world, spec, directions, active, l1)
    if params is None:
        return best
    loss = float(expected_loss(world, params, l1))
    return (
        Optimum(params, loss, _fired(active), n_regions)
        if _better(loss, active, best, world)
        else best
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


def _realise(
    world: NumericFeatureModel, spec: SAESpec, directions: np.ndarray, active: np.ndarray, l1: float
) -> SAEParams | None:
    """Folded parameters of a region's stationary point, or None if it is inconsistent."""
    _, codes, bias, _ = _inner_solve(world, spec, directions, active, l1)
    params = _params_from_codes(world, spec, directions, active, codes, bias)
    return None if params is None else _zero_dead(params, active)


def _fired(active: np.ndarray) -> tuple[tuple[bool, ...], ...]:
    return tuple(tuple(bool(b) for b in row) for row in active)


def _silent_states_bound(world: NumericFeatureModel, spec: SAESpec, active: np.ndarray) -> float:
    """A lower bound on a region's loss: states where no latent fires are reconstructed by the
    decoder bias alone, so they cost at least their weighted spread around it."""
    silent = ~active.any(axis=0)
    p, X = world.probabilities[silent], world.states[silent]
    if not silent.any():
        return 0.0
    if not spec.decoder_bias:
        return float(p @ (X**2).sum(1))
    centre = p @ X / p.sum() if p.sum() > 0 else 0.0
    return float(p @ ((X - centre) ** 2).sum(1))


def _zero_dead(params: SAEParams, active: np.ndarray) -> SAEParams:
    """Latents that never fire get zero encoder and decoder (and a negative bias to stay off)."""
    dead = ~active.any(axis=1)
    if not dead.any():
        return params
    enc, b_enc, dec = params.encoder.copy(), params.encoder_bias.copy(), params.decoder.copy()
    enc[dead], dec[dead], b_enc[dead] = 0.0, 0.0, -1.0
    return SAEParams(enc, b_enc, dec, params.decoder_bias)
