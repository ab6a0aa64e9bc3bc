"""Independent numeric optimum of the exact expected SAE loss: multi-start L-BFGS-B.

This is the check on the closed forms, so it shares nothing with them but the loss itself: it
minimises theory.sae.expected_loss over the raw parameters a spec allows, with an analytic
(sub)gradient of the piecewise-smooth loss, from many starts, and polishes the best few: first
with fresh L-BFGS-B runs, then inside their activation regions, where optima on ReLU kinks become
ordinary constrained optima.

TopK, BatchTopK and JumpReLU (`spec.architecture`) have losses that jump where a code is
displaced or crosses its threshold. Between jumps the loss is smooth, with the gradient of a
fixed gate pattern, so the same multi-start L-BFGS-B runs on it (a step across a jump that
raises the loss is rejected by the line search). JumpReLU's thresholds get no gradient at
all: they are set exactly, latent by latent, by trying every value that changes the gate (0
and each state's pre-activation), alternating with L-BFGS-B on the other parameters. As the
L0 term has no gradient either, JumpReLU runs also start from a smoothed loss (the step made a
sigmoid of temperature tau, annealed toward 0, thresholds free, finite-difference gradients),
whose minimisers are then polished the same way.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sympy as sp
from scipy.optimize import minimize

from theory.architectures import architecture_codes, architecture_loss
from theory.features import FeatureModel, NumericFeatureModel
from theory.sae import Levels, SAEParams, SAESpec, codes, expected_loss

# First pass: loose enough to be quick, tight enough to rank the starts.
_SCREEN_OPTIONS = {"maxiter": 2000, "ftol": 1e-11, "gtol": 1e-9}
_POLISH_ROUNDS = 4  # fresh L-BFGS memory helps when the previous run stalled at a ReLU kink
_N_POLISHED = 4
_REGION_ROUNDS = 4
_THRESHOLD_ROUNDS = 4  # JumpReLU: exact thresholds, then L-BFGS-B on the rest, this many times
_TEMPERATURES = (0.1, 0.03, 0.01, 0.003)  # JumpReLU's smoothed step, relative to the magnitudes


@dataclass(frozen=True)
class NumericOptimum:
    """Best parameters found (folded: unit decoder rows where the latent fires), their loss,
    how many starts were run and how long it took."""

    params: SAEParams
    loss: float
    n_starts: int
    seconds: float


@dataclass(frozen=True)
class _Layout:
    """How the flat parameter vector of a spec maps to encoder, biases and decoder."""

    width: int
    n_features: int
    tied: bool
    decoder_bias: bool

    @property
    def size(self) -> int:
        k, n = self.width, self.n_features
        return (0 if self.tied else k * n) + k + k * n + (n if self.decoder_bias else 0)

    def unpack(self, theta: np.ndarray) -> SAEParams:
        """theta (..., size) -> SAEParams with the same leading axes."""
        k, n = self.width, self.n_features
        lead = theta.shape[:-1]
        at = 0
        if not self.tied:
            encoder = theta[..., : k * n].reshape(*lead, k, n)
            at = k * n
        encoder_bias = theta[..., at : at + k]
        decoder = theta[..., at + k : at + k + k * n].reshape(*lead, k, n)
        if self.tied:
            encoder = decoder
        if self.decoder_bias:
            decoder_bias = theta[..., at + k + k * n :]
        else:
            decoder_bias = np.zeros((*lead, n))
        return SAEParams(encoder, encoder_bias, decoder, decoder_bias)

    def pack(
        self,
        encoder: np.ndarray,
        encoder_bias: np.ndarray,
        decoder: np.ndarray,
        decoder_bias: np.ndarray,
    ) -> np.ndarray:
        """Inverse of unpack; the encoder is dropped when tied, the decoder bias when absent."""
        lead = encoder_bias.shape[:-1]
        parts = [] if self.tied else [encoder.reshape(*lead, -1)]
        parts += [encoder_bias, decoder.reshape(*lead, -1)]
        if self.decoder_bias:
            parts.append(decoder_bias)
        return np.concatenate(parts, axis=-1)

    def pack_gradient(
        self,
        g_encoder: np.ndarray,
        g_encoder_bias: np.ndarray,
        g_decoder: np.ndarray,
        g_decoder_bias: np.ndarray,
    ) -> np.ndarray:
        """Gradients with respect to each parameter -> gradient with respect to theta; tied, the
        one matrix gets both the encoder's and the decoder's share."""
        if self.tied:
            g_decoder = g_decoder + g_encoder
        return self.pack(g_encoder, g_encoder_bias, g_decoder, g_decoder_bias)


def loss_and_gradient(
    world: NumericFeatureModel,
    layout: _Layout,
    theta: np.ndarray,
    l1: float,
    active_SK: np.ndarray | None = None,
    levels: Levels | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact loss and its analytic (sub)gradient with respect to theta (..., size).

    Per state x with u = x - b, pre = W u + c, h = ReLU(pre), e_j = u - D^T (h o prefix_j):
    loss = sum_j beta_j ||e_j||^2 + l1 sum_i w_i h_i ||D_i|| (a plain SAE: one level, beta = w =
    1). ReLU'(0) is taken as 0 and d||D_i||/dD_i as 0 at D_i = 0.
    With `active_SK` the ReLU is replaced by the fixed firing pattern (h = pre where active, else
    0): the smooth loss of that activation region, which equals the exact loss inside it.
    """
    p = layout.unpack(theta)
    W, c, D, b = p.encoder, p.encoder_bias, p.decoder, p.decoder_bias
    k = layout.width
    weight_J, prefix_JK, w_K = levels or (np.ones(1), np.ones((1, k), bool), np.ones(k))
    prob_S = world.probabilities
    u_SN = world.states - b[..., None, :]
    pre_SK = u_SN @ np.swapaxes(W, -1, -2) + c[..., None, :]
    if active_SK is None:
        active_SK = pre_SK > 0
    h_SK = pre_SK * active_SK
    norm_K = np.linalg.norm(D, axis=-1) * w_K
    loss = l1 * (h_SK @ norm_K[..., None])[..., 0]
    g_h_SK = l1 * norm_K[..., None, :]  # dloss/dh
    g_D = 0.0
    err_w_SN = 0.0  # sum_j beta_j e_j, probability-weighted
    for beta, prefix_K in zip(weight_J, prefix_JK, strict=True):
        h_level_SK = h_SK * prefix_K
        err_SN = u_SN - h_level_SK @ D
        loss = loss + beta * (err_SN**2).sum(-1)
        g_h_SK = g_h_SK - 2.0 * beta * (err_SN @ np.swapaxes(D, -1, -2)) * prefix_K
        level_w_SN = beta * err_SN * prob_S[:, None]
        g_D = g_D - 2.0 * np.swapaxes(h_level_SK, -1, -2) @ level_w_SN
        err_w_SN = err_w_SN + level_w_SN
    loss = loss @ prob_S

    length_K = np.linalg.norm(D, axis=-1)
    unit_KN = D / np.where(length_K > 0, length_K, 1.0)[..., None]
    # through the ReLU (zero slope at and below the kink)
    g_pre_SK = g_h_SK * active_SK * prob_S[:, None]
    h_total_K = (h_SK * prob_S[:, None]).sum(-2) * w_K
    g_D = g_D + l1 * h_total_K[..., None] * unit_KN
    g_W = np.swapaxes(g_pre_SK, -1, -2) @ u_SN
    g_c = g_pre_SK.sum(-2)
    # b enters each e_j directly (e_j = x - b - D^T h_j) and the pre-activation through u = x - b
    g_b = -(2.0 * err_w_SN.sum(-2) + (g_pre_SK @ W).sum(-2))
    return loss, layout.pack_gradient(g_W, g_c, g_D, g_b)


