"""BatchTopK SAE: the batch keeps its k*B largest latents; a running threshold serves inference.

Training keeps, per member, the k*B largest contributions h_i ||W_dec[i]|| over the whole batch
(so samples share a budget of k on average). Like SAELens, an exponential moving average of the
smallest kept contribution t is tracked; in eval mode a latent fires when its contribution exceeds
t, i.e. when pre_i > t / ||W_dec[i]|| (inference_threshold), which makes the SAE a per-sample
function. With rank_by = "activation" (the hedging paper's) both the ranking and t are in units of
the raw activation h_i, and a latent fires at inference when pre_i > t; folding decoder norms then
changes which latents fire (as in the paper's code, whose files keep t after folding).

Data-parallel (split_batches), the k*B budget is the global batch's: every process keeps its
scores above the global batch's (k*B)-th largest, found from every process's top scores, and its
share of the ties at it (toymodels.distributed.whole_batch_keep), so the processes keep what one
process would and track the same t.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from theory.config import require_number
from toymodels.sae.base import Capabilities, SAELensExtras
from toymodels.sae.topk import TopKConfig, TopKSAE, keep_top


@dataclass(frozen=True)
class BatchTopKConfig(TopKConfig):
    """TopK over the batch during training, a learned threshold at inference."""

    threshold_lr: float = 0.01
    """Step of the moving average that tracks the inference threshold."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require_number("threshold_lr", self.threshold_lr, 0, 1, open_low=True)


class BatchTopKSAE(TopKSAE):
    """TopK over the batch during training, a learned threshold at inference."""

    architecture = "batchtopk"
    config_class = BatchTopKConfig
    capabilities = Capabilities(inference_threshold=True, theory_codes=True)
    saelens_architecture = "jumprelu"

    def __init__(self, config: BatchTopKConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(config, generator)
        # The running threshold t on ranking scores (contributions h_i ||W_dec[i]||, or h_i with
        # rank_by = "activation"), one per member.
        self.register_buffer("contribution_threshold", torch.zeros(config.n_members))
        # While batches are split across processes: which of this process's scores (M, B, F)
        # the global batch keeps under k (M,), and the smallest positive kept score per member.
        self.batch_keep: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None

    def split_batches(self, global_rows: int | None) -> None:
        from toymodels import distributed

        super().split_batches(global_rows)
        self.batch_keep = None if global_rows is None else distributed.whole_batch_keep(global_rows)

    def inference_threshold(self) -> Tensor:
        weights_MF = self.ranking_weights()
        if weights_MF is None:
            return self.contribution_threshold[:, None].expand(-1, self.n_latents)
        return self.contribution_threshold[:, None] / weights_MF

    def activation(self, pre_MBF: Tensor) -> Tensor:
        M, B, F = pre_MBF.shape
        scores = self.scores(pre_MBF)
        threshold_M = self.contribution_threshold
        if not self.training:
            return pre_MBF.relu() * (scores > threshold_M[:, None, None])
        if self.batch_keep is None:
            keep = keep_top(scores.reshape(M, B * F), self.k * B, self._k_max * B).view(M, B, F)
            with torch.no_grad():
                kept = torch.where((keep > 0) & (scores > 0), scores, torch.inf).flatten(1)
                smallest = kept.min(dim=-1).values
        else:
            kept, smallest = self.batch_keep(scores, self.k)
            keep = kept.to(scores.dtype)
        with torch.no_grad():
            lr = self.config.threshold_lr
            updated = (1 - lr) * threshold_M + lr * smallest
            threshold_M.copy_(torch.where(torch.isfinite(smallest), updated, threshold_M))
        return pre_MBF.relu() * keep

    def _rescale_contributions(self, factor: float) -> None:
        if self.config.rank_by == "contribution":  # raw activations keep their scale
            self.contribution_threshold *= factor

    def saelens_extras(self) -> SAELensExtras:
        # SAELens's JumpReLU fires on pre_i > t_i; our scalar t is kept exactly in our own key.
        threshold = {"threshold": self.inference_threshold()[0]}
        return SAELensExtras(
            threshold, {}, {"batchtopk_threshold": float(self.contribution_threshold[0])}
        )

    def load_saelens_extras(self, tensors: dict[str, Tensor], ours: dict[str, Any]) -> None:
        self.contribution_threshold.fill_(ours["batchtopk_threshold"])
