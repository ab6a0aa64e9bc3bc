"""TopK SAE: each sample keeps its k largest latents (k per member), aux-k loss for dead latents.

Latents are ranked by their contribution h_i ||W_dec[i]|| (SAELens' rescale_acts_by_decoder_norm),
which equals plain ranking for unit-norm decoders and makes folding decoder norms exact; with
rank_by = "activation" by the raw activation h_i, as the hedging paper's BatchTopK SAEs do (there
folding decoder norms changes which latents win, and a latent with a small decoder row needs a
large code to be kept).

Training on a shared batch takes a sparse path: the dense pre-activations are computed once
without autograd, only to choose each sample's k latents; the chosen pre-activations are then
recomputed with gradients from the k encoder columns, and x_hat is a bag sum of k decoder rows.
Backward then costs O(B k D) instead of three dense (B, F) x (F, D) products."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor

from theory.config import require_choice
from toymodels.sae.base import SAE, Capabilities, SAEConfig, SAELensExtras, integer_per_member


def keep_top(scores_MN: Tensor, counts_M: Tensor, max_count: int) -> Tensor:
    """0/1 mask (M, N) of each row's counts_M[m] largest scores (ties broken by topk)."""
    index = scores_MN.topk(min(max_count, scores_MN.shape[-1]), dim=-1).indices
    rank_kept = torch.arange(index.shape[-1], device=index.device) < counts_M[:, None]
    return torch.zeros_like(scores_MN).scatter(-1, index, rank_kept.to(scores_MN.dtype))


RANK_BY = ("contribution", "activation")