def _pre_activations(
    world: NumericFeatureModel, layout: _Layout, theta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pre-activations (S, k) of one parameter vector and their Jacobian (S, k, size)."""
    p = layout.unpack(theta)
    k, n = layout.width, layout.n_features
    u_SN = world.states - p.decoder_bias
    pre_SK = u_SN @ p.encoder.T + p.encoder_bias
    S = len(u_SN)
    g_W = np.zeros((S, k, k, n))
    g_W[:, np.arange(k), np.arange(k), :] = u_SN[:, None, :]
    g_c = np.broadcast_to(np.eye(k), (S, k, k))
    g_b = np.broadcast_to(-p.encoder, (S, k, n))
    return pre_SK, layout.pack_gradient(g_W, g_c, np.zeros((S, k, k, n)), g_b)


def numeric_optimum(
    model: FeatureModel, spec: SAESpec, n_starts: int = 32, seed: int = 0, tol: float = 1e-12
) -> NumericOptimum:
    """Global minimum (as far as multi-start finds it) of the exact expected loss of `spec` on
    `model` (a matryoshka spec: its sum of level losses). The returned parameters are folded;
    the loss is recomputed with expected_loss."""
    start_time = time.perf_counter()
    world, l1 = _validated(model, spec, n_starts, tol)
    layout = _Layout(spec.width, model.dim, spec.tied, spec.decoder_bias)
    levels = spec.loss_levels()
    rng = np.random.default_rng(seed)
    if spec.architecture not in ("relu-l1", "matryoshka"):
        params = _gated_numeric(world, layout, spec, _initial_points(world, layout, n_starts, rng))
        loss = architecture_loss(world, params, spec)
        return NumericOptimum(params, loss, n_starts, time.perf_counter() - start_time)

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        loss, grad = loss_and_gradient(world, layout, theta, l1, levels=levels)
        return float(loss), grad

    screened = [
        minimize(fun, theta0, jac=True, method="L-BFGS-B", options=_SCREEN_OPTIONS).x
        for theta0 in _initial_points(world, layout, n_starts, rng)
    ]
    screened_losses = loss_and_gradient(world, layout, np.array(screened), l1, levels=levels)[0]
    polished = [
        _polish_region(world, layout, _polish_lbfgs(fun, screened[i], tol)[0], l1, tol, levels)
        for i in np.argsort(screened_losses)[:_N_POLISHED]
    ]
    best_theta, best_loss = min(polished, key=lambda pair: pair[1])
    params = _canonical(world, layout.unpack(best_theta))
    loss = float(expected_loss(world, params, l1, levels))
    return NumericOptimum(params, loss, n_starts, time.perf_counter() - start_time)


def _validated(
    model: FeatureModel, spec: SAESpec, n_starts: int, tol: float
) -> tuple[NumericFeatureModel, float]:
    if not isinstance(model, FeatureModel):
        raise ValueError(f"model must be a FeatureModel, got {type(model).__name__}")
    if not isinstance(spec, SAESpec):
        raise ValueError(f"spec must be an SAESpec, got {type(spec).__name__}")
    if model.has_magnitude_noise:
        raise ValueError(
            f"the exact loss needs constant magnitudes; this model has magnitude_std "
            f"{model.magnitude_std}"
        )
    if model.has_additive_noise:
        raise ValueError(
            "the exact loss integrates over finitely many states; this model has additive noise "
            "(model.noiseless() drops it)"
        )
    world = model.numeric()  # refuses free symbols with a message naming them
    l1 = sp.sympify(spec.l1)
    if not l1.is_number:
        raise ValueError(f"spec.l1 = {spec.l1} is symbolic; the numeric optimum needs a number")
    if isinstance(n_starts, bool) or not isinstance(n_starts, int) or n_starts < 1:
        raise ValueError(f"n_starts must be a positive integer, got {n_starts!r}")
    if not (isinstance(tol, int | float) and 0 < tol < 1):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    return world, float(l1)


def _initial_points(
    world: NumericFeatureModel, layout: _Layout, n_starts: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_starts, size) starts cycling through three families of sensible scale:
    tied-style (W = D random unit rows), latents on single feature directions (so every
    'latent i tracks feature j' basin is tried), and fully random untied parameters."""
    k, n = layout.width, layout.n_features
    scale = float(np.mean(world.magnitudes))
    mean_N = world.probabilities @ world.states

    def unit_rows(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    starts = []
    for start in range(n_starts):
        family = start % 3
        if family == 0:
            D = unit_rows(rng.normal(size=(k, n)))
            W = D.copy()
            c = np.zeros(k)
            b = np.zeros(n)
        elif family == 1:
            first = (start // 3) % n
            D = np.eye(n)[[(first + i) % n for i in range(k)]] + 0.05 * rng.normal(size=(k, n))
            W = D + 0.05 * rng.normal(size=(k, n))
            c = -0.1 * scale * rng.uniform(size=k)
            b = np.zeros(n)
        else:
            D = unit_rows(rng.normal(size=(k, n)))
            W = rng.normal(size=(k, n)) / np.sqrt(n)
            c = 0.3 * scale * rng.normal(size=k)
            b = rng.uniform(size=n) * mean_N
        starts.append(layout.pack(W, c, D, b))
    return np.array(starts)


def _polish_lbfgs(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]], theta: np.ndarray, tol: float
) -> tuple[np.ndarray, float]:
    """Restart L-BFGS-B at tight tolerance until it stops improving: a fresh curvature memory
    gets past the zig-zag at ReLU kinks."""
    loss = fun(theta)[0]
    options = {"maxiter": 5000, "ftol": tol, "gtol": tol, "maxls": 50}
    for _ in range(_POLISH_ROUNDS):
        result = minimize(fun, theta, jac=True, method="L-BFGS-B", options=options)
        if not result.fun < loss:
            break
        improvement = loss - result.fun
        theta, loss = result.x, result.fun
        if improvement <= tol * max(1.0, abs(loss)):
            break
    return theta, loss


def _polish_region(
    world: NumericFeatureModel,
    layout: _Layout,
    theta: np.ndarray,
    l1: float,
    tol: float,
    levels: Levels | None = None,
) -> tuple[np.ndarray, float]:
    """Minimise the smooth loss of the current activation region over its closure (SLSQP with
    every pre-activation kept on its side of zero), then again in the region where the states
    left on a boundary changed side, while that lowers the exact loss.

    Line searches stall where the optimum sits on a kink (a latent switched off exactly at the
    edge of a state, which tied SAEs with an L1 penalty reach only with a large encoder gain);
    inside a fixed region the loss is smooth and the kink is just an active constraint. SLSQP's
    stopping test is on absolute steps in the loss, which it takes slowly near such optima, so
    its tolerance is far below `tol`."""
    loss = float(loss_and_gradient(world, layout, theta, l1, levels=levels)[0])
    for _ in range(_REGION_ROUNDS):
        active_SK = _pre_activations(world, layout, theta)[0] > 0
        side_SK = np.where(active_SK, 1.0, -1.0)

        def region(t: np.ndarray, active_SK: np.ndarray = active_SK) -> tuple[float, np.ndarray]:
            value, grad = loss_and_gradient(world, layout, t, l1, active_SK, levels)
            return float(value), grad

        def margins(t: np.ndarray, side_SK: np.ndarray = side_SK) -> np.ndarray:
            return (side_SK * _pre_activations(world, layout, t)[0]).ravel()

        def margins_jacobian(t: np.ndarray, side_SK: np.ndarray = side_SK) -> np.ndarray:
            return (side_SK[..., None] * _pre_activations(world, layout, t)[1]).reshape(
                -1, layout.size
            )

        result = minimize(
            region,
            theta,
            jac=True,
            method="SLSQP",
            constraints=[{"type": "ineq", "fun": margins, "jac": margins_jacobian}],
            options={"ftol": tol * 1e-4, "maxiter": 2000},
        )
        exact = float(loss_and_gradient(world, layout, result.x, l1, levels=levels)[0])
        if not exact < loss - tol * max(1.0, abs(loss)):
            break
        theta, loss = result.x, exact
    return theta, loss


def _canonical(world: NumericFeatureModel, params: SAEParams) -> SAEParams:
    """Folded parameters; a latent that fires on no state gets a zero decoder row (any decoder
    gives the same loss, so zero is the canonical choice), keeping its encoder so it stays off."""
    alive_K = (codes(world, params)[world.probabilities > 0] > 0).any(axis=0)
    decoder = np.where(alive_K[:, None], params.decoder, 0.0)
    return SAEParams(params.encoder, params.encoder_bias, decoder, params.decoder_bias).folded()


# --- gated architectures ----------------------------------------------------------------------
def _gated_numeric(
    world: NumericFeatureModel, layout: _Layout, spec: SAESpec, starts: np.ndarray
) -> SAEParams:
    """Best folded parameters of the multi-start search for a TopK, BatchTopK or JumpReLU
    spec (see the module docstring)."""
    k = layout.width
    jump = spec.architecture == "jumprelu"

    def with_threshold(theta: np.ndarray, threshold: np.ndarray | None) -> SAEParams:
        p = layout.unpack(theta)
        return SAEParams(p.encoder, p.encoder_bias, p.decoder, p.decoder_bias, threshold)

    def exact(theta: np.ndarray, threshold: np.ndarray | None) -> float:
        return architecture_loss(world, with_threshold(theta, threshold), spec)

    def fun_at(threshold: np.ndarray | None) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
        def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
            params = with_threshold(theta, threshold)
            total, grad = 0.0, np.zeros_like(theta)
            for cells, active_SK in _gate_cells(world, params, spec):
                value, g = loss_and_gradient(cells, layout, theta, 0.0, active_SK)
                total, grad = total + float(value), grad + g
            if jump:  # the L0 term is constant between jumps
                total += float(spec.l0) * float(world.probabilities @ active_SK.sum(1))
            return total, grad

        return fun

    def descend(theta: np.ndarray, threshold: np.ndarray | None) -> np.ndarray:
        rounds = _THRESHOLD_ROUNDS if jump else 1
        for _ in range(rounds):
            if jump:
                threshold = _best_thresholds(theta, threshold, exact, layout, world)
            theta = minimize(
                fun_at(threshold), theta, jac=True, method="L-BFGS-B", options=_SCREEN_OPTIONS
            ).x
        if jump:
            threshold = _best_thresholds(theta, threshold, exact, layout, world)
        return theta, threshold

    runs = [descend(theta0, np.zeros(k) if jump else None) for theta0 in starts]
    if jump:
        runs += [descend(*_smoothed_jumprelu(world, layout, spec, theta0)) for theta0 in starts]
    losses = [exact(theta, threshold) for theta, threshold in runs]
    polished = []
    for i in np.argsort(losses)[:_N_POLISHED]:
        theta, threshold = runs[i]
        theta, threshold = descend(_polish_lbfgs(fun_at(threshold), theta, 1e-12)[0], threshold)
        polished.append((exact(theta, threshold), theta, threshold))
    _, theta, threshold = min(polished, key=lambda run: run[0])
    params = with_threshold(theta, threshold)
    alive_K = (architecture_codes(world, params, spec) > 0).any(axis=0)
    decoder = np.where(alive_K[:, None], params.decoder, 0.0)
    return SAEParams(
        params.encoder, params.encoder_bias, decoder, params.decoder_bias, threshold
    ).folded()


def _gate_cells(
    world: NumericFeatureModel, params: SAEParams, spec: SAESpec
) -> list[tuple[NumericFeatureModel, np.ndarray]]:
    """The loss as a sum over (weighted states, fixed gate pattern): one term, or for BatchTopK
    one more per state the batch keeps a fraction of (its pair kept in that term only)."""
    codes_SK = architecture_codes(world, params, spec)
    if spec.architecture != "batchtopk":
        return [(world, codes_SK != 0)]
    from theory.batchtopk import kept_fractions

    fractions_SK = kept_fractions(world, params, spec.k)
    full_SK = fractions_SK >= 1.0
    weights = world.probabilities.copy()
    cells = []
    for s, i in np.argwhere((fractions_SK > 0) & ~full_SK):
        only = np.zeros_like(weights)
        only[s] = fractions_SK[s, i] * weights[s]
        weights[s] -= only[s]
        with_SK = full_SK.copy()
        with_SK[s, i] = True
        cells.append((_reweighted(world, only), with_SK))
    return [(_reweighted(world, weights), full_SK), *cells]


def _reweighted(world: NumericFeatureModel, weights: np.ndarray) -> NumericFeatureModel:
    return dataclasses.replace(world, probabilities=weights)


def _best_thresholds(
    theta: np.ndarray,
    threshold: np.ndarray,
    exact: Callable[[np.ndarray, np.ndarray], float],
    layout: _Layout,
    world: NumericFeatureModel,
) -> np.ndarray:
    """Each latent's threshold in turn set to the best of 0 and its pre-activations (between
    two consecutive ones the gate, hence the loss, does not change)."""
    threshold = np.asarray(threshold, dtype=float).copy()
    pre_SK = _pre_activations(world, layout, theta)[0]
    for i in range(layout.width):
        candidates = np.unique(np.concatenate([[0.0], pre_SK[:, i][pre_SK[:, i] > 0]]))
        values = []
        for t in candidates:
            trial = threshold.copy()
            trial[i] = t
            values.append(exact(theta, trial))
        threshold[i] = candidates[int(np.argmin(values))]
    return threshold


def _smoothed_jumprelu(
    world: NumericFeatureModel, layout: _Layout, spec: SAESpec, theta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise JumpReLU's loss with the step [pre > t] replaced by g = sigmoid((pre - t) / tau),
    thresholds t >= 0 free, for each tau in _TEMPERATURES in turn."""
    k = layout.width
    scale = float(np.mean(world.magnitudes))
    y = np.concatenate([theta, np.full(k, 0.01 * scale)])
    bounds = [(None, None)] * layout.size + [(0.0, None)] * k
    for tau in _TEMPERATURES:
        y = minimize(
            smoothed_jumprelu_loss,
            y,
            args=(world, layout, float(spec.l0), tau * scale),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 1000},
        ).x
    return y[:-k], y[-k:]


def smoothed_jumprelu_loss(
    y: np.ndarray, world: NumericFeatureModel, layout: _Layout, l0: float, tau: float
) -> tuple[float, np.ndarray]:
    """The smoothed JumpReLU loss of y = (theta, thresholds) and its gradient: with u = x - b,
    h = pre g, r = u - D^T h, loss = sum_s p_s (||r_s||^2 + l0 sum_i g_si)."""
    k = layout.width
    params = layout.unpack(y[:-k])
    W, D = params.encoder, params.decoder
    p_S = world.probabilities
    u_SN = world.states - params.decoder_bias
    pre_SK = u_SN @ W.T + params.encoder_bias
    gate_SK = 0.5 * (1.0 + np.tanh((pre_SK - y[-k:]) / (2.0 * tau)))  # the sigmoid, stably
    slope_SK = gate_SK * (1.0 - gate_SK) / tau
    h_SK = pre_SK * gate_SK
    r_SN = u_SN - h_SK @ D
    loss = float(p_S @ ((r_SN**2).sum(1) + l0 * gate_SK.sum(1)))
    g_h_SK = -2.0 * (p_S[:, None] * r_SN) @ D.T
    g_gate_SK = g_h_SK * pre_SK + l0 * p_S[:, None]
    g_pre_SK = g_h_SK * gate_SK + g_gate_SK * slope_SK
    g_threshold = -(g_gate_SK * slope_SK).sum(0)
    g_D = -2.0 * h_SK.T @ (p_S[:, None] * r_SN)
    g_b = -2.0 * p_S @ r_SN - g_pre_SK.sum(0) @ W
    grad = layout.pack_gradient(g_pre_SK.T @ u_SN, g_pre_SK.sum(0), g_D, g_b)
    return loss, np.concatenate([grad, g_threshold])
