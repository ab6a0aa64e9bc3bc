"""Matryoshka SAEs with per-level weights ("balance matryoshka") and a detached variant.

Levels are prefixes m_1 < ... < m_n = n_latents; x_hat_{<=m} uses the first m latents plus b_dec.
Reconstruction = sum_j beta_j mean_batch ||x - x_hat_{<=m_j}||^2 with beta_j = mu^(n-j): mu = 0 is
the plain SAE (0^0 = 1 keeps the outer level), mu = 1 the standard matryoshka; mu may differ per
member, so a mu sweep is one stack. `detached` stops the gradient of inner-level latents in the
reconstructions of outer levels, so each level's error trains only the latents it adds.
The inner activation and sparsity come from a BatchTopK or a ReLU-L1 SAE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from toymodels.sae.base import SAE, per_member
from toymodels.sae.batchtopk import BatchTopKSAE
from toymodels.sae.relu_l1 import ReLUL1SAE


class _Matryoshka(SAE):
    """Matryoshka reconstruction on top of another architecture's activation and sparsity."""

    def __init__(
        self,
        d_in: int,
        n_latents: int,
        n_members: int = 1,
        *,
        levels: Sequence[int] | None = None,
        mu: float | Sequence[float] = 1.0,
        detached: bool = False,
        **inner: Any,
    ) -> None:
        super().__init__(d_in, n_latents, n_members, **inner)
        levels = [n_latents] if levels is None else [int(m) for m in levels]
        if levels[0] < 1 or levels[-1] != n_latents or sorted(set(levels)) != levels:
            raise ValueError(
                f"levels must increase strictly from >= 1 to n_latents = {n_latents}, got {levels}"
            )
        self.config.update(
            levels=levels, mu=per_member(mu, n_members, "mu"), detached=bool(detached)
        )
        exponents = torch.arange(len(levels) - 1, -1, -1, dtype=torch.float32)
        self.register_buffer("level_weights", torch.tensor(self.config["mu"])[:, None] ** exponents)

    def reconstruction_loss(self, x: Tensor, codes_MBF: Tensor) -> Tensor:
        total, inner, start = 0.0, None, 0
        for j, stop in enumerate(self.config["levels"]):
            block = torch.bmm(codes_MBF[..., start:stop], self.W_dec[:, start:stop])
            x_hat = self.b_dec[:, None] + block
            if inner is not None:
                x_hat = x_hat + (inner.detach() if self.config["detached"] else inner)
            total = total + self.level_weights[:, j] * (x - x_hat).square().sum(-1).mean(-1)
            inner = block if inner is None else inner + block
            start = stop
        return total

    def full_config(self) -> dict[str, Any]:
        return {**super().full_config(), "inner": self.inner_architecture}

    def _grown_config(self, n_new: int) -> dict[str, Any]:
        """New latents join the outer level."""
        config = super()._grown_config(n_new)
        config["levels"] = [*self.config["levels"][:-1], self.n_latents + n_new]
        return config


class MatryoshkaBatchTopKSAE(_Matryoshka, BatchTopKSAE):
    architecture = "matryoshka"
    inner_architecture = "batchtopk"
    member_hyperparameters = ("k", "mu")


class MatryoshkaReLUL1SAE(_Matryoshka, ReLUL1SAE):
    architecture = "matryoshka"
    inner_architecture = "relu-l1"
    member_hyperparameters = ("l1", "mu")
    relu_codes = True


INNER = {"batchtopk": MatryoshkaBatchTopKSAE, "relu-l1": MatryoshkaReLUL1SAE}


def matryoshka(*args: Any, inner: str = "batchtopk", **config: Any) -> SAE:
    """A matryoshka SAE whose activation and sparsity come from `inner` (batchtopk or relu-l1)."""
    if inner not in INNER:
        raise ValueError(
            f"unknown matryoshka inner activation {inner!r}; allowed: {', '.join(INNER)}"
        )
    return INNER[inner](*args, **config)
