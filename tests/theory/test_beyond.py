"""Beyond constant orthonormal features: random magnitudes, cosines, noise, l1 > 0, absorption.

Each prediction is checked against an independent computation: moments counted by hand from the
expanded state table, the exact optimum's decoder (theory.optimum), plain numpy least squares,
or the absorption family's numeric minimiser.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from theory.closed_forms import absorption_offset, width1_region_terms
from theory.features import (
    hierarchical,
    independent,
    random_magnitudes,
    scenario,
    two_feature,
    with_cosines,
    with_noise,
)
from theory.optimum import global_optimum
from theory.predictions import (
    full_absorption_threshold,
    tracking_hedging_coefficient_moments,
    width1_decoder_ratio,
    width1_decoder_ratio_cosine,
    width1_decoder_ratio_l1,
    width1_decoder_ratio_noise,
)
from theory.sae import SAESpec, codes

FAST = settings(max_examples=15, deadline=None, derandomize=True)
twentieths = st.integers(1, 19).map(lambda i: i / 20)


@st.composite
def magnitude_laws(draw: st.DrawFn) -> tuple:
    """(p, a, b, mu_p, mu_c, sigma_p, sigma_c, rho) with 0 <= sigma < mu."""
    p, a, b = draw(twentieths), draw(twentieths), draw(st.sampled_from([0.0, 0.1, 0.3]))
    mu = [draw(st.integers(5, 20).map(lambda h: h / 10)) for _ in range(2)]
    sigma = [m * draw(st.integers(0, 9).map(lambda t: t / 10)) for m in mu]
    rho = draw(st.integers(-10, 10).map(lambda r: r / 10))
    return p, a, b, *mu, *sigma, rho


# --- random magnitudes -------------------------------------------------------------------------
@FAST
@given(magnitude_laws())
def test_two_point_law_has_the_asked_moments(law):
    p, a, b, mu_p, mu_c, sigma_p, sigma_c, rho = law
    model = random_magnitudes(two_feature(p, a, b, [mu_p, mu_c]), [sigma_p, sigma_c], rho)
    world = model.numeric()
    assert world.probabilities.sum() == pytest.approx(1, abs=1e-12)
    fire = world.patterns.astype(bool)
    for i, (mu, sigma) in enumerate([(mu_p, sigma_p), (mu_c, sigma_c)]):
        weight = world.probabilities * fire[:, i]
        m = world.codes[:, i]
        assert weight @ m / weight.sum() == pytest.approx(mu)
        assert weight @ (m - mu) ** 2 / weight.sum() == pytest.approx(sigma**2, abs=1e-12)
    both = world.probabilities * fire.all(1)
    if both.sum() > 0 and sigma_p * sigma_c > 0:
        spread = (world.codes[:, 0] - mu_p) * (world.codes[:, 1] - mu_c)
        assert both @ spread / both.sum() / (sigma_p * sigma_c) == pytest.approx(rho, abs=1e-12)
    # the firing law is untouched
    assert float(model.marginal(0)) == pytest.approx(p)
    assert float(model.joint(0, 1)) == pytest.approx(p * a)


@FAST
@given(magnitude_laws())
def test_tracking_coefficient_in_moments_is_the_least_squares_decoder(law):
    p, a, b, mu_p, mu_c, sigma_p, sigma_c, rho = law
    world = random_magnitudes(two_feature(p, a, b, [mu_p, mu_c]), [sigma_p, sigma_c], rho).numeric()
    code = world.codes[:, 0]  # the latent tracks the parent's activation exactly
    decoder = (world.probabilities * code) @ world.states / (world.probabilities @ code**2)
    predicted = tracking_hedging_coefficient_moments()(a, mu_p, mu_c, sigma_p, sigma_c, rho)
    assert decoder[1] / decoder[0] == pytest.approx(float(predicted), abs=1e-12)


def test_random_magnitude_states_are_labelled_and_refused_where_undefined():
    model = random_magnitudes(scenario("hierarchical"), [0.5, 0.5], 1.0)
    assert model.state_labels() == ["00", "10@1.5", "10@0.5", "11@1.5,1.5", "11@0.5,0.5"]
    with pytest.raises(ValueError, match="0 <= std < mean"):
        random_magnitudes(scenario("hierarchical"), [1.0, 0.5])
    with pytest.raises(ValueError, match="allowed: 0 <= correlation <= 1"):
        random_magnitudes(independent([0.5] * 3), [0.1] * 3, -0.5)
    # zero spread merges the split states back
    assert random_magnitudes(scenario("correlated"), [0, 0]).n_states == 4


# --- superposition -----------------------------------------------------------------------------
@st.composite
def grams(draw: st.DrawFn) -> np.ndarray:
    """A 3 x 3 Gram matrix of random unit vectors in 2 or 3 dimensions."""
    dim = draw(st.sampled_from([2, 3]))
    coords = np.array([[draw(st.integers(-9, 9)) for _ in range(dim)] for _ in range(3)], float)
    assume(np.linalg.norm(coords, axis=1).min() > 0.5)
    unit = coords / np.linalg.norm(coords, axis=1, keepdims=True)
    return unit @ unit.T


@FAST
@given(grams())
def test_cosine_factor_reproduces_the_gram_matrix(gram):
    pairs = {(i, j): float(gram[i, j]) for i in range(3) for j in range(i + 1, 3)}
    model = with_cosines(independent([0.3, 0.2, 0.1]), pairs)
    F = model.numeric().directions
    np.testing.assert_allclose(F @ F.T, gram, atol=1e-7)
    assert model.dim == np.linalg.matrix_rank(gram, tol=1e-7)
    # states are the firing features' directions summed
    world = model.numeric()
    np.testing.assert_allclose(world.states, world.patterns @ F, atol=1e-12)


def test_symbolic_cosine_keeps_the_parent_on_the_first_axis():
    c = sp.Symbol("c")
    model = with_cosines(scenario("hierarchical"), {(0, 1): c})
    assert model.directions == ((1, 0), (c, sp.sqrt(1 - c**2)))
    with pytest.raises(ValueError, match="eigenvalue"):
        with_cosines(independent([0.5] * 3), {(0, 1): 0.9, (0, 2): 0.9, (1, 2): -0.9})


def _feature_ratio(model, decoder_row: np.ndarray) -> float:
    """alpha_c / alpha_p of a decoder row written in the model's feature directions."""
    alpha = decoder_row @ np.linalg.pinv(model.numeric().directions)
    return float(alpha[1] / alpha[0])


