"""SAE specification, parameters in the feature basis, and the exact expected loss over states.

Because feature directions are orthonormal, an SAE's behaviour on a feature model is captured by
its parameters in the feature basis: encoder (k x n), encoder bias (k), decoder rows (k x n) and
decoder bias (n). Components orthogonal to the features only add loss, so the optimum has none.
With feature cosines (theory.features.with_cosines) the same holds in the d coordinates of the
state vectors (n is then d).

    h = ReLU(W_enc (x - b_dec) + b_enc)        (decoder bias applied to the input, as in SAELens)
    x_hat = W_dec^T h + b_dec
    loss = E ||x - x_hat||^2 + l1 * E sum_i h_i ||W_dec[i]||

That is the ReLU-L1 SAE; `SAESpec.architecture` names the others, whose codes and losses live in
one module each (theory.topk, theory.batchtopk, theory.jumprelu; theory.architectures
dispatches). A matryoshka SAE sums this over nested levels (theory.matryoshka): level j
reconstructs with its prefix of latents and weighs beta_j, and latent i's L1 is multiplied by
w_i. `Levels` holds that structure; a plain SAE is one level of weight 1 holding every latent,
with w = 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import sympy as sp

from theory.config import require_number, require_positive_ints
from theory.features import FeatureModel, NumericFeatureModel, _sym

MAX_L1 = 1e100  # far beyond any useful value (every latent is dead); l1^2 must stay finite
ARCHITECTURES = ("relu-l1", "topk", "batchtopk", "jumprelu", "matryoshka")


class Levels(NamedTuple):
    """The reconstructions a loss sums: level j weighs weight_J[j] and reconstructs with the
    latents in prefix_JK[j]; latent i's L1 is multiplied by l1_weight_K[i]."""

    weight_J: np.ndarray
    prefix_JK: np.ndarray
    l1_weight_K: np.ndarray


@dataclass(frozen=True)
class SAESpec:
    """Which SAE: architecture and its hyperparameter, width, tied or untied, with or without a
    decoder bias."""

    width: int = 1
    """Latents of the SAE."""
    l1: float | sp.Expr = 0
    """L1 coefficient (a number or a sympy expression)."""
    tied: bool = False
    """Encoder = decoder transpose."""
    decoder_bias: bool = True
    """Learn a decoder bias."""
    architecture: str = "relu-l1"
    """relu-l1 (L1 penalty), topk (each sample keeps its k largest codes), batchtopk (expected
    loss of keeping the batch's k * B largest codes: one shared threshold, E[L0] = k) or jumprelu
    (a learned threshold per latent and an L0 penalty) or matryoshka (ReLU-L1 latents whose loss
    sums nested prefix losses)."""
    k: int = 1
    """Codes kept per sample (topk; batchtopk on average)."""
    l0: float = 0.0
    """L0 penalty coefficient of jumprelu: l0 * E[number of firing latents]."""
    levels: tuple[int, ...] = ()
    """Matryoshka prefix sizes m_1 < ... < m_n = width (empty: one level, the plain SAE)."""
    mu: float = 1.0
    """Matryoshka balance: level j weighs mu^(n-j), so the outer level weighs 1 (0 = plain SAE,
    1 = standard matryoshka)."""
    level_sparsity: bool = True
    """Matryoshka: the L1 applies per level weighted like its reconstruction, so a latent pays the
    sum of the weights of the levels it is in (the hedging paper's toy); false: the L1 once."""

    def __post_init__(self) -> None:
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"width must be a positive integer, got {self.width!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {self.architecture!r}; allowed: {', '.join(ARCHITECTURES)}"
            )
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be a positive integer, got {self.k!r}")
        if self.k != 1 and self.architecture not in ("topk", "batchtopk"):
            raise ValueError(f"k = {self.k} applies to topk and batchtopk only")
        if not isinstance(self.l0, int | float) or not 0 <= self.l0 <= MAX_L1:
            raise ValueError(f"l0 must be a number in [0, {MAX_L1:g}], got {self.l0!r}")
        if self.l0 != 0 and self.architecture != "jumprelu":
            raise ValueError(f"l0 = {self.l0} applies to jumprelu only")
        if self.architecture not in ("relu-l1", "matryoshka"):
            if self.tied:
                raise ValueError(
                    f"tied {self.architecture} SAEs are not supported; allowed: tied relu-l1"
                )
            if not (_sym(self.l1, "l1").is_number and _sym(self.l1, "l1") == 0):
                raise ValueError(
                    f"l1 = {self.l1} applies to relu-l1 only; {self.architecture} has none"
                )
        l1 = _sym(self.l1, "l1")
        if l1.is_number and l1 < 0:
            raise ValueError(f"l1 must be >= 0, got {self.l1}")
        if l1.is_number and l1 > MAX_L1:
            raise ValueError(
                f"l1 = {self.l1} is too large: allowed values are 0 <= l1 <= {MAX_L1:g} (far "
                "above any useful value every latent is dead, and the loss would overflow)"
            )
        levels = tuple(self.levels)
        if levels:
            require_positive_ints("levels", levels)
            if self.architecture != "matryoshka":
                raise ValueError(f"levels {list(levels)} need architecture matryoshka")
            if list(levels) != sorted(set(levels)) or levels[-1] != self.width:
                raise ValueError(
                    f"levels must increase strictly to the width {self.width}, got {list(levels)}"
                )
        object.__setattr__(self, "levels", levels)
        require_number("mu", self.mu, 0)

    def loss_levels(self) -> Levels:
        """The level structure of this SAE's loss: beta_j = mu^(n-j) (0^0 = 1: the outer level
        always weighs 1) and, with level_sparsity, w_i = the sum of the betas of i's levels."""
        matryoshka = self.architecture == "matryoshka"
        sizes = self.levels if matryoshka and self.levels else (self.width,)
        return _levels(sizes, float(self.mu), matryoshka and self.level_sparsity)


