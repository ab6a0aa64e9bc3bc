"""A hand-built hook setup and SAE with known absorption: orthonormal letter directions, a probe
that is exactly those directions, an SAE with one main latent per letter and, optionally, a
planted absorbing latent for letter A."""

from __future__ import annotations

import numpy as np
import torch

from llm.absorption.hook_setup import HookSetup
from llm.absorption.probe import LetterProbe
from toymodels.sae import make_sae

D_MODEL = 40
MAGNITUDE = 10.0
EXTRA = 26  # the basis direction of the absorbed sub-feature of letter A
ABSORBER = 26  # the planted absorbing latent


def basis(seed: int = 0) -> torch.Tensor:
    """An orthonormal basis (D, D), rows are directions."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D_MODEL, D_MODEL, generator=generator))
    return q.T.contiguous()


def synthetic_setup(
    n_train: int = 160, n_test: int = 40, absorbed_train: int = 8, absorbed_test: int = 2
) -> tuple[HookSetup, np.ndarray]:
    """The setup and a boolean mask over test words marking A-words carrying the sub-feature."""
    e = basis()
    letters, acts, absorbed, is_test = [], [], [], []
    for letter in range(26):
        for split, count, n_absorbed in ((0, n_train, absorbed_train), (1, n_test, absorbed_test)):
            for i in range(count):
                carries = letter == 0 and i < n_absorbed
                x = MAGNITUDE * e[letter] + (MAGNITUDE * e[EXTRA] if carries else 0)
                letters.append(letter)
                acts.append(x)
                absorbed.append(carries)
                is_test.append(split)
    letters_N = torch.tensor(letters)
    acts_ND = torch.stack(acts)
    is_test = np.asarray(is_test, dtype=bool)
    train_index, test_index = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    probe = LetterProbe(e[:26].clone(), torch.full((26,), -MAGNITUDE / 2))
    setup = HookSetup(
        words=tuple(f"w{i}" for i in range(len(letters))),
        letters_N=letters_N,
        train_index=train_index,
        test_index=test_index,
        train_acts_ND=acts_ND[train_index],
        test_acts_ND=acts_ND[test_index],
        absorption_acts_ND=acts_ND[test_index],
        probe=probe,
        icl_accuracy=None,
        vocabulary_size=len(letters),
    )
    return setup, np.asarray(absorbed)[test_index]


def synthetic_sae(planted: bool = True):  # noqa: ANN201 - an SAE
    """ReLU SAE, 26 main latents (encoder = decoder = letter direction) plus latent 26: when
    planted, it reads the sub-feature, its decoder is (e_A + e_extra) / sqrt 2, and latent A's
    encoder subtracts twice the sub-feature so that A is off on those tokens."""
    e = basis()
    sae = make_sae("relu-l1", d_in=D_MODEL, n_latents=27, l1=0.0)
    W_enc_DF = torch.zeros(D_MODEL, 27)
    W_dec_FD = torch.zeros(27, D_MODEL)
    for letter in range(26):
        W_enc_DF[:, letter] = e[letter]
        W_dec_FD[letter] = e[letter]
    if planted:
        W_enc_DF[:, 0] = e[0] - 2 * e[EXTRA]
        W_enc_DF[:, ABSORBER] = e[EXTRA]
        W_dec_FD[ABSORBER] = (e[0] + e[EXTRA]) / 2**0.5
    else:
        W_dec_FD[ABSORBER] = e[EXTRA + 1]
    with torch.no_grad():
        sae.W_enc[0] = W_enc_DF
        sae.W_dec[0] = W_dec_FD
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()
