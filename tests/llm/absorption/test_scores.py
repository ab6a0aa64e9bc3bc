"""Absorption scores: each branch of the definitions by hand, a planted absorbing latent scored
exactly, no absorption when main latents fire fully, and invariance to latent permutation and
encoder/decoder rescaling."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm.absorption.evaluate import Scoring, evaluate_sae
from llm.absorption.scores import aggregate, decoder_cosines, token_absorption
from tests.llm.absorption.synthetic import ABSORBER, synthetic_sae, synthetic_setup


def _one_token(P, p_main, absorbers, cos_absorbers, main_code=None):
    """A token with probe projection P along e0, main latent 0 with projection p_main (cos 1)
    and absorbing latents with projections `absorbers` at cosines `cos_absorbers`."""
    F = 1 + len(absorbers)
    cosines = torch.tensor([1.0, *cos_absorbers])
    absorber_codes = [p / c for p, c in zip(absorbers, cos_absorbers, strict=True)]
    codes = torch.tensor([[p_main, *absorber_codes]])
    if main_code is not None:
        codes[0, 0] = main_code
    acts = torch.zeros(1, 3)
    acts[0, 0] = P
    direction = torch.tensor([1.0, 0.0, 0.0])
    assert codes.shape == (1, F)
    return token_absorption(acts, codes, direction, cosines, [0])


@pytest.mark.parametrize(
    "P, p_main, absorbers, cosines, fraction",
    [
        (10.0, 10.0, [5.0], [0.5], 0.0),  # M >= P
        (10.0, 2.0, [3.0], [0.5], 0.0),  # A / P = 0.3 < 0.4
        (10.0, 0.0, [5.0], [0.5], 1.0),  # M <= 0: all of it absorbed
        (10.0, 4.0, [5.0], [0.5], 5.0 / 9.0),  # s = min(5, 6) = 5: 5 / (5 + 4)
        (10.0, 4.0, [8.0], [0.5], 6.0 / 10.0),  # s = min(8, 6) = 6: 6 / (6 + 4)
        (10.0, 0.0, [5.0], [0.05], 0.0),  # cosine below 0.1: not a candidate
        (10.0, 0.0, [2.0, 2.0, 2.0, 2.0], [0.5] * 4, 1.0),  # top 3 sum 6: A / P = 0.6
        (10.0, 4.0, [1.0, 1.0, 1.0, 3.0], [0.5] * 4, 5.0 / 9.0),  # top 3 = 3 + 1 + 1
        (-1.0, 0.0, [5.0], [0.5], 0.0),  # P < 0
        (0.0, 0.0, [5.0], [0.5], 0.0),  # P = 0: defined as 0 here
    ],
)
def test_absorption_fraction_branches(P, p_main, absorbers, cosines, fraction):
    scored = _one_token(P, p_main, absorbers, cosines)
    assert scored.fraction_T.item() == pytest.approx(fraction, abs=1e-6)


def test_full_absorption_conditions():
    # Main off, one absorber with p = 5 at cosine 0.5: full.
    assert _one_token(10.0, 0.0, [5.0], [0.5]).full_T.item()
    # Main code 1e-6 >= 1e-8: not full, though the absorber dominates.
    assert not _one_token(10.0, 0.0, [5.0], [0.5], main_code=1e-6).full_T.item()
    # Top latent's cosine below 0.025.
    assert not _one_token(10.0, 0.0, [5.0], [0.02]).full_T.item()
    # p_top / P < 0.4.
    assert not _one_token(10.0, 0.0, [3.0], [0.5]).full_T.item()
    assert not _one_token(0.0, 0.0, [3.0], [0.5]).full_T.item()


def test_planted_absorbing_latent_is_scored_exactly():
    setup, absorbed_test = synthetic_setup()
    result = evaluate_sae(setup, synthetic_sae(planted=True), Scoring(min_letters=20))
    table = result.per_letter.set_index("letter")
    assert table.loc["A", "main_latents"] == "0"
    assert (table["num_split_features"] == 1).all()
    n_absorbed = int(absorbed_test.sum())
    n_a = int((setup.letters_test_N == 0).sum())
    assert table.loc["A", "num_probe_true_positives"] == n_a
    assert table.loc["A", "mean_absorption_fraction"] == pytest.approx(n_absorbed / n_a)
    assert table.loc["A", "full_absorption_rate"] == pytest.approx(n_absorbed / n_a)
    assert table.loc["A", "num_full_absorption"] == n_absorbed
    others = table.drop(index="A")
    assert (others["mean_absorption_fraction"] == 0).all()
    assert (others["full_absorption_rate"] == 0).all()
    summary = result.aggregate
    assert summary.mean_absorption_fraction_score == pytest.approx(n_absorbed / n_a / 26)
    assert summary.mean_num_split_features == 1.0
    assert summary.letters_excluded == ()


def test_no_absorption_when_main_latents_fire_fully():
    setup, _ = synthetic_setup(absorbed_train=0, absorbed_test=0)
    result = evaluate_sae(setup, synthetic_sae(planted=False))
    assert (result.per_letter["mean_absorption_fraction"] == 0).all()
    assert (result.per_letter["num_full_absorption"] == 0).all()
    assert result.aggregate.mean_absorption_fraction_score == 0.0
    assert result.aggregate.mean_full_absorption_score == 0.0


@settings(max_examples=30, deadline=None)
@given(
    st.floats(-5, 20),
    st.floats(-5, 20),
    st.lists(st.floats(-5, 20), min_size=1, max_size=6),
    st.lists(st.floats(-1, 1), min_size=6, max_size=6),
)
def test_every_score_is_in_the_unit_interval(P, p_main, absorbers, cosines):
    scored = _one_token(P, max(p_main, 0), absorbers, [c or 0.5 for c in cosines[: len(absorbers)]])
    assert 0.0 <= scored.fraction_T.item() <= 1.0
    assert scored.full_T.dtype == torch.bool


def _transformed(sae, permutation, scales):
    """The same SAE with latents permuted and latent j's encoder x s_j, decoder / s_j."""
    new = synthetic_sae()
    with torch.no_grad():
        new.W_enc[0] = sae.W_enc[0][:, permutation] * scales
        new.b_enc[0] = sae.b_enc[0][permutation] * scales
        new.W_dec[0] = sae.W_dec[0][permutation] / scales[:, None]
        new.b_dec[0] = sae.b_dec[0]
    return new