@dataclass(frozen=True)
class SAEParams:
    """Numeric SAE parameters in the feature basis (arrays may carry leading batch axes)."""

    encoder: np.ndarray  # (..., k, n)
    encoder_bias: np.ndarray  # (..., k)
    decoder: np.ndarray  # (..., k, n)  row i = latent i's decoder direction
    decoder_bias: np.ndarray  # (..., n)
    threshold: np.ndarray | None = None  # (..., k) jumprelu / batchtopk: fires when pre > it

    def folded(self) -> SAEParams:
        """Same function with unit-norm decoder rows (encoder rows, biases and thresholds scaled
        to match).

        Dead latents (zero decoder) are left as they are."""
        norms = np.linalg.norm(self.decoder, axis=-1)
        scale = np.where(norms > 0, norms, 1.0)
        return SAEParams(
            self.encoder * scale[..., None],
            self.encoder_bias * scale,
            self.decoder / scale[..., None],
            self.decoder_bias,
            None if self.threshold is None else self.threshold * scale,
        )

    def to_json(self) -> dict:
        record = {
            "encoder": self.encoder.tolist(),
            "encoder_bias": self.encoder_bias.tolist(),
            "decoder": self.decoder.tolist(),
            "decoder_bias": self.decoder_bias.tolist(),
        }
        if self.threshold is not None:
            record["threshold"] = self.threshold.tolist()
        return record