@dataclass(frozen=True)
class TopKConfig(SAEConfig):
    """Each sample keeps its k largest latents."""

    k: tuple[int, ...] | int = 1
    """Latents kept per sample, one value or one per member (a narrower member keeps all)."""
    aux_coefficient: float = 1 / 32
    """Weight of the aux-k loss that revives dead latents (0: off)."""
    rank_by: str = "contribution"
    """What picks the kept latents: contribution (h_i ||W_dec[i]||) or activation (h_i, as the
    hedging paper's BatchTopK)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("k", integer_per_member(self.k, self.n_members, "k"))
        require_choice("rank_by", self.rank_by, RANK_BY)


class TopKSAE(SAE):
    """h = ReLU(pre) on each sample's top-k latents (by h_i ||W_dec[i]|| or by h_i), zero
    elsewhere."""

    architecture = "topk"
    config_class = TopKConfig
    capabilities = Capabilities(sparse_path=True, theory_codes=True)
    member_hyperparameters = ("k",)
    saelens_architecture = "topk"

    def __init__(self, config: TopKConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(config, generator)
        self.register_buffer("k", torch.tensor(config.k))
        self._k_max = max(config.k)  # a Python int: no device sync in the hot loop
        if config.rank_by == "activation":  # theory ranks by contribution
            self.capabilities = dataclasses.replace(self.capabilities, theory_codes=False)

    def ranking_weights(self) -> Tensor | None:
        """(M, F) factors turning pre-activations into ranking scores (decoder norms), or None
        when latents are ranked by their raw activation. No gradient."""
        if self.config.rank_by == "activation":
            return None
        return self.decoder_norms().detach()

    def scores(self, pre_MBF: Tensor) -> Tensor:
        """Ranking scores: each latent's contribution h_i ||W_dec[i]|| (or h_i), no gradient."""
        weights_MF = self.ranking_weights()
        codes_MBF = pre_MBF.detach().relu()
        return codes_MBF if weights_MF is None else codes_MBF * weights_MF[:, None]

    def activation(self, pre_MBF: Tensor) -> Tensor:
        M, B, F = pre_MBF.shape
        keep = keep_top(
            self.scores(pre_MBF).reshape(M * B, F), self.k.repeat_interleave(B), self._k_max
        )
        return pre_MBF.relu() * keep.view(M, B, F)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """The base loss; for a shared batch (B, D) computed through the k chosen latents only.

        Same values and gradients as the generic path (tested against it)."""
        if x.dim() != 2 or not self.capabilities.sparse_path:
            return super().loss(x)
        M, D, F = self.W_enc.shape
        with torch.no_grad():
            # Ranking pre * norm instead of relu(pre) * norm picks the same latents wherever a
            # code is non-zero; the norms are folded into the encoder, so the matmul gives the
            # ranking scores and no pass over (M, B, F) is spent on them.
            weights_MF = self.ranking_weights()
            ranked_MBF = self.pre_activations(x, weights_MF)
            top_MBK, index_MBK = ranked_MBF.topk(self._k_max, dim=-1)
            ranks_K = torch.arange(self._k_max, device=x.device)
            fires_MBK = (top_MBK > 0) & (ranks_K < self.k[:, None, None])
            chosen_MBK = top_MBK
            if weights_MF is not None:  # a zero-norm latent scores 0, never fires: divide by 1
                divisor_MF = torch.where(weights_MF > 0, weights_MF, 1.0)
                chosen_MBK = top_MBK / divisor_MF[:, None].expand_as(ranked_MBF).gather(
                    -1, index_MBK
                )
        codes_MBK = self._chosen_pre(x, chosen_MBK, index_MBK).relu() * fires_MBK
        x_hat_MBD = self._bag_decode(index_MBK, codes_MBK) + self.b_dec[:, None]
        mse = (x - x_hat_MBD).square().sum(-1).mean(-1)
        if self.training:
            with torch.no_grad():
                fired_MF = (
                    torch.zeros(M, F, dtype=x.dtype, device=x.device).scatter_add_(
                        1, index_MBK.view(M, -1), fires_MBK.view(M, -1).to(x.dtype)
                    )
                    > 0
                )
                self.record_firing(fired_MF, x.shape[0])
        aux = torch.zeros_like(mse)
        if self.config.aux_coefficient > 0:
            dead_MF = self.dead_latents()
            if bool(dead_MF.any()):  # one sync per step; most steps then skip the aux pass
                pre_MBF = self._unscaled(x, ranked_MBF, weights_MF)
                aux = self._sparse_aux_loss(x, pre_MBF, dead_MF, (x - x_hat_MBD).detach())
        return {
            "total": (mse + aux).sum(),
            "mse": mse,
            "sparsity": torch.zeros_like(mse),
            "aux": aux,
            "per_member": mse + aux,
        }

    def saelens_extras(self) -> SAELensExtras:
        # Decoder rows are unit norm in files, so ranking by pre-activation is our ranking by
        # contribution, and codes stay relu(pre) as ours are.
        return SAELensExtras({}, {"k": self.config.k[0], "rescale_acts_by_decoder_norm": False}, {})

    @torch.no_grad()
    def _unscaled(self, x_BD: Tensor, ranked_MBF: Tensor, weights_MF: Tensor | None) -> Tensor:
        """The pre-activations (M, B, F) behind ranking scores pre * weights."""
        if weights_MF is None:
            return ranked_MBF
        if bool((weights_MF == 0).any()):  # a zero decoder row's score has lost its pre
            return self.pre_activations(x_BD)
        return ranked_MBF / weights_MF[:, None]

    def _chosen_pre(self, x_BD: Tensor, chosen_MBK: Tensor, index_MBK: Tensor) -> Tensor:
        """The chosen latents' pre-activations chosen_MBK (M, B, K), computed without autograd,
        with their gradients, in the parameters' dtype (under bf16 autocast the dense
        pre-activations are bf16; the sparse ops after them run in fp32)."""
        return _ChosenPre.apply(
            chosen_MBK.to(self.W_enc.dtype),
            _flat(index_MBK, self.n_latents),
            x_BD,
            self.W_enc,
            self.b_enc,
            self.b_dec,
        )

    def _bag_decode(self, index_MBK: Tensor, codes_MBK: Tensor) -> Tensor:
        """sum_j codes[m, b, j] W_dec[m, index[m, b, j]]: (M, B, D), no b_dec."""
        return _BagDecode.apply(_flat(index_MBK, self.n_latents), codes_MBK, self.W_dec)

    def _sparse_aux_loss(
        self, x_BD: Tensor, pre_MBF: Tensor, dead_MF: Tensor, residual_MBD: Tensor
    ) -> Tensor:
        """aux_loss of the base class through the chosen dead latents only."""
        k_aux = self.aux_k()
        with torch.no_grad():
            values_MBK, index_MBK = pre_MBF.masked_fill(~dead_MF[:, None], float("-inf")).topk(
                k_aux, dim=-1
            )
        aux_codes_MBK = self._chosen_pre(x_BD, values_MBK, index_MBK).relu() * (values_MBK > 0)
        error_MBD = self._bag_decode(index_MBK, aux_codes_MBK) - residual_MBD
        scale = (dead_MF.sum(-1) / k_aux).clamp(max=1.0)
        return self.config.aux_coefficient * scale * error_MBD.square().sum(-1).mean(-1)


def _flat(index_MBK: Tensor, n_latents: int) -> Tensor:
    """Latent indices into the member-major (M F) axis."""
    members = torch.arange(index_MBK.shape[0], device=index_MBK.device)[:, None, None]
    return index_MBK + n_latents * members


