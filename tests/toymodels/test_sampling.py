"""The sampler draws from theory's own feature models: frequencies, magnitudes, moments."""

import math

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.features import from_table, hierarchical, independent, scenario
from toymodels.sampling import (
    orthonormal_directions,
    sample_activations,
    sample_state_indices,
    sample_states,
)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_orthonormal_directions_are_orthonormal_and_seeded():
    directions = orthonormal_directions(7, 12, _generator(3))
    assert directions.shape == (7, 12)
    torch.testing.assert_close(directions @ directions.T, torch.eye(7), atol=1e-6, rtol=0)
    assert torch.equal(directions, orthonormal_directions(7, 12, _generator(3)))
    assert not torch.equal(directions, orthonormal_directions(7, 12, _generator(4)))


def test_orthonormal_directions_refuse_too_few_dimensions():
    with pytest.raises(ValueError, match="d_in >= n_features"):
        orthonormal_directions(5, 4)


@st.composite
def feature_tables(draw):
    """Random valid FeatureModels: 1-3 features, any subset of patterns, random weights."""
    n = draw(st.integers(1, 3))
    patterns = ["".join(bits) for bits in np.array(np.meshgrid(*[["0", "1"]] * n)).reshape(n, -1).T]
    chosen = draw(st.lists(st.sampled_from(patterns), min_size=1, unique=True))
    weights = draw(st.lists(st.integers(1, 20), min_size=len(chosen), max_size=len(chosen)))
    total = sum(weights)
    return from_table({p: sp.Rational(w, total) for p, w in zip(chosen, weights, strict=True)})


@settings(max_examples=25, deadline=None, derandomize=True)  # statistical: reproducible CI
@given(model=feature_tables(), seed=st.integers(0, 2**31 - 1))
def test_state_frequencies_match_model_probabilities(model, seed):
    n = 20_000
    states = sample_states(model, n, _generator(seed))
    patterns = (states != 0).to(torch.int64)
    for pattern, probability in zip(model.patterns, model.probabilities, strict=True):
        p = float(probability)
        count = int((patterns == torch.tensor(pattern)).all(dim=1).sum())
        # 5 binomial standard deviations: a false alarm has probability ~1e-6 per state.
        assert abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1, (pattern, count, n * p)


def test_state_indices_use_numeric_view_and_refuse_free_symbols():
    p = sp.Symbol("p")
    symbolic = scenario("hierarchical", p_parent=p)
    with pytest.raises(ValueError, match="free symbols"):
        sample_state_indices(symbolic, 10, _generator())
    numeric = symbolic.subs({p: 0.25}).numeric()
    indices = sample_state_indices(numeric, 1000, _generator())
    assert indices.min() >= 0 and indices.max() < numeric.probabilities.size


def test_magnitudes_scale_firing_features():
    model = hierarchical(0.5, [0.3, 0.6], magnitudes=[2, 3, 0.5])
    states = sample_states(model, 5000, _generator(1))
    values = set(np.unique(states.numpy()).tolist())
    assert values == {0.0, 2.0, 3.0, 0.5}
    # children never fire without the parent
    assert not ((states[:, 1:] > 0).any(dim=1) & (states[:, 0] == 0)).any()


def test_magnitude_noise_is_a_rectified_gaussian():
    mu, sigma, n = 0.2, 0.5, 200_000
    model = independent([1.0], magnitudes=[mu], magnitude_std=[sigma])
    magnitudes = sample_states(model, n, _generator(2))[:, 0].double()
    ratio = mu / sigma
    phi = math.exp(-(ratio**2) / 2) / math.sqrt(2 * math.pi)
    big_phi = 0.5 * math.erfc(-ratio / 2**0.5)
    expected_mean = mu * big_phi + sigma * phi
    expected_zero = 1 - big_phi
    assert abs(magnitudes.mean().item() - expected_mean) < 5 * sigma / math.sqrt(n)
    zero_rate = (magnitudes == 0).double().mean().item()
    assert abs(zero_rate - expected_zero) < 5 * math.sqrt(expected_zero / n)


def test_activation_mean_matches_theory_exact_mean():
    model = scenario("correlated")
    directions = orthonormal_directions(2, 6, _generator(5))
    n = 200_000
    x = sample_activations(model, directions, n, _generator(6)).double()
    expected = np.array(model.mean(), dtype=float).ravel() @ directions.double().numpy()
    # each coordinate is a sum of two Bernoullis times unit-bounded weights: std <= 1
    np.testing.assert_allclose(x.mean(dim=0).numpy(), expected, atol=5 / math.sqrt(n))


def test_activations_are_states_through_directions():
    model = independent([0.3, 0.6, 0.1], magnitudes=[1, 2, 3])
    directions = orthonormal_directions(3, 5, _generator(7))
    x = sample_activations(model, directions, 100, _generator(8))
    states = sample_states(model, 100, _generator(8))
    torch.testing.assert_close(x @ directions.T, states, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"shape \(3, d_in\)"):
        sample_activations(model, directions[:2], 10, _generator())


def test_sampler_refuses_bad_inputs():
    with pytest.raises(ValueError, match="integer >= 0"):
        sample_states(scenario("independent"), -1, _generator())
    with pytest.raises(ValueError, match="FeatureModel"):
        sample_states("not a model", 5, _generator())
