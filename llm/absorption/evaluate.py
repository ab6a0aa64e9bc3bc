"""One SAE on a stored hook setup: main latents by k-sparse probing, per-letter absorption scores
and the aggregate (definitions in main_latents.py and scores.py).

The SAE is copied and its decoder norms folded into the encoder first, so that p_j = f_j c_j does
not depend on how a latent's scale is split between encoder and decoder; only member 0 of a stack
is evaluated.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from llm.absorption.causal import CausalSettings, causal_absorption
from llm.absorption.hook_setup import HookSetup
from llm.absorption.main_latents import (
    encoder_cosine_latents,
    l1_probe_weights,
    main_latents,
    sparse_codes,
)
from llm.absorption.scores import (
    MAIN_OFF,
    Aggregate,
    aggregate,
    decoder_cosines,
    token_absorption,
)
from llm.absorption.vocabulary import LETTERS
from toymodels.sae import SAE


class SAEAbsorption(NamedTuple):
    """Per-letter table (26 rows) and the aggregate scores of one SAE."""

    per_letter: pd.DataFrame
    aggregate: Aggregate


def folded_copy(sae: SAE) -> SAE:
    """Member 0 of `sae`, float32 on the CPU, eval mode, decoder rows unit norm."""
    one = copy.deepcopy(sae.select_members([0]) if sae.n_members > 1 else sae)
    one = one.to("cpu", torch.float32).eval()
    one.fold_decoder_norms()
    return one


class Scoring(NamedTuple):
    """How an SAE is scored on a setup (AbsorptionConfig.scoring() builds it from a config)."""

    k_max: int = 10
    tau: float = 0.03
    min_probe_f1: float = 0.6
    min_letters: int = 20
    seed: int = 0
    l1_epochs: int = 50
    batch_size: int = 1024


@torch.no_grad()
def evaluate_sae(
    setup: HookSetup,
    sae: SAE,
    scoring: Scoring | None = None,
    causal: CausalSettings | None = None,
) -> SAEAbsorption:
    """Absorption of `sae` on the setup's test split (module docstring); with `causal`, also
    the paper's integrated-gradients rate (causal.py) per letter."""
    k_max, tau, min_probe_f1, min_letters, seed, l1_epochs, batch_size = scoring or Scoring()
    if sae.d_in != setup.train_acts_ND.shape[1]:
        raise ValueError(
            f"SAE d_in {sae.d_in} does not match the activations' d_model "
            f"{setup.train_acts_ND.shape[1]}"
        )
    sae = folded_copy(sae)
    codes_train_NF = sparse_codes(sae, setup.train_acts_ND, batch_size)
    codes_test_NF = sparse_codes(sae, setup.test_acts_ND, batch_size)
    with torch.enable_grad():
        weight_LF = l1_probe_weights(
            codes_train_NF, setup.letters_train_N, seed=seed, epochs=l1_epochs
        )
    mains = main_latents(
        codes_train_NF,
        setup.letters_train_N,
        codes_test_NF,
        setup.letters_test_N,
        weight_LF,
        k_max=k_max,
        tau=tau,
    )
    probe_scores = setup.probe_scores()
    directions_LD = setup.probe.directions()
    predicted_NL = setup.probe.logits(setup.test_acts_ND) > 0
    letters_test_N = setup.letters_test_N
    encoder_latent_L, encoder_cosine_L = encoder_cosine_latents(sae.W_enc[0], directions_LD)
    rows = []
    for letter in range(len(LETTERS)):
        true_positive_T = torch.nonzero(
            predicted_NL[:, letter] & (letters_test_N == letter)
        ).flatten()
        cosines_F = decoder_cosines(sae.W_dec[0], directions_LD[letter])
        fractions, fulls, candidates = [], [], []
        for start in range(0, len(true_positive_T), batch_size):
            acts_TD = setup.absorption_acts_ND[true_positive_T[start : start + batch_size]]
            codes_TF = sae.encode(acts_TD)[0]
            scored = token_absorption(
                acts_TD, codes_TF, directions_LD[letter], cosines_F, mains[letter].latents
            )
            fractions.append(scored.fraction_T)
            fulls.append(scored.full_T)
            main_off_T = (codes_TF[:, list(mains[letter].latents)] < MAIN_OFF).all(-1)
            missed_T = main_off_T & ~mains[letter].predicts(codes_TF)
            candidates += true_positive_T[start : start + batch_size][missed_T].tolist()
        fraction_T = torch.cat(fractions) if fractions else torch.empty(0)
        full_T = torch.cat(fulls) if fulls else torch.empty(0, dtype=torch.bool)
        n_tp = len(true_positive_T)
        main = mains[letter]
        causal_columns = {}
        if causal is not None:
            with torch.enable_grad():
                measured = causal_absorption(
                    causal, sae, candidates, n_tp, letter, cosines_F, seed=seed
                )
            causal_columns = {
                "causal_candidates": measured.n_candidates,
                "causal_sampled": measured.n_sampled,
                "causal_absorbed": measured.n_absorbed,
                "causal_absorption_rate": measured.rate,
            }
        rows.append(
            {
                "letter": LETTERS[letter],
                "probe_precision": float(probe_scores.precision_L[letter]),
                "probe_recall": float(probe_scores.recall_L[letter]),
                "probe_f1": float(probe_scores.f1_L[letter]),
                "num_probe_true_positives": n_tp,
                "main_latents": " ".join(str(j) for j in main.latents),
                "num_split_features": len(main.latents),
                "k_sparse_f1": main.f1_by_k[len(main.latents) - 1] if main.latents else 0.0,
                "k_sparse_f1_by_k": " ".join(f"{f:.4f}" for f in main.f1_by_k),
                "mean_absorption_fraction": float(fraction_T.mean()) if n_tp else float("nan"),
                "full_absorption_rate": float(full_T.double().mean()) if n_tp else float("nan"),
                "num_full_absorption": int(full_T.sum()),
                "encoder_cosine_latent": int(encoder_latent_L[letter]),
                "encoder_cosine": float(encoder_cosine_L[letter]),
                **causal_columns,
            }
        )
    table = pd.DataFrame(rows)
    summary = aggregate(
        list(LETTERS),
        np.nan_to_num(table["mean_absorption_fraction"].to_numpy()),
        np.nan_to_num(table["full_absorption_rate"].to_numpy()),
        table["num_split_features"].to_numpy(),
        probe_scores.f1_L,
        table["num_probe_true_positives"].to_numpy(),
        min_probe_f1=min_probe_f1,
        min_letters=min_letters,
    )
    return SAEAbsorption(table, summary)
