"""SAE metrics: hedging degree, feature-basis components, MCC, reconstruction, sparsity, absorption.

Plain functions on tensors (numpy arrays are accepted too). Conventions follow SAELens:
W_dec is (latents F, d_in D), W_enc is (d_in D, latents F); true feature directions are rows
(N, D). Every function states its formula in its docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from theory.config import require_positive_int
from toymodels.sae.base import rows_of_norm

ArrayLike = torch.Tensor | np.ndarray


def _tensor(value: ArrayLike, name: str, ndim: int | None = None) -> torch.Tensor:
    t = torch.as_tensor(value)
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


# --- hedging degree ------------------------------------------------------------------------------
def _span_basis(rows_ND: torch.Tensor) -> torch.Tensor:
    """(rank, D) orthonormal basis of the span of the rows, truncated to their numerical rank."""
    _, singular_values, vh = torch.linalg.svd(rows_ND, full_matrices=False)
    tolerance = singular_values.max() * max(rows_ND.shape) * torch.finfo(rows_ND.dtype).eps
    return vh[singular_values > tolerance]


def _projected_movement(delta_FD: torch.Tensor, basis_RD: torch.Tensor) -> torch.Tensor:
    """mean_i ||Q Q^T delta_i||, computed as ||delta_i Q|| (Q has orthonormal columns)."""
    return (delta_FD @ basis_RD.T).norm(dim=1).mean()


def hedging_degree(
    W_dec_ctrl_FD: ArrayLike,
    W_dec_ext_GD: ArrayLike,
    n_new: int,
    n_random: int = 50,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """How much of the original latents' movement, when N latents are added, lies in the new span.

    Both decoders are folded to unit-norm rows. The extended SAE holds the W = F original latents
    first and the N = n_new new ones last (G = W + N rows).

        delta_i = W_dec_ext[i] - W_dec_ctrl[i]                      (i < W)
        Q       = orthonormal basis of span(W_dec_ext[W:])          (truncated to rank)
        p       = mean_i ||Q Q^T delta_i|| / mean_i ||W_dec_ctrl[i]||
        p_rand  = p with the new rows replaced by N Gaussian vectors, averaged over n_random draws
        h       = max(0, (p - p_rand) / (1 - p_rand))

    The basis comes from an SVD rather than QR because the rank truncation is then reliable; it is
    the same subspace. Memory is O((W + N) D): nothing quadratic in the number of latents.
    Returns {"h", "p", "p_rand", "n_new"}.
    """
    ctrl_FD = _tensor(W_dec_ctrl_FD, "W_dec_ctrl", 2).to(torch.float64)
    ext_GD = _tensor(W_dec_ext_GD, "W_dec_ext", 2).to(torch.float64)
    n_orig, d_in = ctrl_FD.shape
    require_positive_int("n_new", n_new)
    if ext_GD.shape != (n_orig + n_new, d_in):
        raise ValueError(
            f"extended decoder must have shape ({n_orig} + {n_new}, {d_in}) = "
            f"({n_orig + n_new}, {d_in}): control latents first, then the new ones; "
            f"got {tuple(ext_GD.shape)}"
        )
    if n_new >= d_in:
        raise ValueError(
            f"n_new = {n_new} new latents can span all of d_in = {d_in}; hedging degree needs "
            "n_new < d_in"
        )
    require_positive_int("n_random", n_random)
    ctrl_FD, ext_GD = rows_of_norm(ctrl_FD), rows_of_norm(ext_GD)
    delta_FD = ext_GD[:n_orig] - ctrl_FD
    scale = ctrl_FD.norm(dim=1).mean()
    if scale == 0:
        raise ValueError("every control decoder row is zero; hedging degree is undefined")
    p = _projected_movement(delta_FD, _span_basis(ext_GD[n_orig:])) / scale

    # One draw at a time keeps memory at O(W N) even for LLM SAEs with tens of thousands of
    # latents; float32 suffices for a Monte Carlo average whose sampling error is far larger.
    delta32_FD = delta_FD.float()
    random_movements = []
    for _ in range(n_random):
        gaussian_DN = torch.randn(
            d_in, n_new, generator=generator, dtype=torch.float64, device=ctrl_FD.device
        )
        random_basis_DN, _ = torch.linalg.qr(gaussian_DN)  # Gaussian rows have full rank a.s.
        random_movements.append(_projected_movement(delta32_FD, random_basis_DN.T.float()))
    p_rand = torch.stack(random_movements).double().mean() / scale
    if p_rand >= 1:
        raise ValueError(
            f"random-span baseline p_rand = {float(p_rand):.4g} >= 1: the control and extended "
            "decoders are too far apart for the hedging degree to be defined"
        )
    h = max(0.0, float((p - p_rand) / (1 - p_rand)))
    return {"h": h, "p": float(p), "p_rand": float(p_rand), "n_new": n_new}


# --- feature-basis components --------------------------------------------------------------------
@dataclass(frozen=True)
class Components:
    """Latent rows expressed on true feature directions: raw dot products and cosines (F, N)."""

    raw_FN: torch.Tensor
    cosine_FN: torch.Tensor


def _components(rows_FD: torch.Tensor, directions_ND: torch.Tensor) -> Components:
    if rows_FD.shape[1] != directions_ND.shape[1]:
        raise ValueError(
            f"latent vectors have d_in = {rows_FD.shape[1]} but directions have "
            f"d_in = {directions_ND.shape[1]}"
        )
    rows_FD = rows_FD.to(torch.float64)
    directions_ND = directions_ND.to(torch.float64)
    return Components(
        raw_FN=rows_FD @ directions_ND.T,
        cosine_FN=rows_of_norm(rows_FD) @ rows_of_norm(directions_ND).T,
    )


def decoder_components(W_dec_FD: ArrayLike, directions_ND: ArrayLike) -> Components:
    """raw[f, n] = W_dec[f] . d_n and cosine[f, n] = raw[f, n] / (||W_dec[f]|| ||d_n||)."""
    return _components(_tensor(W_dec_FD, "W_dec", 2), _tensor(directions_ND, "directions", 2))


def encoder_components(W_enc_DF: ArrayLike, directions_ND: ArrayLike) -> Components:
    """raw[f, n] = W_enc[:, f] . d_n and the cosine; negative raw on a child = absorption."""
    return _components(_tensor(W_enc_DF, "W_enc", 2).T, _tensor(directions_ND, "directions", 2))


def mcc(W_dec_FD: ArrayLike, directions_ND: ArrayLike, matching: str = "hungarian") -> float:
    """Mean max cosine similarity between true features and learned decoder latents.

    C[n, f] = cos(d_n, W_dec[f]) (signed: SAE codes are non-negative, so a latent pointing at
    -d_n never represents feature n).
    hungarian: one-to-one matching maximising sum C, MCC = mean of C over the min(N, F) pairs.
    greedy:    MCC = mean_n max_f C[n, f] (several features may pick the same latent).
    """
    cosine_NF = decoder_components(W_dec_FD, directions_ND).cosine_FN.T.cpu().numpy()
    if matching == "hungarian":
        rows, cols = linear_sum_assignment(cosine_NF, maximize=True)
        return float(cosine_NF[rows, cols].mean())
    if matching == "greedy":
        return float(cosine_NF.max(axis=1).mean())
    raise ValueError(f"unknown matching {matching!r}; allowed: 'hungarian', 'greedy'")


# --- reconstruction and sparsity -----------------------------------------------------------------
def explained_variance(x_BD: ArrayLike, x_hat_BD: ArrayLike) -> float:
    """1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the batch."""
    x = _tensor(x_BD, "x", 2).to(torch.float64)
    x_hat = _tensor(x_hat_BD, "x_hat", 2).to(torch.float64)
    if x.shape != x_hat.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but x_hat has {tuple(x_hat.shape)}")
    total = (x - x.mean(dim=0)).pow(2).sum()
    if total == 0:
        raise ValueError("x has zero variance; explained variance is undefined")
    return float(1 - (x - x_hat).pow(2).sum() / total)


def l0(codes_BF: ArrayLike) -> float:
    """Mean number of non-zero latents per sample: mean_b #{f : codes[b, f] != 0}."""
    codes = _tensor(codes_BF, "codes", 2)
    return float((codes != 0).sum(dim=1).to(torch.float64).mean())


