"""Main latents per letter by k-sparse probing on SAE codes (SAEBench's feature-splitting rule),
and the encoder-cosine alternative.

1. An L1 probe on the train codes: one-vs-rest pos-weighted BCE + 0.01 x mean over letters of
   sum |w|, Adam lr 1e-2 -> 1e-5 over 50 epochs, batch 4096, weight decay 1e-6 (probe.py).
2. Per letter, candidates are the latents with positive L1-probe weight, largest first. For
   k = 1..k_max a class-balanced L2 logistic regression (C = 1, scikit-learn, max_iter 500) is
   refitted on the top-k candidates' codes of the train split and scored by F1 on test
   (decision > 0).
3. k = 1 is accepted; k grows while F1 improves by more than tau over the best accepted so far and
   stops at the first k that does not. The accepted top-k are the letter's main latents; their
   count is the split count (SAEBench's num_split_features).

Codes are handled as sparse tensors (N, F): TopK/BatchTopK codes have a handful of non-zeros per
row, so codes are kept as scipy CSR matrices: the L1 probe costs O(non-zeros) per step and only the
k chosen columns are ever made dense.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import scipy.sparse
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from llm.absorption.probe import N_LETTERS, one_hot, train_one_vs_rest
from toymodels.sae import SAE


@torch.no_grad()
def sparse_codes(sae: SAE, acts_ND: Tensor, batch_size: int = 1024) -> scipy.sparse.csr_matrix:
    """Codes (N, F) of member 0 as a float32 scipy CSR matrix."""
    parts = []
    device = sae.W_dec.device
    for start in range(0, len(acts_ND), batch_size):
        x_BD = acts_ND[start : start + batch_size].to(device, sae.W_dec.dtype)
        parts.append(scipy.sparse.csr_matrix(sae.encode(x_BD)[0].float().cpu().numpy()))
    if not parts:
        return scipy.sparse.csr_matrix((0, sae.n_latents), dtype=np.float32)
    return scipy.sparse.vstack(parts, format="csr")


def dense_columns(codes_NF: scipy.sparse.csr_matrix, latents: list[int]) -> np.ndarray:
    """The chosen columns of sparse codes as a dense (N, k) array."""
    return codes_NF[:, latents].toarray()


class LetterMainLatents(NamedTuple):
    """Main latents of one letter, the F1 of each k tried (k = 1, 2, ...), and the accepted
    k-sparse probe (weights on the main latents' codes, intercept; decision > 0 is positive)."""

    latents: tuple[int, ...]
    f1_by_k: tuple[float, ...]
    coef: tuple[float, ...] = ()
    intercept: float = 0.0

    def predicts(self, codes_TF: Tensor) -> Tensor:
        """The k-sparse probe's verdict (T,) on dense codes; False without main latents."""
        if not self.latents:
            return torch.zeros(len(codes_TF), dtype=torch.bool)
        chosen_TK = codes_TF[:, list(self.latents)].double()
        return chosen_TK @ torch.tensor(self.coef, dtype=torch.float64) + self.intercept > 0


def l1_probe_weights(
    codes_train_NF: scipy.sparse.csr_matrix,
    letters_train_N: Tensor,
    seed: int = 0,
    epochs: int = 50,
    l1: float = 0.01,
) -> Tensor:
    """Weights (26, F) of the L1 one-vs-rest probe on sparse codes."""
    weight_LF, _ = train_one_vs_rest(
        codes_train_NF,
        one_hot(letters_train_N),
        epochs=epochs,
        batch_size=4096,
        weight_decay=1e-6,
        l1=l1,
        seed=seed,
    )
    return weight_LF


def _f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    tp = float(np.sum(predicted & truth))
    denominator = float(np.sum(predicted) + np.sum(truth))
    return 2 * tp / denominator if denominator > 0 else 0.0


def k_sparse_fit(
    codes_train_NF: scipy.sparse.csr_matrix,
    truth_train_N: np.ndarray,
    codes_test_NF: scipy.sparse.csr_matrix,
    truth_test_N: np.ndarray,
    latents: list[int],
) -> tuple[float, tuple[float, ...], float]:
    """(test F1, coefficients, intercept) of a class-balanced logistic regression on the given
    latents' codes; a train split with one class only gives F1 0 and a never-positive probe."""
    if truth_train_N.all() or not truth_train_N.any():
        return 0.0, tuple(0.0 for _ in latents), -1.0
    regression = LogisticRegression(class_weight="balanced", C=1.0, max_iter=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        regression.fit(dense_columns(codes_train_NF, latents), truth_train_N)
    decision = regression.decision_function(dense_columns(codes_test_NF, latents))
    coef = tuple(float(c) for c in regression.coef_[0])
    return _f1(decision > 0, truth_test_N), coef, float(regression.intercept_[0])


def main_latents(
    codes_train_NF: scipy.sparse.csr_matrix,
    letters_train_N: Tensor,
    codes_test_NF: scipy.sparse.csr_matrix,
    letters_test_N: Tensor,
    probe_weight_LF: Tensor,
    k_max: int = 10,
    tau: float = 0.03,
) -> list[LetterMainLatents]:
    """Per letter (26 entries) the main latents by the F1-jump rule (module docstring). A
    letter with no positive-weight latent gets no main latents."""
    letters_train = np.asarray(letters_train_N)
    letters_test = np.asarray(letters_test_N)
    results = []
    for letter in range(N_LETTERS):
        weights_F = probe_weight_LF[letter]
        n_positive = int((weights_F > 0).sum())
        order = torch.argsort(weights_F, descending=True, stable=True)[: min(k_max, n_positive)]
        candidates = order.tolist()
        f1_by_k: list[float] = []
        accepted = LetterMainLatents((), ())
        best = -np.inf
        for k in range(1, len(candidates) + 1):
            f1, coef, intercept = k_sparse_fit(
                codes_train_NF,
                letters_train == letter,
                codes_test_NF,
                letters_test == letter,
                candidates[:k],
            )
            f1_by_k.append(f1)
            if k > 1 and f1 <= best + tau:
                break
            accepted, best = LetterMainLatents(tuple(candidates[:k]), (), coef, intercept), f1
        results.append(accepted._replace(f1_by_k=tuple(f1_by_k)))
    return results


def encoder_cosine_latents(W_enc_DF: Tensor, directions_LD: Tensor) -> tuple[Tensor, Tensor]:
    """Per letter, the latent whose encoder column has the highest cosine with the probe
    direction, and that cosine: (26,) indices and (26,) cosines (sae-spelling's analysis)."""
    encoders_FD = torch.nn.functional.normalize(W_enc_DF.T.float(), dim=-1)
    cos_LF = torch.nn.functional.normalize(directions_LD.float(), dim=-1) @ encoders_FD.T
    best_L, index_L = cos_LF.max(dim=-1)
    return index_L, best_L