REGIONS = {(False, True, True): ("10", "11"), (False, True, True, True): ("10", "01", "11")}


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    p=twentieths.filter(lambda v: v <= 0.5),
    a=twentieths,
    b=st.sampled_from([0.0, 0.05, 0.2]),
    c=st.integers(-6, 6).map(lambda i: i / 10),
)
def test_cosine_ratio_is_the_exact_optimum_decoder(p, a, b, c):
    model = with_cosines(two_feature(p, a, b), {(0, 1): c})
    optimum = global_optimum(model, SAESpec(1, 0))
    region = REGIONS.get(optimum.active[0])
    assume(region is not None)
    predicted = width1_decoder_ratio_cosine(region)(p, a, b, c)
    assert _feature_ratio(model, optimum.params.decoder[0]) == pytest.approx(
        float(predicted), rel=1e-6, abs=1e-9
    )


def test_cosine_ratio_is_the_orthonormal_ratio_at_zero_cosine():
    args = (0.3, 0.4, 0.1)
    assert width1_decoder_ratio_cosine()(*args, 0.0) == pytest.approx(
        float(width1_decoder_ratio(("10", "11"))(*args))
    )


# --- additive noise ----------------------------------------------------------------------------
@FAST
@given(
    p=twentieths,
    a=twentieths,
    b=twentieths,
    v=st.tuples(twentieths, twentieths),
    bias=st.booleans(),
)
def test_noise_ratio_is_least_squares_on_the_noisy_second_moment(p, a, b, v, bias):
    """Independent computation: the top eigenvector of the noisy inputs' (centred) second moment,
    built with numpy from the states."""
    world = two_feature(p, a, b).numeric()
    X, prob = world.states, world.probabilities
    second = X.T @ (prob[:, None] * X)
    if bias:
        second -= np.outer(prob @ X, prob @ X)
    vals, vecs = np.linalg.eigh(second + np.diag(v))
    assume(vals[1] - vals[0] > 1e-6)
    top = vecs[:, 1]
    assert width1_decoder_ratio_noise(bias)(p, a, b, *v) == pytest.approx(top[1] / top[0])
    # and width1_region_terms with noise gives the same matrix for the always-firing latent
    terms = width1_region_terms(world, [True] * len(prob), 0, bias, np.diag(v))
    expected = second + np.diag(v) if bias else second + np.diag(v)
    np.testing.assert_allclose(terms.H, expected, atol=1e-12)


