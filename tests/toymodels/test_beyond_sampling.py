"""The sampler draws the generalised worlds theory integrates: random magnitudes, cosines, noise.

Monte Carlo checks of theory's moment-level predictions on toymodels samples: what a continuous
magnitude law with the same moments gives, and least squares on noisy samples.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

from theory.features import random_magnitudes, scenario, two_feature, with_cosines, with_noise
from theory.predictions import tracking_hedging_coefficient_moments, width1_decoder_ratio_noise
from toymodels.experiments.common import EmbeddedWorlds
from toymodels.sampling import orthonormal_directions, sample_activations, sample_states

N = 400_000


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_generalised_world_samples_have_theory_moments():
    """Two-point magnitudes, a cosine and per-coordinate noise: mean and second moment of the
    samples (brought back from d_in through the embedding) are theory's, noise included."""
    model = with_noise(
        with_cosines(random_magnitudes(scenario("correlated"), [0.3, 0.2], -0.5), {(0, 1): 0.4}),
        [0.1, 0.2],
    )
    embedding = orthonormal_directions(model.dim, 7, _generator(0)).double()
    x = sample_activations(model, embedding, N, _generator(1)).double() @ embedding.T
    mean = np.array(model.mean(), dtype=float).ravel()
    second = np.array(model.second_moment(), dtype=float) + np.diag([0.01, 0.04])
    # coordinates are O(1): 6 standard errors of a mean of N draws with std <= 2
    np.testing.assert_allclose(x.mean(0).numpy(), mean, atol=12 / math.sqrt(N))
    np.testing.assert_allclose((x.T @ x / N).numpy(), second, atol=30 / math.sqrt(N))


def test_tracking_coefficient_holds_for_a_continuous_law_with_the_same_moments():
    """Gaussian magnitudes (sampling-only magnitude_std, clipping negligible at 5 std) are not
    the two-point law, yet the tracking decoder only sees moments: least squares of the samples
    on the parent's activation gives a (mu_p mu_c + 0) / (mu_p^2 + sigma_p^2)."""
    p, a, b, mu, sigma = 0.3, 0.4, 0.1, (1.0, 1.5), (0.2, 0.3)
    model = two_feature(p, a, b, mu)
    gaussian = dataclasses.replace(model, magnitude_std=sigma)
    states = sample_states(gaussian, N, _generator(2)).double()
    code = states[:, 0]
    measured = float((code @ states[:, 1]) / (code @ code))
    predicted = float(tracking_hedging_coefficient_moments()(a, *mu, *sigma, 0.0))
    assert measured == pytest.approx(predicted, abs=0.01)  # MC std ~ 0.002
    assert predicted != pytest.approx(a * mu[1] / mu[0], abs=0.01)  # the variance matters


def test_noisy_least_squares_latent_is_the_noisy_covariance_eigenvector():
    """The always-firing width-1 latent at l1 = 0 is the top principal direction of the noisy
    samples (with a decoder bias: centred), as width1_decoder_ratio_noise predicts."""
    p, a, b, std = 0.3, 0.5, 0.2, (0.1, 0.3)
    model = with_noise(two_feature(p, a, b), std)
    data = EmbeddedWorlds([model], [0], d_in=5, seed=3)
    torch.manual_seed(4)
    x = (data(N).double() @ data.directions_ND.double().T).numpy()
    values, vectors = np.linalg.eigh(np.cov(x.T))
    top = vectors[:, -1]
    predicted = float(width1_decoder_ratio_noise()(p, a, b, std[0] ** 2, std[1] ** 2))
    assert top[1] / top[0] == pytest.approx(predicted, rel=0.05)
    noiseless = float(width1_decoder_ratio_noise()(p, a, b, 0, 0))
    assert abs(predicted - noiseless) > 0.2  # the noise moved it, well beyond MC error


def test_superposed_worlds_embed_their_state_coordinates():
    model = with_cosines(scenario("hierarchical"), {(0, 1): 0.6})
    data = EmbeddedWorlds([model], [0], d_in=4, seed=0)
    assert tuple(data.directions_ND.shape) == (model.dim, 4)
    with pytest.raises(ValueError, match=r"shape \(2, d_in\)"):
        sample_activations(model, torch.eye(3), 10, _generator(0))
