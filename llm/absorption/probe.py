"""The first-letter linear probe: 26 one-vs-rest logistic regressions on residual activations,
and per-letter precision, recall and F1.

One linear layer d_model -> 26 (with bias) minimises, summed over letters,

    BCE_L = mean_n [ -w_L y_nL log sigmoid(z_nL) - (1 - y_nL) log(1 - sigmoid(z_nL)) ],
    w_L = negatives_L / positives_L  (pos_weight),

with Adam (coupled L2 weight decay 1e-4), lr 1e-2 decaying exponentially to 1e-5 over 50 epochs
(stepped per epoch), batch 64, shuffled by a seeded generator, fp32. Token n is predicted
positive for letter L when z_nL > 0.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse
import torch
from torch import Tensor

N_LETTERS = 26


class LetterProbe(NamedTuple):
    """weight_LD (26, d_model) and bias_L (26,)."""

    weight_LD: Tensor
    bias_L: Tensor

    def logits(self, acts_ND: Tensor) -> Tensor:
        return acts_ND.float() @ self.weight_LD.T + self.bias_L

    def directions(self) -> Tensor:
        """Unit probe directions (26, d_model) (weights without bias, normalised)."""
        return self.weight_LD / self.weight_LD.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def one_hot(letters_N: Tensor, n_classes: int = N_LETTERS) -> Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(letters_N).long(), n_classes).float()


def train_one_vs_rest(
    inputs: Tensor | scipy.sparse.csr_matrix,
    targets_NL: Tensor,
    *,
    epochs: int = 50,
    batch_size: int = 64,
    lr: float = 1e-2,
    final_lr: float = 1e-5,
    weight_decay: float = 1e-4,
    l1: float = 0.0,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """(weight (L, F), bias (L,)) of one-vs-rest logistic regressions with pos-weighted BCE.

    inputs: a dense (N, F) tensor, or a scipy CSR matrix (SAE codes): then each step costs
    O(non-zeros x L), the weight gradient being (batch^T @ dloss/dlogits)^T. l1 adds
    l1 x mean over outputs of sum |w| (the k-sparse probe's penalty). Weights start at zero, so
    permuting the input features permutes the result.
    """
    N, F = inputs.shape
    L = targets_NL.shape[1]
    positives_L = targets_NL.sum(0)
    pos_weight_L = (N - positives_L) / positives_L.clamp(min=1)
    weight_LF = torch.zeros(L, F, requires_grad=True)
    bias_L = torch.zeros(L, requires_grad=True)
    optimiser = torch.optim.Adam([weight_LF, bias_L], lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.ExponentialLR(
        optimiser, gamma=(final_lr / lr) ** (1 / epochs)
    )
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight_L)
    generator = torch.Generator().manual_seed(seed)
    sparse = scipy.sparse.issparse(inputs)
    rows = inputs.astype(np.float32).tocsr() if sparse else inputs.float()
    for _ in range(epochs):
        order = torch.randperm(N, generator=generator)
        for start in range(0, N, batch_size):
            index = order[start : start + batch_size]
            if sparse:
                batch = rows[index.numpy()]
                products = torch.from_numpy(batch @ weight_LF.detach().numpy().T)
                products.requires_grad_()
                logits = products + bias_L
            else:
                logits = rows[index] @ weight_LF.T + bias_L
            loss = loss_fn(logits, targets_NL[index])
            if l1 > 0:
                loss = loss + l1 * weight_LF.abs().sum(-1).mean()
            optimiser.zero_grad()
            loss.backward()
            if sparse:
                through_products = torch.from_numpy(batch.T @ products.grad.numpy()).T
                if weight_LF.grad is None:
                    weight_LF.grad = through_products.contiguous()
                else:
                    weight_LF.grad += through_products
            optimiser.step()
        schedule.step()
    return weight_LF.detach(), bias_L.detach()


def train_letter_probe(
    acts_ND: Tensor, letters_N: Tensor, seed: int = 0, epochs: int = 50
) -> LetterProbe:
    """The reference's 26-way one-vs-rest probe (module docstring) on activations."""
    weight_LD, bias_L = train_one_vs_rest(acts_ND, one_hot(letters_N), seed=seed, epochs=epochs)
    return LetterProbe(weight_LD, bias_L)


class LetterScores(NamedTuple):
    """Per-letter precision, recall, F1 (26,) and counts of true positives and positives."""

    precision_L: np.ndarray
    recall_L: np.ndarray
    f1_L: np.ndarray
    true_positives_L: np.ndarray
    positives_L: np.ndarray


def letter_scores(predicted_NL: Tensor, letters_N: Tensor) -> LetterScores:
    """Precision, recall and F1 per letter of boolean predictions (N, 26); 0 where undefined."""
    truth_NL = one_hot(letters_N, predicted_NL.shape[1]).bool()
    predicted_NL = predicted_NL.bool()
    tp = (predicted_NL & truth_NL).sum(0).double()
    predicted = predicted_NL.sum(0).double()
    actual = truth_NL.sum(0).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0)
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), 0)
    f1 = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-300), 0
    )
    return LetterScores(
        precision.numpy(), recall.numpy(), f1.numpy(), tp.long().numpy(), actual.long().numpy()
    )
