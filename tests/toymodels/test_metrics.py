"""SAE metrics against hand-built cases with known answers and independent computations."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import gammaln
from scipy.stats import ortho_group

from toymodels.metrics import (
    absorption_statistics,
    best_matching_latent,
    dead_fraction,
    decoder_components,
    encoder_components,
    explained_variance,
    hedging_degree,
    l0,
    mcc,
)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- hedging degree ------------------------------------------------------------------------------
def test_no_movement_gives_zero_hedging():
    ctrl = torch.randn(6, 10, generator=_generator(1))
    extended = torch.cat([ctrl, torch.randn(2, 10, generator=_generator(2))])
    result = hedging_degree(ctrl, extended, n_new=2, generator=_generator())
    assert result["p"] == pytest.approx(0, abs=1e-12)
    assert result["p_rand"] == pytest.approx(0, abs=1e-12)  # nothing moved, in any span
    assert result["h"] == 0 and result["n_new"] == 2


def test_movement_entirely_inside_the_new_span_gives_full_hedging():
    # Every original latent is e0 and turns by 60 degrees towards e1; the new latents span
    # {e0, e1}, so delta lies in their span with norm 2 sin(30 deg) = 1: p = 1 and h = 1.
    d = 12
    e = torch.eye(d, dtype=torch.float64)
    ctrl = e[0].repeat(4, 1)
    moved = math.cos(math.pi / 3) * e[0] + math.sin(math.pi / 3) * e[1]
    extended = torch.cat([moved.repeat(4, 1), torch.stack([e[0] + e[1], e[1]])])
    result = hedging_degree(ctrl, extended, n_new=2, generator=_generator())
    assert result["p"] == pytest.approx(1.0)
    assert result["h"] == pytest.approx(1.0)


def _projector_p(ctrl: np.ndarray, extended: np.ndarray, n_new: int) -> float:
    """Independent computation: explicit projector from the pseudo-inverse."""
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    ctrl, extended = unit(ctrl), unit(extended)
    new = extended[-n_new:]
    projector = new.T @ np.linalg.pinv(new @ new.T) @ new
    delta = extended[:-n_new] - ctrl
    return np.linalg.norm(delta @ projector, axis=1).mean() / np.linalg.norm(ctrl, axis=1).mean()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    n_orig=st.integers(1, 12),
    n_new=st.integers(1, 5),
    d_in=st.integers(6, 16),
    seed=st.integers(0, 2**31 - 1),
    movement=st.floats(0.0, 0.5),
)
def test_p_matches_an_explicit_projector_and_is_invariant(n_orig, n_new, d_in, seed, movement):
    rng = np.random.default_rng(seed)
    ctrl = rng.standard_normal((n_orig, d_in))
    extended = np.concatenate(
        [ctrl + movement * rng.standard_normal((n_orig, d_in)), rng.standard_normal((n_new, d_in))]
    )
    result = hedging_degree(ctrl, extended, n_new, n_random=4, generator=_generator())
    assert result["p"] == pytest.approx(_projector_p(ctrl, extended, n_new), rel=1e-9, abs=1e-12)
    # Folding: p ignores row scales; and it is invariant under a common rotation.
    rotation = ortho_group.rvs(d_in, random_state=seed % 2**32)
    scales = rng.uniform(0.1, 10, (n_orig + n_new, 1))
    moved = hedging_degree(
        ctrl @ rotation * scales[:n_orig],
        extended @ rotation * scales,
        n_new,
        n_random=4,
        generator=_generator(),
    )
    assert moved["p"] == pytest.approx(result["p"], rel=1e-9, abs=1e-12)


def test_random_baseline_matches_expected_cosine():
    # One latent moving from e0 to e1: delta = e1 - e0 has norm sqrt 2. One random new direction
    # g in d dims gives ||P delta|| = sqrt 2 |cos(g, delta)|, with
    # E|cos| = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)) and E cos^2 = 1/d.
    d, n_random = 8, 4000
    e = torch.eye(d, dtype=torch.float64)
    extended = torch.stack([e[1], e[2]])
    result = hedging_degree(e[:1], extended, n_new=1, n_random=n_random, generator=_generator(3))
    mean_abs_cos = math.exp(gammaln(d / 2) - gammaln((d + 1) / 2)) / math.sqrt(math.pi)
    std = math.sqrt(1 / d - mean_abs_cos**2)
    assert abs(result["p_rand"] - math.sqrt(2) * mean_abs_cos) < 5 * math.sqrt(2) * std / math.sqrt(
        n_random
    )
    assert result["p"] == pytest.approx(0.0, abs=1e-12)  # e2 is orthogonal to the movement


def test_hedging_degree_refuses_bad_shapes():
    ctrl = torch.randn(4, 8)
    with pytest.raises(ValueError, match="control latents first"):
        hedging_degree(ctrl, torch.randn(7, 8), n_new=2)
    with pytest.raises(ValueError, match="n_new < d_in"):
        hedging_degree(ctrl, torch.randn(12, 8), n_new=8)
    with pytest.raises(ValueError, match="positive integer"):
        hedging_degree(ctrl, ctrl, n_new=0)


# --- components and MCC --------------------------------------------------------------------------
def test_components_in_the_feature_basis():
    directions = torch.tensor(ortho_group.rvs(5, random_state=0)[:3])
    decoder = torch.stack([2 * directions[0], directions[1] - 0.5 * directions[2]])
    components = decoder_components(decoder, directions)
    torch.testing.assert_close(
        components.raw_FN, torch.tensor([[2.0, 0, 0], [0, 1, -0.5]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        components.cosine_FN[1], torch.tensor([0, 1, -0.5], dtype=torch.float64) / math.sqrt(1.25)
    )
    encoder = encoder_components(3 * directions.T, directions)  # W_enc is (d_in, latents)
    torch.testing.assert_close(encoder.raw_FN, 3 * torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="d_in"):
        decoder_components(decoder, directions[:, :4])


def test_mcc_identity_permutation_and_sign():
    directions = torch.eye(4)
    permuted = directions[[2, 0, 3, 1]]
    for matching in ("hungarian", "greedy"):
        assert mcc(directions, directions, matching) == pytest.approx(1.0)
        assert mcc(3 * permuted, directions, matching) == pytest.approx(1.0)
        # All flipped: the best partner of every feature is an orthogonal latent.
        assert mcc(-permuted, directions, matching) == pytest.approx(0.0)
        assert mcc(-directions[:1], directions[:1], matching) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="hungarian"):
        mcc(directions, directions, "best")


def test_hungarian_and_greedy_differ_when_features_share_a_latent():
    # Both features prefer latent 0 (cos 0.8 and 0.6); latent 1 is orthogonal to both.
    directions = torch.eye(3)[:2]
    decoder = torch.tensor([[0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    assert mcc(decoder, directions, "greedy") == pytest.approx((0.8 + 0.6) / 2)
    assert mcc(decoder, directions, "hungarian") == pytest.approx((0.8 + 0.0) / 2)


# --- reconstruction and sparsity -----------------------------------------------------------------
def test_explained_variance_known_values():
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0], [2.0, 4.0]])
    assert explained_variance(x, x) == pytest.approx(1.0)
    assert explained_variance(x, x.mean(dim=0).expand_as(x)) == pytest.approx(0.0)
    # total variance about the mean: 2 + 8 = 10; squared error of x_hat = 0 is 34
    assert explained_variance(x, torch.zeros_like(x)) == pytest.approx(1 - 34 / 10)
    with pytest.raises(ValueError, match="zero variance"):
        explained_variance(torch.ones(3, 2), torch.ones(3, 2))


def test_l0_and_dead_fraction():
    codes = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.5, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 3.0]])
    assert l0(codes) == pytest.approx(5 / 3)
    assert dead_fraction(codes) == pytest.approx(1 / 4)
    assert dead_fraction(np.array([3, 0, 0, 10])) == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="codes"):
        dead_fraction(torch.zeros(2, 2, 2))


# --- absorption ----------------------------------------------------------------------------------
def test_absorption_fraction_and_encoder_sign():
    # Parent fires in all 10 samples, the child in the first 3. Latent 0 (the parent's) is off
    # exactly when the child fires and latent 1 (the child's) is on: absorption in 3 of 10.
    n = 10
    parent = torch.ones(n, dtype=torch.bool)
    child = torch.arange(n) < 3
    codes = torch.zeros(n, 3)
    codes[~child, 0] = 1.0
    codes[child, 1] = 1.5
    codes[::2, 2] = 0.3  # an unrelated latent
    assert best_matching_latent(codes, parent) == 0
    assert best_matching_latent(codes, child) == 1
    directions = torch.eye(4)[:2]
    W_enc = torch.zeros(4, 3)
    W_enc[:, 0] = directions[0] - 0.5 * directions[1]
    W_enc[:, 1] = directions[1]
    stats = absorption_statistics(codes, parent, child[:, None], W_enc, directions[1:])
    assert stats["fraction"] == pytest.approx(0.3)
    assert stats["parent_latent"] == 0 and stats["child_latents"] == [1]
    assert stats["encoder_on_children"] == pytest.approx([-0.5])
    hedged = absorption_statistics(
        codes, parent, child[:, None], parent_latent=2, child_latents=[1]
    )
    assert hedged["fraction"] == pytest.approx(0.1)  # samples 0 and 2 have latent 2 on