def test_isotropic_noise_moves_no_direction():
    ratio = width1_decoder_ratio_noise()
    assert ratio(0.25, 0.2, 0.1, 0.3, 0.3) == pytest.approx(float(ratio(0.25, 0.2, 0.1, 0, 0)))
    assert ratio(0.25, 0.2, 0.1, 0, 0.05) > ratio(0.25, 0.2, 0.1, 0, 0)  # toward the child


def test_noisy_worlds_are_refused_by_the_exact_loss():
    from theory.numeric import numeric_optimum

    noisy = with_noise(scenario("correlated"), 0.1)
    with pytest.raises(ValueError, match="additive noise"):
        numeric_optimum(noisy, SAESpec(1))
    assert noisy.noiseless().noise_std is None


# --- l1 > 0: the secular root ------------------------------------------------------------------
@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    p=twentieths.filter(lambda v: v <= 0.5),
    a=twentieths,
    b=st.sampled_from([0.0, 0.05, 0.2]),
    l1=st.sampled_from([1e-3, 2e-2, 5e-2, 1e-1, 2e-1]),
    bias=st.booleans(),
)
def test_secular_root_gives_the_exact_optimum_decoder_at_positive_l1(p, a, b, l1, bias):
    model = two_feature(p, a, b)
    optimum = global_optimum(model, SAESpec(1, l1, decoder_bias=bias))
    region = REGIONS.get(optimum.active[0])
    assume(region is not None)
    # the closed form is the region's interior stationary point: the optimum must not sit on
    # the region's boundary (a state it leaves out exactly at its threshold)
    pre = (model.numeric().states - optimum.params.decoder_bias) @ optimum.params.encoder[0]
    off = ~np.array(optimum.active[0])
    assume(((pre + optimum.params.encoder_bias[0])[off] < -1e-7).all())
    predicted = float(width1_decoder_ratio_l1(region, bias)(p, a, b, l1))
    decoder = optimum.params.decoder[0]
    assert decoder[1] / decoder[0] == pytest.approx(predicted, rel=1e-6, abs=1e-9)


def test_secular_root_tends_to_the_eigenvector_as_l1_vanishes():
    args = (0.25, 0.2, 0.1)
    assert width1_decoder_ratio_l1()(*args, 1e-7) == pytest.approx(
        float(width1_decoder_ratio(("10", "11"))(*args)), rel=1e-5
    )
    assert "largest real root below" in width1_decoder_ratio_l1().latex


# --- width 2: full absorption ------------------------------------------------------------------
@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    p10=st.integers(1, 30).map(lambda i: i / 100),
    p11=st.integers(1, 30).map(lambda i: i / 100),
    p01=st.integers(0, 10).map(lambda i: i / 200),
    factor=st.sampled_from([0.5, 0.9, 1.1, 2.0]),
)
def test_full_absorption_threshold_is_where_the_family_reaches_delta_one(p10, p11, p01, factor):
    threshold = float(full_absorption_threshold()(p11, p01))
    assume(math.isfinite(threshold) and threshold > 0)
    delta = absorption_offset(p10, p11, p01, factor * threshold)
    if factor > 1:
        assert delta == 1.0
    else:
        assert delta < 1.0
    assert full_absorption_threshold()(p11, p11) == np.inf  # too much child-only mass: never


@pytest.mark.parametrize("decoder_bias", [True, False])
def test_true_hierarchy_is_fully_absorbed_at_every_positive_l1(decoder_bias):
    """P01 = 0 gives threshold 0: the exact width-2 optimum never fires its parent latent where
    the child fires, over a grid of worlds and l1 (until the latents die)."""
    assert full_absorption_threshold()(0.05, 0.0) == 0
    for p_parent, a in [(0.25, 0.2), (0.4, 0.5), (0.1, 0.8)]:
        model = hierarchical(p_parent, [a])  # states 00, 10, 11
        for l1 in (1e-3, 3e-2, 0.3):
            optimum = global_optimum(model, SAESpec(2, l1, decoder_bias=decoder_bias))
            h = codes(model.numeric(), optimum.params) > 0  # (S, k)
            assert h[2].any(), (p_parent, a, l1)  # something fires on the child
            assert not (h[1] & h[2]).any(), (p_parent, a, l1, optimum.active)
