"""TopK SAE: each sample keeps its k largest latents (k per member), aux-k loss for dead latents.

Latents are ranked by their contribution h_i ||W_dec[i]|| (SAELens' rescale_acts_by_decoder_norm),
which equals plain ranking for unit-norm decoders and makes folding decoder norms exact."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from toymodels.sae.base import SAE, per_member


def integer_per_member(value: int | Sequence[int], n_members: int, what: str) -> list[int]:
    """An integer hyperparameter >= 1, given once or once per member."""
    values = per_member(value, n_members, what)
    if any(v != int(v) or v < 1 for v in values):
        raise ValueError(f"{what} values must be integers >= 1, got {values}")
    return [int(v) for v in values]


def keep_top(scores_MN: Tensor, counts_M: Tensor, max_count: int) -> Tensor:
    """0/1 mask (M, N) of each row's counts_M[m] largest scores (ties broken by topk)."""
    index = scores_MN.topk(min(max_count, scores_MN.shape[-1]), dim=-1).indices
    rank_kept = torch.arange(index.shape[-1], device=index.device) < counts_M[:, None]
    return torch.zeros_like(scores_MN).scatter(-1, index, rank_kept.to(scores_MN.dtype))


class TopKSAE(SAE):
    """h = ReLU(pre) on each sample's top-k latents (by h_i ||W_dec[i]||), zero elsewhere."""

    architecture = "topk"
    member_hyperparameters = ("k",)

    def __init__(self, d_in: int, n_latents: int, n_members: int = 1, *,
                 k: int | Sequence[int] = 1, aux_coefficient: float = 1 / 32, **base: Any) -> None:
        super().__init__(d_in, n_latents, n_members, aux_coefficient=aux_coefficient, **base)
        self.config["k"] = integer_per_member(k, n_members, "k")
        self.register_buffer("k", torch.tensor(self.config["k"]))
        self._k_max = max(self.config["k"])  # a Python int: no device sync in the hot loop

    def scores(self, pre_MBF: Tensor) -> Tensor:
        """Ranking scores: each latent's contribution h_i ||W_dec[i]||, no gradient."""
        return pre_MBF.detach().relu() * self.decoder_norms().detach()[:, None]

    def activation(self, pre_MBF: Tensor) -> Tensor:
        M, B, F = pre_MBF.shape
        keep = keep_top(self.scores(pre_MBF).reshape(M * B, F),
                        self.k.repeat_interleave(B), self._k_max)
        return pre_MBF.relu() * keep.view(M, B, F)
