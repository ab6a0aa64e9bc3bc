"""The standard ReLU SAE with a decoder-norm-weighted L1 penalty (the toy SAE of the theory)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from toymodels.sae.base import SAE, per_member


class ReLUL1SAE(SAE):
    """h = ReLU(pre); sparsity = l1 * mean_batch sum_i h_i ||W_dec[i]||, l1 per member.

    With squared error summed over dimensions and averaged over the batch this is exactly the
    loss of theory/sae.py, so a trained SAE can be compared with theory's exact loss."""

    architecture = "relu-l1"
    member_hyperparameters = ("l1",)
    relu_codes = True

    def __init__(self, d_in: int, n_latents: int, n_members: int = 1, *,
                 l1: float | Sequence[float] = 1e-2, **base: Any) -> None:
        super().__init__(d_in, n_latents, n_members, **base)
        self.config["l1"] = per_member(l1, n_members, "l1")
        self.register_buffer("l1", torch.tensor(self.config["l1"]))

    def activation(self, pre_MBF: Tensor) -> Tensor:
        return pre_MBF.relu()

    def sparsity_loss(self, codes_MBF: Tensor, pre_MBF: Tensor) -> Tensor:
        weighted = torch.linalg.vecdot(codes_MBF, self.decoder_norms()[:, None])
        return self.l1 * weighted.mean(-1)
