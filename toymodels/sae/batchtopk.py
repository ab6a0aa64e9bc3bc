"""BatchTopK SAE: the batch keeps its k*B largest latents; a running threshold serves inference.

Training keeps, per member, the k*B largest contributions h_i ||W_dec[i]|| over the whole batch
(so samples share a budget of k on average). Like SAELens, an exponential moving average of the
smallest kept contribution is tracked; in eval mode a latent fires when its contribution exceeds
that threshold, which makes the SAE a per-sample function."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from toymodels.sae.topk import TopKSAE, keep_top


class BatchTopKSAE(TopKSAE):
    """TopK over the batch during training, a learned threshold at inference."""

    architecture = "batchtopk"

    def __init__(
        self,
        d_in: int,
        n_latents: int,
        n_members: int = 1,
        *,
        threshold_lr: float = 0.01,
        **topk: Any,
    ) -> None:
        super().__init__(d_in, n_latents, n_members, **topk)
        if not 0 < threshold_lr <= 1:
            raise ValueError(f"threshold_lr must be in (0, 1], got {threshold_lr}")
        self.config["threshold_lr"] = threshold_lr
        self.register_buffer("threshold", torch.zeros(n_members))

    def activation(self, pre_MBF: Tensor) -> Tensor:
        M, B, F = pre_MBF.shape
        scores = self.scores(pre_MBF)
        if not self.training:
            return pre_MBF.relu() * (scores > self.threshold[:, None, None])
        keep = keep_top(scores.reshape(M, B * F), self.k * B, self._k_max * B).view(M, B, F)
        with torch.no_grad():
            kept = torch.where((keep > 0) & (scores > 0), scores, torch.inf).flatten(1)
            smallest = kept.min(dim=-1).values
            lr = self.config["threshold_lr"]
            updated = (1 - lr) * self.threshold + lr * smallest
            self.threshold.copy_(torch.where(torch.isfinite(smallest), updated, self.threshold))
        return pre_MBF.relu() * keep

    def _rescale_contributions(self, factor: float) -> None:
        self.threshold *= factor
