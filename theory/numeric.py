"""Independent numeric optimum of the exact expected SAE loss: multi-start L-BFGS-B.

This is the check on the closed forms, so it shares nothing with them but the loss itself: it
minimises theory.sae.expected_loss over the raw parameters a spec allows, with an analytic
(sub)gradient of the piecewise-smooth loss, from many starts, and polishes the best few: first
with fresh L-BFGS-B runs, then inside their activation regions, where optima on ReLU kinks become
ordinary constrained optima.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sympy as sp
from scipy.optimize import minimize

from theory.features import FeatureModel, NumericFeatureModel
from theory.sae import Levels, SAEParams, SAESpec, codes, expected_loss

# First pass: loose enough to be quick, tight enough to rank the starts.
_SCREEN_OPTIONS = {"maxiter": 2000, "ftol": 1e-11, "gtol": 1e-9}
_POLISH_ROUNDS = 4  # fresh L-BFGS memory helps when the previous run stalled at a ReLU kink
_N_POLISHED = 4
_REGION_ROUNDS = 4


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
    layout = _Layout(spec.width, model.n_features, spec.tied, spec.decoder_bias)
    levels = spec.loss_levels()
    rng = np.random.default_rng(seed)

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
