"""Sampling theory's feature models: the toy data every experiment trains on.

The sampler draws from the very object theory integrates over (theory.features.FeatureModel or
its NumericFeatureModel view): a categorical draw over the explicit firing states (random
magnitudes that theory integrates exactly are states of their own), then the magnitudes (with
optional Gaussian noise, clipped at zero by a ReLU), the model's feature directions into its d
state coordinates (superposition), its additive Gaussian noise there, and finally an embedding
of the d state coordinates into d_in dimensions.
"""

from __future__ import annotations

import torch

from theory.config import require_positive_int
from theory.features import FeatureModel, NumericFeatureModel


def _numeric(world: FeatureModel | NumericFeatureModel) -> NumericFeatureModel:
    if isinstance(world, FeatureModel):
        return world.numeric()
    if isinstance(world, NumericFeatureModel):
        return world
    raise ValueError(
        f"world must be a FeatureModel or NumericFeatureModel, got {type(world).__name__}"
    )


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"number of samples must be an integer >= 0, got {n!r}")


def orthonormal_directions(
    n_features: int, d_in: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(n_features, d_in) rows that are orthonormal and uniformly (Haar) random.

    QR of a Gaussian matrix, with the signs of R's diagonal moved into Q so the basis is Haar
    distributed and does not depend on the QR implementation's sign convention.
    """
    require_positive_int("n_features", n_features)
    require_positive_int("d_in", d_in)
    if d_in < n_features:
        raise ValueError(
            f"{n_features} orthonormal directions need d_in >= n_features, got d_in = {d_in}"
        )
    gaussian_DN = torch.randn(d_in, n_features, generator=generator, dtype=torch.float64)
    q_DN, r_NN = torch.linalg.qr(gaussian_DN)
    signs_N = torch.sign(torch.diagonal(r_NN))
    signs_N[signs_N == 0] = 1.0
    return (q_DN * signs_N).T.contiguous().to(torch.float32)


def sample_state_indices(
    world: FeatureModel | NumericFeatureModel, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(n,) indices into the model's states, state s drawn with its probability."""
    _check_count(n)
    model = _numeric(world)
    device = generator.device if generator is not None else torch.device("cpu")
    probabilities_S = torch.as_tensor(model.probabilities, dtype=torch.float64, device=device)
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    return torch.multinomial(probabilities_S, n, replacement=True, generator=generator)


def sample_states(
    world: FeatureModel | NumericFeatureModel,
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(n, n_features) features' activations s_i m_i of the drawn states (their magnitudes where
    those are random).

    With magnitude noise each firing feature's magnitude is ReLU(m_i + N(0, std_i)).
    Random numbers are drawn on the generator's device; the result is moved to `device`.
    """
    model = _numeric(world)
    indices_N = sample_state_indices(model, n, generator)
    draw_device = indices_N.device
    codes_SF = torch.as_tensor(model.codes, dtype=torch.float32, device=draw_device)
    states_NF = codes_SF[indices_N]
    if (model.magnitude_std > 0).any():
        patterns_SF = torch.as_tensor(model.patterns, dtype=torch.float32, device=draw_device)
        std_F = torch.as_tensor(model.magnitude_std, dtype=torch.float32, device=draw_device)
        noise_NF = torch.randn(states_NF.shape, generator=generator, device=draw_device)
        states_NF = torch.relu(states_NF + patterns_SF[indices_N] * std_F * noise_NF)
    return states_NF if device is None else states_NF.to(device)


def sample_activations(
    world: FeatureModel | NumericFeatureModel,
    directions_FD: torch.Tensor,
    n: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(n, d_in) activations x = (sum_i s_i m_i f_i + eps) E: the model's state vectors (feature
    directions f_i, orthonormal unless it has cosines) plus its additive noise eps, embedded by
    the rows of directions_FD (one per state coordinate: per feature when orthonormal)."""
    model = _numeric(world)
    if directions_FD.ndim != 2 or directions_FD.shape[0] != model.dim:
        raise ValueError(
            f"directions must have shape ({model.dim}, d_in), got {tuple(directions_FD.shape)}"
        )
    states_NF = sample_states(model, n, generator, device=directions_FD.device)
    states_ND = states_NF.to(directions_FD.dtype)
    if model.directions is not None:
        superposed_FD = torch.as_tensor(model.directions, dtype=states_ND.dtype)
        states_ND = states_ND @ superposed_FD.to(directions_FD.device)
    if model.noise_std is not None and (model.noise_std > 0).any():
        draw_device = generator.device if generator is not None else torch.device("cpu")
        std_D = torch.as_tensor(model.noise_std, dtype=states_ND.dtype, device=draw_device)
        noise_ND = torch.randn(states_ND.shape, generator=generator, device=draw_device) * std_D
        states_ND = states_ND + noise_ND.to(states_ND.device, states_ND.dtype)
    return states_ND @ directions_FD
