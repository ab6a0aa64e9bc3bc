"""JumpReLU SAE: a learned threshold per latent and an L0 penalty, trained with pseudo-gradients.

h_i = pre_i * H(pre_i - theta_i). The step H has no useful derivative, so (as in Gemma Scope) the
threshold receives a straight-through estimate using a rectangle kernel of width `bandwidth`:
d h / d theta = -(theta / eps) K((pre - theta) / eps), d H / d theta = -(1 / eps) K(...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from toymodels.sae.base import SAE, per_member


def _rectangle(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    return ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype) / bandwidth


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return torch.where(pre > threshold, pre, 0.0)  # masked latents have pre = -inf

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        grad_pre = grad * (pre > threshold)
        grad_threshold = -(threshold * _rectangle(pre, threshold, ctx.bandwidth)) * grad
        return grad_pre, grad_threshold.sum_to_size(threshold.shape), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        grad_threshold = -_rectangle(pre, threshold, ctx.bandwidth) * grad
        return None, grad_threshold.sum_to_size(threshold.shape), None


class JumpReLUSAE(SAE):
    """Per-latent thresholds (stored as log-thresholds), L0 penalty with coefficient per member."""

    architecture = "jumprelu"
    member_hyperparameters = ("l0_coefficient",)

    def __init__(
        self,
        d_in: int,
        n_latents: int,
        n_members: int = 1,
        *,
        l0_coefficient: float | Sequence[float] = 1e-2,
        threshold_init: float = 1e-3,
        bandwidth: float = 1e-3,
        **base: Any,
    ) -> None:
        super().__init__(d_in, n_latents, n_members, **base)
        if threshold_init <= 0 or bandwidth <= 0:
            raise ValueError(
                f"threshold_init and bandwidth must be > 0, got {threshold_init}, {bandwidth}"
            )
        self.config.update(
            l0_coefficient=per_member(l0_coefficient, n_members, "l0_coefficient"),
            threshold_init=threshold_init,
            bandwidth=bandwidth,
        )
        self.register_buffer("l0_coefficient", torch.tensor(self.config["l0_coefficient"]))
        self.log_threshold = torch.nn.Parameter(
            torch.full((n_members, n_latents), math.log(threshold_init))
        )

    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def activation(self, pre_MBF: Tensor) -> Tensor:
        return _JumpReLU.apply(pre_MBF, self.threshold()[:, None], self.config["bandwidth"])

    def sparsity_loss(self, codes_MBF: Tensor, pre_MBF: Tensor) -> Tensor:
        fired = _Step.apply(pre_MBF, self.threshold()[:, None], self.config["bandwidth"])
        return self.l0_coefficient * fired.sum(-1).mean(-1)

    def _rescale_thresholds(self, norms_MF: Tensor) -> None:
        self.log_threshold += norms_MF.log()