@lru_cache(maxsize=256)
def _levels(sizes: tuple[int, ...], mu: float, level_sparsity: bool) -> Levels:
    """Cached: the exact optimum asks for it in every inner solve."""
    k = sizes[-1]
    exponents = len(sizes) - 1 - np.arange(len(sizes))
    weight_J = np.array([mu ** int(e) for e in exponents])
    prefix_JK = np.arange(k)[None, :] < np.array(sizes)[:, None]
    l1_weight_K = weight_J @ prefix_JK if level_sparsity else np.ones(k)
    for array in (weight_J, prefix_JK, l1_weight_K):
        array.flags.writeable = False  # shared between callers
    return Levels(weight_J, prefix_JK, l1_weight_K)


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm along the last axis; all-zero rows stay zero."""
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def codes(world: NumericFeatureModel, params: SAEParams) -> np.ndarray:
    """Latent activations on every state: (..., S, k)."""
    centred = world.states - params.decoder_bias[..., None, :]
    pre = centred @ np.swapaxes(params.encoder, -1, -2) + params.encoder_bias[..., None, :]
    return np.maximum(pre, 0.0)


def expected_loss(
    world: NumericFeatureModel, params: SAEParams, l1: float, levels: Levels | None = None
) -> np.ndarray:
    """Exact expected loss (MSE + decoder-norm-weighted L1), vectorised over leading axes; with
    `levels` (SAESpec.loss_levels) the weighted sum of its levels' losses."""
    h = codes(world, params)
    norms = np.linalg.norm(params.decoder, axis=-1)
    if levels is None or len(levels.weight_J) == 1:  # one level: weight 1 and w = 1
        x_hat = h @ params.decoder + params.decoder_bias[..., None, :]
        sq_err = ((world.states - x_hat) ** 2).sum(-1)
    else:
        sq_err = 0.0
        for weight, prefix_K in zip(levels.weight_J, levels.prefix_JK, strict=True):
            x_hat = (h * prefix_K) @ params.decoder + params.decoder_bias[..., None, :]
            sq_err = sq_err + weight * ((world.states - x_hat) ** 2).sum(-1)
        norms = norms * levels.l1_weight_K
    sparsity = h @ norms[..., :, None]
    return (sq_err + l1 * sparsity[..., 0]) @ world.probabilities


def symbolic_parameters(spec: SAESpec, dim: int, prefix: str = "") -> dict[str, sp.Matrix]:
    """Real sympy symbols for every free parameter of `spec` on states of dimension `dim`
    (tied: the encoder is the decoder)."""
    k, n = spec.width, dim
    dec = sp.Matrix(k, n, lambda i, j: sp.Symbol(f"{prefix}d_{i}{j}", real=True))
    enc = (
        dec
        if spec.tied
        else sp.Matrix(k, n, lambda i, j: sp.Symbol(f"{prefix}w_{i}{j}", real=True))
    )
    b_enc = sp.Matrix(k, 1, lambda i, _: sp.Symbol(f"{prefix}c_{i}", real=True))
    b_dec = (
        sp.Matrix(n, 1, lambda j, _: sp.Symbol(f"{prefix}b_{j}", real=True))
        if spec.decoder_bias
        else sp.zeros(n, 1)
    )
    return {"encoder": enc, "encoder_bias": b_enc, "decoder": dec, "decoder_bias": b_dec}


def expected_loss_expr(
    model: FeatureModel,
    spec: SAESpec,
    params: dict[str, sp.Matrix] | None = None,
    active: Sequence[Sequence[bool]] | None = None,
) -> sp.Expr:
    """The exact expected loss as a sympy expression.

    Without `active`, ReLU appears as Max(0, .). With `active[i][s]` (latent i fires on state s)
    the expression is the smooth loss of that activation region, where ReLU is the identity on
    active states and zero elsewhere.
    """
    if model.has_magnitude_noise:
        raise ValueError("the exact loss needs constant magnitudes; this model has magnitude noise")
    if model.has_additive_noise:
        raise ValueError(
            "the exact loss integrates over finitely many states; this model has additive noise "
            "(model.noiseless() drops it)"
        )
    p = params or symbolic_parameters(spec, model.dim)
    W, c, D, b = p["encoder"], p["encoder_bias"], p["decoder"], p["decoder_bias"]
    l1 = _sym(spec.l1, "l1")
    norms = [sp.sqrt(sum(D[i, j] ** 2 for j in range(model.dim))) for i in range(spec.width)]
    X = model.state_matrix()
    total = sp.Integer(0)
    for s, prob in enumerate(model.probabilities):
        x = X[s, :].T
        pre = W * (x - b) + c
        if active is None:
            h = [sp.Max(0, pre[i]) for i in range(spec.width)]
        else:
            h = [pre[i] if active[i][s] else sp.Integer(0) for i in range(spec.width)]
        x_hat = D.T * sp.Matrix(h) + b
        err = x - x_hat
        total += prob * (
            (err.T * err)[0] + l1 * sum(hi * ni for hi, ni in zip(h, norms, strict=True))
        )
    return total
