"""Exact expected SAE loss: numpy and sympy agree, match sampling, survive folding, broadcast."""

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.theory.strategies import feature_models, sae_params, sae_specs
from theory.features import FeatureModel, independent, scenario
from theory.sae import (
    SAEParams,
    SAESpec,
    codes,
    expected_loss,
    expected_loss_expr,
    symbolic_parameters,
)

FAST = settings(max_examples=20, deadline=None)


@st.composite
def worlds(draw, batch=()):
    """(model, spec, params) with 2 or 3 features."""
    model = draw(st.sampled_from([2, 3]).flatmap(lambda n: feature_models(n_features=n)))
    spec = draw(sae_specs())
    return model, spec, draw(sae_params(spec, model.n_features, batch))


def values_of(spec: SAESpec, n: int, params: SAEParams) -> dict[sp.Symbol, float]:
    symbols = symbolic_parameters(spec, n)
    pairs = [
        (symbols["encoder"], params.encoder),
        (symbols["encoder_bias"], params.encoder_bias),
        (symbols["decoder"], params.decoder),
        (symbols["decoder_bias"], params.decoder_bias),
    ]
    return {
        s: float(v)
        for matrix, array in pairs
        for s, v in zip(matrix, np.ravel(array), strict=True)
        if isinstance(s, sp.Symbol)
    }


@FAST
@given(worlds())
def test_numpy_loss_equals_sympy_expression(case):
    model, spec, params = case
    exact = expected_loss_expr(model, spec).xreplace(values_of(spec, model.n_features, params))
    got = expected_loss(model.numeric(), params, float(spec.l1))
    assert got == pytest.approx(float(exact), rel=1e-10, abs=1e-12)


@FAST
@given(worlds())
def test_region_expression_equals_loss_in_its_own_region(case):
    model, spec, params = case
    world = model.numeric()
    active = (codes(world, params) > 0).T.tolist()
    region = expected_loss_expr(model, spec, active=active)
    exact = region.xreplace(values_of(spec, model.n_features, params))
    got = expected_loss(world, params, float(spec.l1))
    assert got == pytest.approx(float(exact), rel=1e-10, abs=1e-12)


def monte_carlo_loss(model: FeatureModel, params: SAEParams, l1: float, n_samples: int, seed: int):
    """Mean and standard error of the loss on sampled inputs in a 5-d ambient space whose
    feature directions are a random orthonormal set (the exact loss works in the feature basis)."""
    rng = np.random.default_rng(seed)
    world = model.numeric()
    n, d = model.n_features, 5
    directions_ND = np.linalg.qr(rng.normal(size=(d, n)))[0].T
    state = rng.choice(len(world.probabilities), size=n_samples, p=world.probabilities)
    x_BD = world.states[state] @ directions_ND
    enc_KD, dec_KD = params.encoder @ directions_ND, params.decoder @ directions_ND
    b_dec_D = params.decoder_bias @ directions_ND
    h_BK = np.maximum((x_BD - b_dec_D) @ enc_KD.T + params.encoder_bias, 0)
    loss_B = ((x_BD - h_BK @ dec_KD - b_dec_D) ** 2).sum(1) + l1 * h_BK @ np.linalg.norm(
        dec_KD, axis=1
    )
    return loss_B.mean(), loss_B.std() / np.sqrt(n_samples)


@FAST
@given(worlds(), st.integers(0, 2**32 - 1))
def test_exact_loss_matches_monte_carlo(case, seed):
    model, spec, params = case
    mean, stderr = monte_carlo_loss(model, params, float(spec.l1), 100_000, seed)
    exact = expected_loss(model.numeric(), params, float(spec.l1))
    assert abs(exact - mean) <= 6 * stderr + 1e-12


def test_monte_carlo_check_sees_a_wrong_loss():
    """The sampled estimate is sharp enough to tell a small change in a probability."""
    params = SAEParams(
        np.array([[1.0, 0.3]]), np.array([-0.2]), np.array([[0.9, 0.4]]), np.zeros(2)
    )
    mean, stderr = monte_carlo_loss(scenario("correlated"), params, 0.1, 100_000, seed=1)
    shifted = expected_loss(scenario("correlated", p_parent=0.3).numeric(), params, 0.1)
    assert abs(shifted - mean) > 6 * stderr


@FAST
@given(worlds())
def test_folding_keeps_the_loss_and_gives_unit_decoder_rows(case):
    model, spec, params = case
    world, l1 = model.numeric(), float(spec.l1)
    folded = params.folded()
    assert expected_loss(world, folded, l1) == pytest.approx(
        expected_loss(world, params, l1), rel=1e-9, abs=1e-12
    )
    norms = np.linalg.norm(folded.decoder, axis=-1)
    alive = np.linalg.norm(params.decoder, axis=-1) > 0
    np.testing.assert_allclose(norms[alive], 1.0)


@FAST
@given(worlds(batch=(2, 3)))
def test_batch_axes_give_one_loss_per_parameter_set(case):
    model, spec, params = case
    world, l1 = model.numeric(), float(spec.l1)
    batched = expected_loss(world, params, l1)
    assert batched.shape == (2, 3)
    for i, j in np.ndindex(2, 3):
        one = SAEParams(
            params.encoder[i, j],
            params.encoder_bias[i, j],
            params.decoder[i, j],
            params.decoder_bias[i, j],
        )
        assert batched[i, j] == pytest.approx(expected_loss(world, one, l1), rel=1e-12)


def test_shared_decoder_bias_broadcasts_against_batched_weights():
    world = independent([0.3, 0.6]).numeric()
    rng = np.random.default_rng(0)
    encoder, decoder = rng.normal(size=(4, 1, 2)), rng.normal(size=(4, 1, 2))
    encoder_bias, decoder_bias = rng.normal(size=(4, 1)), rng.normal(size=2)
    batched = expected_loss(world, SAEParams(encoder, encoder_bias, decoder, decoder_bias), 0.1)
    one_by_one = [
        expected_loss(world, SAEParams(encoder[b], encoder_bias[b], decoder[b], decoder_bias), 0.1)
        for b in range(4)
    ]
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-12)


def test_perfect_reconstruction_costs_only_the_l1_term():
    model = scenario("correlated")
    identity = SAEParams(np.eye(2), np.zeros(2), np.eye(2), np.zeros(2))
    expected_l0 = float(model.marginal(0) + model.marginal(1))
    assert expected_loss(model.numeric(), identity, 0.0) == pytest.approx(0.0, abs=1e-15)
    assert expected_loss(model.numeric(), identity, 0.1) == pytest.approx(0.1 * expected_l0)


def test_loss_expression_refuses_magnitude_noise():
    model = independent([0.5], magnitude_std=[0.1])
    with pytest.raises(ValueError, match="magnitude noise"):
        expected_loss_expr(model, SAESpec(1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"width": 0}, "width must be a positive integer, got 0"), ({"width": 1, "l1": -0.5}, "-0.5")],
)
def test_invalid_spec_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SAESpec(**kwargs)