def dead_fraction(codes_or_counts: ArrayLike) -> float:
    """Fraction of latents that never fire: codes (B, F) -> latent f dead when codes[:, f] == 0;
    firing counts (F,) -> dead when count == 0."""
    values = _tensor(codes_or_counts, "codes or firing counts")
    if values.ndim == 2:
        fires_F = (values != 0).any(dim=0)
    elif values.ndim == 1:
        fires_F = values > 0
    else:
        raise ValueError(f"expected codes (B, F) or counts (F,), got shape {tuple(values.shape)}")
    return float(1 - fires_F.to(torch.float64).mean())


# --- absorption in hierarchical worlds ------------------------------------------------------------
def best_matching_latent(codes_BF: ArrayLike, feature_firing_B: ArrayLike) -> int:
    """The latent whose activity (code != 0) best matches a feature's firing, by F1 score."""
    active_BF = (_tensor(codes_BF, "codes", 2) != 0).to(torch.float64)
    firing_B = _tensor(feature_firing_B, "feature firing", 1).to(torch.float64)
    if firing_B.shape[0] != active_BF.shape[0]:
        raise ValueError(f"{firing_B.shape[0]} firing values for {active_BF.shape[0]} samples")
    true_positive_F = firing_B @ active_BF
    f1_F = 2 * true_positive_F / (firing_B.sum() + active_BF.sum(dim=0)).clamp(min=1)
    return int(f1_F.argmax())