class _ChosenPre(torch.autograd.Function):
    """pre[m, b, j] = (x_b - b_dec[m]) . W_enc[m, :, f] + b_enc[m, f] for the chosen f = index,
    given its value from the dense forward; backward in O(B K D) through a sparse product."""

    @staticmethod
    def forward(
        ctx: Any,
        chosen_MBK: Tensor,
        flat_MBK: Tensor,
        x_BD: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        b_dec: Tensor,
    ) -> Tensor:
        ctx.save_for_backward(flat_MBK, x_BD, W_enc, b_dec)
        return chosen_MBK.clone()

    @staticmethod
    def backward(ctx: Any, grad_MBK: Tensor) -> tuple:
        flat_MBK, x_BD, W_enc, b_dec = ctx.saved_tensors
        M, D, F = W_enc.shape
        B, K = flat_MBK.shape[1:]
        rows_MBK = torch.arange(B, device=x_BD.device).view(1, B, 1).expand(M, B, K)
        grad_b_enc_MF = (
            torch.zeros(M * F, dtype=grad_MBK.dtype, device=grad_MBK.device)
            .index_add_(0, flat_MBK.reshape(-1), grad_MBK.reshape(-1))
            .view(M, F)
        )
        grad_W_enc_MFD = _latent_sums(flat_MBK, rows_MBK, grad_MBK, x_BD, M * F).view(M, F, D)
        grad_W_enc_MFD -= grad_b_enc_MF[..., None] * b_dec[:, None]
        grad_b_dec_MD = -torch.bmm(W_enc, grad_b_enc_MF[..., None])[..., 0]
        return None, None, None, grad_W_enc_MFD.transpose(1, 2), grad_b_enc_MF, grad_b_dec_MD


class _BagDecode(torch.autograd.Function):
    """sum_j codes[m, b, j] W_dec[flat[m, b, j]] (M, B, D); backward in O(B K D)."""

    @staticmethod
    def forward(ctx: Any, flat_MBK: Tensor, codes_MBK: Tensor, W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(flat_MBK, codes_MBK, W_dec)
        M, F, D = W_dec.shape
        B, K = flat_MBK.shape[1:]
        decoded_ND = nnf.embedding_bag(
            flat_MBK.view(M * B, K),
            W_dec.view(M * F, D),
            per_sample_weights=codes_MBK.reshape(M * B, K),
            mode="sum",
        )
        return decoded_ND.view(M, B, D)

    @staticmethod
    def backward(ctx: Any, grad_MBD: Tensor) -> tuple:
        flat_MBK, codes_MBK, W_dec = ctx.saved_tensors
        M, F, D = W_dec.shape
        B, K = flat_MBK.shape[1:]
        grad_codes = _sampled_dots(flat_MBK.view(M * B, K), grad_MBD.reshape(M * B, D), W_dec)
        rows_MBK = torch.arange(M * B, device=grad_MBD.device).view(M, B, 1).expand(M, B, K)
        grad_W_dec = _latent_sums(
            flat_MBK, rows_MBK, codes_MBK, grad_MBD.reshape(M * B, D), M * F
        ).view(M, F, D)
        return None, grad_codes.view(M, B, K), grad_W_dec


def _latent_sums(
    flat_MBK: Tensor, rows_MBK: Tensor, values_MBK: Tensor, dense_RD: Tensor, n_rows: int
) -> Tensor:
    """out[f] = sum of values[i] dense[rows[i]] over the entries i with flat[i] = f: (n_rows, D).

    A CSR matrix by latent (entries sorted by latent) times dense_RD: half the time of the same
    product from an unsorted COO matrix, which sorts it less directly inside sparse.mm."""
    flat_N = flat_MBK.reshape(-1)
    order_N = torch.argsort(flat_N)
    row_starts = torch.zeros(n_rows + 1, dtype=torch.long, device=flat_N.device)
    torch.cumsum(torch.bincount(flat_N, minlength=n_rows), 0, out=row_starts[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        by_latent = torch.sparse_csr_tensor(
            row_starts,
            rows_MBK.reshape(-1)[order_N],
            values_MBK.reshape(-1)[order_N],
            (n_rows, dense_RD.shape[0]),
            check_invariants=False,
        )
        return torch.sparse.mm(by_latent, dense_RD)


def _sampled_dots(flat_NK: Tensor, grad_ND: Tensor, W_dec: Tensor) -> Tensor:
    """grad[n] . W_dec[flat[n, j]] (N, K), the codes' gradient.

    On the CPU a sampled dense-dense product (CSR of the chosen latents) does it without forming
    the (N, K, D) gathered rows, which cost 10x more (memory traffic and page faults)."""
    M, F, D = W_dec.shape
    N, K = flat_NK.shape
    if grad_ND.device.type != "cpu":
        rows_NKD = nnf.embedding(flat_NK, W_dec.view(M * F, D))
        return torch.bmm(rows_NKD, grad_ND[..., None])[..., 0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        chosen = torch.sparse_csr_tensor(
            torch.arange(0, N * K + 1, K, device=flat_NK.device),
            flat_NK.reshape(-1),
            grad_ND.new_zeros(N * K),
            (N, M * F),
            check_invariants=False,
        )
        products = torch.sparse.sampled_addmm(chosen, grad_ND, W_dec.view(M * F, D).T, beta=0)
    return products.values().view(N, K)