@settings(max_examples=3, deadline=None)
@given(st.randoms(use_true_random=False), st.lists(st.floats(0.1, 10), min_size=27, max_size=27))
def test_permuting_and_rescaling_latents_changes_nothing(random, scales):
    setup, _ = synthetic_setup()
    sae = synthetic_sae()
    permutation = list(range(27))
    random.shuffle(permutation)
    changed = _transformed(sae, torch.tensor(permutation), torch.tensor(scales))
    before = evaluate_sae(setup, sae, Scoring(l1_epochs=10)).per_letter
    after = evaluate_sae(setup, changed, Scoring(l1_epochs=10)).per_letter
    for column in ("mean_absorption_fraction", "full_absorption_rate", "num_split_features"):
        np.testing.assert_allclose(after[column], before[column], atol=1e-6)
    # Main latents are the same latents under their new indices.
    new_index = {old: new for new, old in enumerate(permutation)}
    for old, new in zip(before["main_latents"], after["main_latents"], strict=True):
        assert sorted(new_index[int(j)] for j in old.split()) == sorted(int(j) for j in new.split())


def test_decoder_cosines_ignore_decoder_norms():
    W_dec = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    cos = decoder_cosines(W_dec, torch.tensor([5.0, 0.0]))
    torch.testing.assert_close(cos, torch.tensor([1.0, 0.0, 1 / math.sqrt(2)]))


def test_aggregate_excludes_letters_and_refuses_too_few():
    letters = ["A", "B", "C"]
    summary = aggregate(
        letters,
        np.array([0.2, 0.4, 0.9]),
        np.array([0.1, 0.0, 1.0]),
        np.array([1, 2, 3]),
        probe_f1_L=np.array([0.9, 0.7, 0.5]),
        true_positives_L=np.array([10, 5, 5]),
        min_letters=2,
    )
    assert summary.letters_excluded == ("C",)
    assert summary.mean_absorption_fraction_score == pytest.approx(0.3)
    assert summary.std_dev_absorption_fraction_score == pytest.approx(0.1)
    assert summary.mean_num_split_features == pytest.approx(1.5)
    too_few = aggregate(
        letters, np.zeros(3), np.zeros(3), np.ones(3), np.array([0.9, 0.1, 0.1]), np.ones(3), 0.6, 2
    )
    assert too_few.mean_absorption_fraction_score is None
    assert too_few.letters_scored == ("A",)


def test_absorber_is_the_planted_latent():
    sae = synthetic_sae()
    setup, absorbed = synthetic_setup()
    codes = sae.encode(setup.absorption_acts_ND[torch.from_numpy(absorbed)])[0]
    assert (codes[:, 0] == 0).all() and (codes[:, ABSORBER] > 0).all()
