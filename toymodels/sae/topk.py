"""TopK SAE: each sample keeps its k largest latents (k per member), aux-k loss for dead latents.

Latents are ranked by their contribution h_i ||W_dec[i]|| (SAELens' rescale_acts_by_decoder_norm),
which equals plain ranking for unit-norm decoders and makes folding decoder norms exact.

Training on a shared batch takes a sparse path: the dense pre-activations are computed once
without autograd, only to choose each sample's k latents; the chosen pre-activations are then
recomputed with gradients from the k encoder columns, and x_hat is a bag sum of k decoder rows.
Backward then costs O(B k D) instead of three dense (B, F) x (F, D) products."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as nnf
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

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """The base loss; for a shared batch (B, D) computed through the k chosen latents only.

        Same values and gradients as the generic path (tested against it)."""
        if x.dim() != 2 or type(self).activation is not TopKSAE.activation:
            return super().loss(x)
        M, D, F = self.W_enc.shape
        with torch.no_grad():
            pre_MBF = self.pre_activations(x)
            # Ranking pre * norm instead of relu(pre) * norm picks the same latents wherever a
            # code is non-zero, and saves one pass over (M, B, F).
            top_MBK, index_MBK = (pre_MBF * self.decoder_norms()[:, None]).topk(self._k_max,
                                                                                dim=-1)
            ranks_K = torch.arange(self._k_max, device=x.device)
            fires_MBK = (top_MBK > 0) & (ranks_K < self.k[:, None, None])
        centred_MBD = x - self.b_dec[:, None]
        codes_MBK = self._chosen_pre(centred_MBD, index_MBK).relu() * fires_MBK
        x_hat_MBD = self._bag_decode(index_MBK, codes_MBK) + self.b_dec[:, None]
        mse = (x - x_hat_MBD).square().sum(-1).mean(-1)
        if self.training:
            with torch.no_grad():
                fired_MF = torch.zeros(M, F, dtype=x.dtype, device=x.device).scatter_add_(
                    1, index_MBK.view(M, -1), fires_MBK.view(M, -1).to(x.dtype)) > 0
                self.samples_since_fired.add_(x.shape[0]).masked_fill_(fired_MF, 0)
        aux = torch.zeros_like(mse)
        if self.config["aux_coefficient"] > 0:
            dead_MF = self.dead_latents()
            if bool(dead_MF.any()):  # one sync per step; most steps then skip the aux pass
                aux = self._sparse_aux_loss(pre_MBF, dead_MF, centred_MBD,
                                            (x - x_hat_MBD).detach())
        return {"total": (mse + aux).sum(), "mse": mse, "sparsity": torch.zeros_like(mse),
                "aux": aux, "per_member": mse + aux}

    def _chosen_pre(self, centred_MBD: Tensor, index_MBK: Tensor) -> Tensor:
        """pre-activations (M, B, K) of the chosen latents, with gradients."""
        M, D, F = self.W_enc.shape
        B, K = index_MBK.shape[1:]
        flat_MBK = index_MBK + F * torch.arange(M, device=index_MBK.device)[:, None, None]
        columns_NKD = nnf.embedding(flat_MBK.view(M * B, K), self.W_enc.transpose(1, 2)
                                    .reshape(M * F, D))
        dots_NK = torch.bmm(columns_NKD, centred_MBD.reshape(M * B, D, 1))[..., 0]
        return dots_NK.view(M, B, K) + self.b_enc.view(-1)[flat_MBK]

    def _bag_decode(self, index_MBK: Tensor, codes_MBK: Tensor) -> Tensor:
        """sum_j codes[m, b, j] W_dec[m, index[m, b, j]]: (M, B, D), no b_dec."""
        M, F, D = self.W_dec.shape
        B, K = index_MBK.shape[1:]
        flat_MBK = index_MBK + F * torch.arange(M, device=index_MBK.device)[:, None, None]
        decoded_ND = nnf.embedding_bag(flat_MBK.view(M * B, K), self.W_dec.view(M * F, D),
                                       per_sample_weights=codes_MBK.reshape(M * B, K),
                                       mode="sum")
        return decoded_ND.view(M, B, D)

    def _sparse_aux_loss(self, pre_MBF: Tensor, dead_MF: Tensor, centred_MBD: Tensor,
                         residual_MBD: Tensor) -> Tensor:
        """aux_loss of the base class through the chosen dead latents only."""
        k_aux = min(self.config["aux_k"] or max(self.d_in // 2, 1), self.n_latents)
        with torch.no_grad():
            values_MBK, index_MBK = pre_MBF.masked_fill(~dead_MF[:, None], float("-inf")
                                                        ).topk(k_aux, dim=-1)
        aux_codes_MBK = self._chosen_pre(centred_MBD, index_MBK).relu() * (values_MBK > 0)
        error_MBD = self._bag_decode(index_MBK, aux_codes_MBK) - residual_MBD
        scale = (dead_MF.sum(-1) / k_aux).clamp(max=1.0)
        return self.config["aux_coefficient"] * scale * error_MBD.square().sum(-1).mean(-1)
