"""Absorption scores with SAEBench's semantics: per-token absorption fraction and full
absorption, per-letter means and the aggregate over letters the probe handles well.

For one probe true positive of letter L, on its fresh absorption prompt: a = residual activation,
d = unit probe direction of L, f = codes of the SAE with decoder norms folded into the encoder,
c_j = cos(decoder row j, d), p_j = f_j c_j, P = a . d, M = sum of p_j over the main latents.

    absorption fraction: candidates = non-main latents with c_j >= 0.1 and p_j > 0,
        A = sum of the 3 largest candidate p_j;
        0 if P <= 0, M >= P or A / P < 0.4; else 1 if M <= 0;
        else s = min(A, P - M) and the fraction is s / (s + M), clipped to [0, 1].
    full absorption: every main latent's code < 1e-8, the latent with the largest p_j (over all
        latents) has c >= 0.025, P > 0 and p_top / P >= 0.4.

P <= 0 (the fresh prompt no longer projects onto the probe) scores 0 and no full absorption:
SAEBench gives 0 for P < 0 through its A / P test and divides by zero at P = 0.
Per letter: means over the letter's probe true positives. Aggregate: mean (and population
standard deviation) over letters whose probe F1 exceeds min_probe_f1 and that have at least one
true positive; no aggregate when fewer than min_letters letters qualify.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

ABSORBER_COSINE = 0.1
FULL_ABSORBER_COSINE = 0.025
PROJECTION_PROPORTION = 0.4
MAX_ABSORBERS = 3
MAIN_OFF = 1e-8


class TokenAbsorption(NamedTuple):
    """Per token (T,): absorption fraction, full absorption, P and M."""

    fraction_T: Tensor
    full_T: Tensor
    probe_projection_T: Tensor
    main_projection_T: Tensor


def decoder_cosines(W_dec_FD: Tensor, direction_D: Tensor) -> Tensor:
    """cos(decoder row j, direction) for every latent: (F,)."""
    return torch.nn.functional.cosine_similarity(W_dec_FD.float(), direction_D.float()[None], -1)


def token_absorption(
    acts_TD: Tensor,
    codes_TF: Tensor,
    direction_D: Tensor,
    cosines_F: Tensor,
    main: list[int] | tuple[int, ...],
) -> TokenAbsorption:
    """Absorption fraction and full absorption of each token (module docstring)."""
    direction_D = direction_D.float() / direction_D.float().norm()
    P_T = acts_TD.float() @ direction_D
    p_TF = codes_TF.float() * cosines_F
    main_F = torch.zeros(len(cosines_F), dtype=torch.bool)
    main_F[list(main)] = True
    M_T = p_TF[:, main_F].sum(-1)
    candidate_TF = ~main_F & (cosines_F >= ABSORBER_COSINE) & (p_TF > 0)
    absorbing_TF = torch.where(candidate_TF, p_TF, torch.zeros_like(p_TF))
    A_T = absorbing_TF.topk(min(MAX_ABSORBERS, p_TF.shape[1]), dim=-1).values.sum(-1)
    positive_T = P_T > 0
    safe_P_T = torch.where(positive_T, P_T, torch.ones_like(P_T))
    none_T = ~positive_T | (M_T >= P_T) | (A_T / safe_P_T < PROJECTION_PROPORTION)
    shared_T = torch.minimum(A_T, P_T - M_T)
    partial_T = (shared_T / (shared_T + M_T).clamp(min=1e-30)).clamp(0, 1)
    fraction_T = torch.where(
        none_T, torch.zeros_like(P_T), torch.where(M_T <= 0, torch.ones_like(P_T), partial_T)
    )
    main_off_T = (codes_TF[:, main_F] < MAIN_OFF).all(-1)
    p_top_T, top_T = p_TF.max(dim=-1)
    full_T = (
        main_off_T
        & (cosines_F[top_T] >= FULL_ABSORBER_COSINE)
        & positive_T
        & (p_top_T / safe_P_T >= PROJECTION_PROPORTION)
    )
    return TokenAbsorption(fraction_T, full_T, P_T, M_T)


class Aggregate(NamedTuple):
    """Means and standard deviations over the qualifying letters (None when too few)."""

    mean_absorption_fraction_score: float | None
    mean_full_absorption_score: float | None
    mean_num_split_features: float | None
    std_dev_absorption_fraction_score: float | None
    std_dev_full_absorption_score: float | None
    std_dev_num_split_features: float | None
    letters_scored: tuple[str, ...]
    letters_excluded: tuple[str, ...]


def aggregate(
    letters: list[str],
    absorption_fraction_L: np.ndarray,
    full_absorption_L: np.ndarray,
    split_features_L: np.ndarray,
    probe_f1_L: np.ndarray,
    true_positives_L: np.ndarray,
    min_probe_f1: float = 0.6,
    min_letters: int = 20,
) -> Aggregate:
    """Scores over letters with probe F1 > min_probe_f1 and at least one probe true positive."""
    keep = (np.asarray(probe_f1_L) > min_probe_f1) & (np.asarray(true_positives_L) > 0)
    scored = tuple(letter for letter, k in zip(letters, keep, strict=True) if k)
    excluded = tuple(letter for letter, k in zip(letters, keep, strict=True) if not k)
    if len(scored) < min_letters:
        return Aggregate(None, None, None, None, None, None, scored, excluded)
    values = [
        np.asarray(v, dtype=float)[keep]
        for v in (absorption_fraction_L, full_absorption_L, split_features_L)
    ]
    return Aggregate(
        *(float(v.mean()) for v in values),
        *(float(v.std()) for v in values),
        scored,
        excluded,
    )
