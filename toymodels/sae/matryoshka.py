"""Matryoshka SAEs with per-level weights ("balance matryoshka") and a detached variant.

Levels are prefixes m_1 < ... < m_n = n_latents; x_hat_{<=m} uses the first m latents plus b_dec.
Reconstruction = sum_j beta_j mean_batch ||x - x_hat_{<=m_j}||^2 with beta_j = mu^(n-j): mu = 0 is
the plain SAE (0^0 = 1 keeps the outer level), mu = 1 the standard matryoshka; mu may differ per
member, so a mu sweep is one stack. `detached` stops the gradient of inner-level latents in the
reconstructions of outer levels, so each level's error trains only the latents it adds.
`level_sparsity` weighs the sparsity per level too (the hedging paper's toy).
The inner activation and sparsity come from any other architecture (relu-l1, topk, batchtopk,
jumprelu); every level is trained: matryoshka SAEs take the generic loss path (no fused loss,
no TopK sparse path, which would skip the level losses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from theory.config import require_choice
from toymodels.sae.base import SAE, Capabilities, SAEConfig, per_member
from toymodels.sae.batchtopk import BatchTopKConfig, BatchTopKSAE
from toymodels.sae.jumprelu import JumpReLUConfig, JumpReLUSAE
from toymodels.sae.relu_l1 import ReLUL1Config, ReLUL1SAE
from toymodels.sae.topk import TopKConfig, TopKSAE


@dataclass(frozen=True)
class MatryoshkaFields:
    """The matryoshka part of a matryoshka config (mixed into the inner architecture's)."""

    inner: str = "batchtopk"
    """Architecture giving the activation and sparsity: relu-l1, topk, batchtopk, jumprelu."""
    levels: tuple[int, ...] | None = None
    """Prefix sizes m_1 < ... < m_n = n_latents (default: one level, n_latents)."""
    mu: tuple[float, ...] | float = 1.0
    """Balance: level j weighs mu^(n-j) (0 = plain SAE, 1 = standard matryoshka), per member."""
    detached: bool = False
    """Stop inner latents' gradients in outer levels' reconstructions."""
    level_sparsity: bool = False
    """Sparsity per level weighted like its reconstruction: level j's prefix pays beta_j times
    the inner sparsity, so a latent in several levels pays the sum of their betas (the paper's
    toy); false: the sparsity of the whole code once."""

    def __post_init__(self) -> None:
        super().__post_init__()  # the inner architecture's checks
        levels = (self.n_latents,) if self.levels is None else tuple(int(m) for m in self.levels)
        if levels[0] < 1 or levels[-1] != self.n_latents or sorted(set(levels)) != list(levels):
            raise ValueError(
                f"levels must increase strictly from >= 1 to n_latents = {self.n_latents}, "
                f"got {list(levels)}"
            )
        self._set("levels", levels)
        self._set("mu", per_member(self.mu, self.n_members, "mu"))
        self._set("detached", bool(self.detached))
        self._set("level_sparsity", bool(self.level_sparsity))


@dataclass(frozen=True)
class MatryoshkaReLUL1Config(MatryoshkaFields, ReLUL1Config):
    inner: str = "relu-l1"


@dataclass(frozen=True)
class MatryoshkaTopKConfig(MatryoshkaFields, TopKConfig):
    inner: str = "topk"


@dataclass(frozen=True)
class MatryoshkaBatchTopKConfig(MatryoshkaFields, BatchTopKConfig):
    inner: str = "batchtopk"


@dataclass(frozen=True)
class MatryoshkaJumpReLUConfig(MatryoshkaFields, JumpReLUConfig):
    inner: str = "jumprelu"


class _Matryoshka(SAE):
    """Matryoshka reconstruction on top of another architecture's activation and sparsity."""

    architecture = "matryoshka"

    def __init__(self, config: SAEConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(config, generator)
        exponents = torch.arange(len(config.levels) - 1, -1, -1, dtype=torch.float32)
        self.register_buffer("level_weights", torch.tensor(config.mu)[:, None] ** exponents)

    def reconstruction_loss(self, x: Tensor, codes_MBF: Tensor) -> Tensor:
        total, inner, start = 0.0, None, 0
        for j, stop in enumerate(self.config.levels):
            block = torch.bmm(codes_MBF[..., start:stop], self.W_dec[:, start:stop])
            x_hat = self.b_dec[:, None] + block
            if inner is not None:
                x_hat = x_hat + (inner.detach() if self.config.detached else inner)
            total = total + self.level_weights[:, j] * (x - x_hat).square().sum(-1).mean(-1)
            inner = block if inner is None else inner + block
            start = stop
        return total

    def sparsity_loss(self, codes_MBF: Tensor, pre_MBF: Tensor) -> Tensor:
        if not self.config.level_sparsity:
            return super().sparsity_loss(codes_MBF, pre_MBF)
        latents_F = torch.arange(self.n_latents, device=codes_MBF.device)
        total = 0.0
        for j, stop in enumerate(self.config.levels):
            outside_F = latents_F >= stop
            level = super().sparsity_loss(
                codes_MBF.masked_fill(outside_F, 0), pre_MBF.masked_fill(outside_F, float("-inf"))
            )
            total = total + self.level_weights[:, j] * level
        return total

    def _grown_config(self, n_new: int) -> dict[str, Any]:
        """New latents join the outer level."""
        grown = super()._grown_config(n_new)
        return {**grown, "levels": (*self.config.levels[:-1], grown["n_latents"])}


def _capabilities(inner: type[SAE]) -> Capabilities:
    """The inner architecture's, less the shortcuts that would skip the level losses."""
    return Capabilities(
        inference_threshold=inner.capabilities.inference_threshold,
        relu_codes=inner.capabilities.relu_codes,
    )


class MatryoshkaReLUL1SAE(_Matryoshka, ReLUL1SAE):
    config_class = MatryoshkaReLUL1Config
    capabilities = _capabilities(ReLUL1SAE)
    member_hyperparameters = ("l1", "mu")


class MatryoshkaTopKSAE(_Matryoshka, TopKSAE):
    config_class = MatryoshkaTopKConfig
    capabilities = _capabilities(TopKSAE)
    member_hyperparameters = ("k", "mu")


class MatryoshkaBatchTopKSAE(_Matryoshka, BatchTopKSAE):
    config_class = MatryoshkaBatchTopKConfig
    capabilities = _capabilities(BatchTopKSAE)
    member_hyperparameters = ("k", "mu")


class MatryoshkaJumpReLUSAE(_Matryoshka, JumpReLUSAE):
    config_class = MatryoshkaJumpReLUConfig
    capabilities = _capabilities(JumpReLUSAE)
    member_hyperparameters = ("l0_coefficient", "mu")


INNER: dict[str, type[SAE]] = {
    sae.config_class.inner: sae
    for sae in (
        MatryoshkaReLUL1SAE,
        MatryoshkaTopKSAE,
        MatryoshkaBatchTopKSAE,
        MatryoshkaJumpReLUSAE,
    )
}


def matryoshka_class(inner: str = "batchtopk") -> type[SAE]:
    """The matryoshka SAE class whose activation and sparsity come from `inner`."""
    require_choice("matryoshka inner architecture", inner, INNER)
    return INNER[inner]
