"""Hypothesis strategies for the theory tests: random feature models, SAE specs, parameters."""

from __future__ import annotations

import itertools

import numpy as np
import sympy as sp
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from theory.features import FeatureModel, from_table
from theory.sae import SAEParams, SAESpec

# Non-zero patterns get integer weights 1..20 and the all-zero pattern a third to three quarters
# of the mass (SAEs see sparse data), so every probability is >= 1/(4 * 20 * 7) and the table is
# an exact rational that sums to 1.
_MAX_WEIGHT = 20


@st.composite
def feature_models(
    draw: st.DrawFn, n_features: int = 2, with_magnitudes: bool | None = None
) -> FeatureModel:
    """A random valid model over all 2^n patterns (each with positive probability); magnitudes
    1 or, when drawn (or with_magnitudes=True), values in [0.5, 2]."""
    if n_features not in (1, 2, 3):
        raise ValueError(f"n_features must be 1, 2 or 3, got {n_features}")
    patterns = ["".join(bits) for bits in itertools.product("01", repeat=n_features)]
    weights = [draw(st.integers(1, _MAX_WEIGHT)) for _ in patterns[1:]]
    zero_weight = draw(st.integers(max(1, sum(weights) // 2), 3 * sum(weights)))
    total = zero_weight + sum(weights)
    table = {
        pattern: sp.Rational(w, total)
        for pattern, w in zip(patterns, [zero_weight, *weights], strict=True)
    }
    if with_magnitudes is None:
        with_magnitudes = draw(st.booleans())
    magnitudes = None
    if with_magnitudes:
        hundredths = st.integers(50, 200).map(lambda h: sp.Rational(h, 100))
        magnitudes = [draw(hundredths) for _ in range(n_features)]
    return from_table(table, magnitudes)


def sae_specs(widths: tuple[int, ...] = (1, 2)) -> st.SearchStrategy[SAESpec]:
    """Width from `widths`, l1 zero, small or moderate, tied or untied, decoder bias on or off."""
    l1 = st.one_of(
        st.just(0.0),
        st.sampled_from([1e-3, 5e-3, 2e-2]),
        st.sampled_from([5e-2, 1e-1, 3e-1]),
    )
    return st.builds(
        SAESpec,
        width=st.sampled_from(widths),
        l1=l1,
        tied=st.booleans(),
        decoder_bias=st.booleans(),
    )


def two_feature_scenarios() -> st.SearchStrategy[tuple[float, float, float]]:
    """(p_parent, p_child_given_parent, p_child_given_not_parent) for theory.features.two_feature,
    from independent to hierarchical to anti-correlated, on a 0.05 grid."""
    grid = st.integers(0, 20).map(lambda i: i / 20)
    return st.tuples(st.integers(1, 10).map(lambda i: i / 20), grid, grid)


@st.composite
def sae_params(
    draw: st.DrawFn, spec: SAESpec, n_features: int, batch: tuple[int, ...] = ()
) -> SAEParams:
    """Parameters of `spec` (tied: encoder == decoder; no decoder bias: zeros), entries in
    [-2, 2] so that every activation region gets visited."""
    k, n = spec.width, n_features
    entries = st.floats(-2, 2, allow_nan=False, allow_infinity=False, allow_subnormal=False)

    def block(*shape: int) -> np.ndarray:
        return draw(arrays(np.float64, (*batch, *shape), elements=entries))

    decoder = block(k, n)
    encoder = decoder.copy() if spec.tied else block(k, n)
    decoder_bias = block(n) if spec.decoder_bias else np.zeros((*batch, n))
    return SAEParams(encoder, block(k), decoder, decoder_bias)