def absorption_statistics(
    codes_BF: ArrayLike,
    parent_firing_B: ArrayLike,
    children_firing_BC: ArrayLike,
    W_enc_DF: ArrayLike | None = None,
    children_directions_CD: ArrayLike | None = None,
    parent_latent: int | None = None,
    child_latents: Sequence[int] | None = None,
) -> dict:
    """Absorption of a parent feature into its children's latents.

    Latents default to the best F1 match of each feature's firing (best_matching_latent).
        fraction = #{b : parent fires, code[parent latent] = 0, some code[child latent] != 0}
                   / #{b : parent fires}
    With an encoder and the children's directions, also
        encoder_on_children[c] = W_enc[:, parent latent] . d_c
    (negative = absorption: the parent latent is switched off by its children; positive = hedging).
    """
    codes = _tensor(codes_BF, "codes", 2)
    parent_B = _tensor(parent_firing_B, "parent firing", 1).bool()
    children_BC = _tensor(children_firing_BC, "children firing", 2).bool()
    if not (codes.shape[0] == parent_B.shape[0] == children_BC.shape[0]):
        raise ValueError(
            f"codes, parent firing and children firing disagree on the number of samples: "
            f"{codes.shape[0]}, {parent_B.shape[0]}, {children_BC.shape[0]}"
        )
    if parent_latent is None:
        parent_latent = best_matching_latent(codes, parent_B)
    if child_latents is None:
        child_latents = [best_matching_latent(codes, c) for c in children_BC.T]
    if len(child_latents) != children_BC.shape[1]:
        raise ValueError(f"{len(child_latents)} child latents for {children_BC.shape[1]} children")
    active_BF = codes != 0
    absorbed_B = parent_B & ~active_BF[:, parent_latent] & active_BF[:, list(child_latents)].any(1)
    n_parent = int(parent_B.sum())
    result = {
        "fraction": float(absorbed_B.sum()) / n_parent if n_parent else float("nan"),
        "n_parent_firing": n_parent,
        "parent_latent": parent_latent,
        "child_latents": list(child_latents),
    }
    if W_enc_DF is not None and children_directions_CD is not None:
        on_children = encoder_components(W_enc_DF, children_directions_CD).raw_FN[parent_latent]
        result["encoder_on_children"] = on_children.tolist()
    return result
