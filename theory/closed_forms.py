"""Closed-form pieces of narrow-SAE optima, as sympy expressions of the feature model.

Pure functions: they take a FeatureModel (symbols allowed) and return expressions. Each one is
the exact optimum of a sub-problem; theory.optimum combines them into global optima and
theory.predictions names the quantities people ask about.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import sympy as sp

from theory.features import FeatureModel, NumericFeatureModel, Scalar, _sym


def _active_rows(model: FeatureModel, active: Sequence[bool]) -> tuple[sp.Matrix, sp.Matrix]:
    """(states, probabilities) of the states a latent fires on."""
    if len(active) != model.n_states:
        raise ValueError(f"active has {len(active)} entries; the model has {model.n_states} states")
    X = model.state_matrix()
    rows = [s for s in range(model.n_states) if active[s]]
    if not rows:
        raise ValueError("the latent must fire on at least one state")
    return X.extract(rows, list(range(model.dim))), sp.Matrix(
        [model.probabilities[s] for s in rows]
    )


def regression_decoder(
    model: FeatureModel, codes: sp.Matrix, decoder_bias: bool = False
) -> tuple[sp.Matrix, sp.Matrix]:
    """MSE-optimal decoder for given latent activations a_s (codes: S x k, one row per state).

    D = E[x a^T] E[a a^T]^-1 (rows of the returned k x n matrix are decoder rows); with a decoder
    bias the regression has an intercept (regress x on (a, 1)). Returns (decoder, bias)."""
    X, p = model.state_matrix(), sp.diag(*model.probabilities)
    A = codes if not decoder_bias else codes.row_join(sp.ones(model.n_states, 1))
    coef = (A.T * p * A).inv() * (A.T * p * X)  # (k[+1]) x n
    coef = sp.simplify(coef)
    k = codes.shape[1]
    bias = coef[k, :].T if decoder_bias else sp.zeros(model.dim, 1)
    return coef[:k, :], bias


def tracking_decoder(
    model: FeatureModel, tracked: Sequence[int], decoder_bias: bool = False
) -> tuple[sp.Matrix, sp.Matrix]:
    """Decoder rows of latents that each track one feature exactly (a_i = s_i m_i).

    Without a decoder bias, latent i's row is f_i + sum_j E[s_i m_i s_j m_j]/E[s_i^2 m_i^2] f_j for
    untracked j: it absorbs the conditional expectation of every co-occurring feature (hedging)."""
    for i in tracked:
        if not 0 <= i < model.n_features:
            raise ValueError(f"tracked feature {i} is out of range 0..{model.n_features - 1}")
    codes = model.code_matrix().extract(list(range(model.n_states)), list(tracked))
    return regression_decoder(model, codes, decoder_bias)


def soft_threshold_code(x: sp.Matrix, direction: sp.Matrix, bias: sp.Matrix, l1: Scalar) -> sp.Expr:
    """Optimal code of a unit-norm decoder direction e for one input under L1:
    argmin_h>=0 ||x - b - e h||^2 + l1 h = max(0, e.(x - b) - l1/2)."""
    return sp.Max(0, (direction.T * (x - bias))[0] - _sym(l1, "l1") / 2)


class Width1Terms(NamedTuple):
    """loss(e) = constant - e^T H e + l1 w.e over unit decoder directions e in one region, and
    P_active, the probability of the region's states. Entries are sympy (from a FeatureModel) or
    numpy (from a NumericFeatureModel; w is then a flat vector)."""

    H: sp.Matrix | np.ndarray
    w: sp.Matrix | np.ndarray
    constant: sp.Expr | float
    P_active: sp.Expr | float


def width1_region_terms(
    model: FeatureModel | NumericFeatureModel,
    active: Sequence[bool],
    l1: Scalar = 0,
    decoder_bias: bool = True,
    noise: sp.Matrix | np.ndarray | None = None,
) -> Width1Terms | None:
    """Reduction of a width-1 untied SAE whose latent fires on `active` states to a quadratic
    form on the unit sphere of decoder directions (derivation in theory.optimum).

    With z = (x, 1), C = sum_A p z x^T, Z = sum_A p z z^T, M = C^T Z^+ C (the part of the active
    states' second moment that an affine code can reproduce; the uncentred second moment
    sum_A p x x^T when the active states are affinely independent), mu = E[x],
    mu_A = sum_A p x, mu_off = mu - mu_A and P = P(A):
      decoder bias:    H = M - mu mu^T + mu_off mu_off^T / (1 - P),  w = mu_A - P mu_off / (1 - P),
                       constant = E||x||^2 - ||mu||^2 - l1^2 P / (4 (1 - P));
      no decoder bias: H = M, w = mu_A, constant = E||x||^2 - l1^2 P / 4.
    When every state is active (P = 1) with a decoder bias the latent duplicates the bias:
    H = M - mu mu^T, w = 0 at l1 = 0, and None (no stationary point) for l1 > 0.

    Additive noise x + eps, eps ~ (0, Sigma) independent of the state (`noise` = Sigma, d x d),
    only changes the moments the reduction is made of: C += P [Sigma; 0], Z += P diag(Sigma, 0)
    and E||x||^2 += tr Sigma. This is exact when the latent's code is an affine function of the
    noisy input on the whole support, i.e. when it fires on every state (then M = E[x x^T] +
    Sigma and H = Cov(x) + Sigma: isotropic noise moves no direction, it only adds its variance
    to every eigenvalue); for a latent that fires on some states only it is the small-noise limit
    in which noise never carries an input across the latent's threshold.

    A FeatureModel gives exact sympy expressions (symbols allowed), a NumericFeatureModel the
    same quantities as floats, fast enough to run on every region of a search."""
    symbolic = isinstance(model, FeatureModel)
    if symbolic:
        Xa, pa = _active_rows(model, active)
        X, p = model.state_matrix(), sp.Matrix(model.probabilities)
        l1 = _sym(l1, "l1")
        Za = Xa.row_join(sp.ones(Xa.rows, 1))
        Pa = sp.diag(*pa)
        P = sum(pa, sp.Integer(0))
        second = sum((p[s] * (X[s, :] * X[s, :].T)[0] for s in range(X.rows)), sp.Integer(0))
        if noise is not None:
            Sigma = sp.Matrix(noise)
            C = Za.T * Pa * Xa + P * Sigma.col_join(sp.zeros(1, Sigma.cols))
            Z = Za.T * Pa * Za + P * sp.diag(Sigma, 0)
            M = C.T * Z.inv() * C
            second += Sigma.trace()
        elif Za.rank() == Za.rows:  # affinely independent active states: codes free per state
            M = Xa.T * Pa * Xa
        else:
            M = (Za.T * Pa * Xa).T * (Za.T * Pa * Za).pinv() * (Za.T * Pa * Xa)
        everything = sp.simplify(P - 1) == 0
    else:
        X, p = model.states, model.probabilities[:, None]
        on = np.asarray(active, dtype=bool)
        if on.shape != p.shape[:1]:
            raise ValueError(f"active has {on.size} entries; the model has {len(p)} states")
        Xa, pa = X[on], p[on]
        Za = np.hstack([Xa, np.ones((len(Xa), 1))])
        C = Za.T @ (pa * Xa)
        P = float(pa.sum())
        Z = Za.T @ (pa * Za)
        second = float(p[:, 0] @ (X**2).sum(1))
        if noise is not None:
            Sigma = np.asarray(noise, dtype=float)
            C = C + P * np.vstack([Sigma, np.zeros((1, len(Sigma)))])
            Z = Z + P * np.pad(Sigma, ((0, 1), (0, 1)))
            second += float(np.trace(Sigma))
        M = C.T @ np.linalg.pinv(Z) @ C
        everything = P > 1 - 1e-12
    mu, mu_A = X.T @ p, Xa.T @ pa  # columns (n x 1)
    if not decoder_bias:
        H, w, constant = M, mu_A, second - l1**2 * P / 4
    elif everything:
        if l1:
            return None
        H, w, constant = M - mu @ mu.T, 0 * mu, second - (mu.T @ mu)[0, 0]
    else:
        mu_off = mu - mu_A
        H = M - mu @ mu.T + mu_off @ mu_off.T / (1 - P)
        w = mu_A - P * mu_off / (1 - P)
        constant = second - (mu.T @ mu)[0, 0] - l1**2 * P / (4 * (1 - P))
    if symbolic:
        return Width1Terms(sp.simplify(H), sp.simplify(w), sp.simplify(constant), sp.simplify(P))
    return Width1Terms(H, w.ravel(), float(np.squeeze(constant)), P)


def top_eigen_angle(H: sp.Matrix) -> sp.Expr:
    """Angle theta of the top eigenvector (cos theta, sin theta) of a symmetric 2 x 2 matrix:
    theta = atan2(2 H01, H00 - H11) / 2."""
    if H.shape != (2, 2):
        raise ValueError(f"top_eigen_angle needs a 2 x 2 matrix, got {H.shape}")
    return sp.atan2(2 * H[0, 1], H[0, 0] - H[1, 1]) / 2


def top_eigen_ratio(H: sp.Matrix) -> sp.Expr:
    """Second over first component of H's top eigenvector (2 x 2): the hedging ratio
    (lambda_max - H00) / H01, i.e. tan(theta)."""
    if H.shape != (2, 2):
        raise ValueError(f"top_eigen_ratio needs a 2 x 2 matrix, got {H.shape}")
    a, b, c = H[0, 0], H[0, 1], H[1, 1]
    top = (a + c) / 2 + sp.sqrt(((a - c) / 2) ** 2 + b**2)
    return (top - a) / b


def tied_unit_latent_terms(model: FeatureModel, active: Sequence[bool]) -> sp.Matrix:
    """A tied, unit-norm latent without biases that fires on `active` states has loss
    E||x||^2 - e^T M e with M = sum_A p x x^T: its decoder is M's top eigenvector (uncentred PCA
    of the inputs it fires on). Returns M."""
    Xa, pa = _active_rows(model, active)
    return sp.simplify(Xa.T * sp.diag(*pa) * Xa)


def absorption_offset_loss(
    p_parent_only: Scalar, p_both: Scalar, p_child_only: Scalar, l1: Scalar
) -> tuple[sp.Expr, sp.Symbol]:
    """Loss of the absorption family of a width-2 SAE on a parent/child pair (no biases):
    encoder rows f1 - delta f2 and f2, decoder rows f1 and f2 + delta f1. Reconstruction is exact
    except on child-only inputs (error delta^2); the decoder-norm-weighted L1 term is
    P10 + P11 (1 - delta + sqrt(1 + delta^2)) + P01 sqrt(1 + delta^2).

    Its slope at delta = 0 is -l1 P11 < 0: any sparsity pressure starts absorption; with
    P01 = 0 (true hierarchy) the loss falls all the way to delta = 1 (full absorption)."""
    delta = sp.Symbol("delta", nonnegative=True)
    p10, p11, p01 = (
        _sym(v, n) for v, n in ((p_parent_only, "P10"), (p_both, "P11"), (p_child_only, "P01"))
    )
    l1 = _sym(l1, "l1")
    norm2 = sp.sqrt(1 + delta**2)
    loss = p01 * delta**2 + l1 * (p10 + p11 * (1 - delta + norm2) + p01 * norm2)
    return loss, delta


def absorption_offset(p_parent_only: float, p_both: float, p_child_only: float, l1: float) -> float:
    """The optimal delta in [0, 1] of `absorption_offset_loss` (1 = full absorption)."""
    loss, delta = absorption_offset_loss(p_parent_only, p_both, p_child_only, l1)
    grad = sp.lambdify(delta, sp.diff(loss, delta), "math")
    if grad(0.0) >= 0:  # no sparsity pressure (or nothing to absorb): stay clean
        return 0.0
    if grad(1.0) <= 0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(100):  # bisection on the slope: the loss is convex in delta
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if grad(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def width1_secular_polynomial(H: sp.Matrix, w: sp.Matrix, l1: Scalar, nu: sp.Symbol) -> sp.Expr:
    """The secular polynomial of a width-1 region at l1 > 0 (2 x 2 H): stationary unit decoders
    of c - e^T H e + l1 w.e solve (nu I - H) e = -(l1/2) w, and ||e|| = 1 multiplied by
    det(nu I - H)^2 is
        P(nu) = det(nu I - H)^2 - (l1/2)^2 ||adj(nu I - H) w||^2,
    a quartic in nu (the eigenbasis form is in theory.optimum.sphere_stationary_points). The
    feasible optimum (codes >= 0 where the latent fires, so w.e > 0) is its largest real root
    below lambda_max(H): roots above lambda_max give w.e < 0 (the sphere's global minimum, with
    negative codes); as l1 grows the two roots between H's eigenvalues meet and vanish, and with
    them the firing latent."""
    if H.shape != (2, 2):
        raise ValueError(f"the secular polynomial is given for 2 x 2 H, got {H.shape}")
    shifted = nu * sp.eye(2) - H
    adj_w = shifted.adjugate() * sp.Matrix(w)
    return sp.expand(shifted.det() ** 2 - (_sym(l1, "l1") / 2) ** 2 * (adj_w.T * adj_w)[0])


def width1_root_ratio(H: sp.Matrix, w: sp.Matrix, nu: sp.Symbol) -> sp.Expr:
    """Child / parent component of the stationary decoder e ~ adj(nu I - H) w at the root nu."""
    adj_w = (nu * sp.eye(2) - H).adjugate() * sp.Matrix(w)
    return adj_w[1] / adj_w[0]


def largest_root_below(coefficients: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Largest real root below `bound` of polynomials with rows of coefficients (highest power
    first), batched: (N, degree + 1) and (N,) -> (N,), NaN where there is none."""
    coefficients = np.atleast_2d(np.asarray(coefficients, dtype=float))
    lead = coefficients[:, :1]
    degree = coefficients.shape[1] - 1
    companion = np.zeros((len(coefficients), degree, degree))
    companion[:, 0, :] = -coefficients[:, 1:] / lead
    companion[:, np.arange(1, degree), np.arange(degree - 1)] = 1.0
    roots = np.linalg.eigvals(companion)
    scale = np.maximum(1.0, np.abs(roots))
    real = np.abs(roots.imag) <= 1e-7 * scale
    below = real & (roots.real < np.asarray(bound, dtype=float)[:, None] - 1e-12)
    candidates = np.where(below, roots.real, -np.inf)
    best = candidates.max(axis=1)
    return np.where(np.isfinite(best), best, np.nan)


def full_absorption_l1(p_both: Scalar, p_child_only: Scalar) -> sp.Expr:
    """L1 from which the width-2 absorption family (see `absorption_offset_loss`) is fully
    absorbing (delta = 1: the parent latent no longer fires when the child does).

    The family's loss is convex in delta, so delta* = 1 exactly when its slope at 1 is <= 0:
        2 P01 + l1 (P11 (1/sqrt2 - 1) + P01 / sqrt2) <= 0
        <=>  l1 >= 2 sqrt2 P01 / ((sqrt2 - 1) P11 - P01)       (P01 < (sqrt2 - 1) P11),
    and never when P01 >= (sqrt2 - 1) P11. A true hierarchy (P01 = 0) absorbs fully at every
    l1 > 0, and so does the exact width-2 optimum (tests/theory/test_beyond.py). With P01 > 0
    the exact optimum, whose codes shrink with l1 and whose encoder is free, jumps to full
    absorption far earlier than the family: at P11 = 0.05, P01 = 0.0075 (family 1.61) between
    l1 = 0.2186 and 0.2190 (0.2238-0.2242 without a decoder bias); at P01 = 0.015 (family 7.43)
    between 0.3815 and 0.3823 (bisection of theory.optimum.global_optimum)."""
    p11, p01 = _sym(p_both, "P11"), _sym(p_child_only, "P01")
    root2 = sp.sqrt(2)
    denominator = (root2 - 1) * p11 - p01
    return sp.Piecewise((2 * root2 * p01 / denominator, denominator > 0), (sp.oo, True))
