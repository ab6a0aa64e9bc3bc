"""Named predictions agree with the exact optima they summarise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theory import predictions
from theory.features import two_feature
from theory.optimum import global_optimum
from theory.sae import SAESpec


@given(
    p=st.floats(0.05, 0.5),
    a=st.floats(0.05, 0.95),
    b=st.floats(0.0, 0.3),
)
@settings(max_examples=25, deadline=None)
def test_width1_ratio_matches_exact_optimum_in_its_region(p, a, b):
    model = two_feature(p, a, b)
    best = global_optimum(model, SAESpec(1, 0.0))
    patterns = ["".join(map(str, pat)) for pat in model.patterns]
    fires = {pat for pat, on in zip(patterns, best.active[0], strict=True) if on}
    if fires != {"10", "11"}:
        return  # another region wins here; the prediction is conditional on its region
    decoder = best.params.decoder[0]
    ratio = predictions.width1_decoder_ratio(("10", "11"))
    assert ratio(p, a, b) == pytest.approx(decoder[1] / decoder[0], abs=1e-8)
    loss = predictions.width1_expected_loss(("10", "11"))
    assert loss(p, a, b) == pytest.approx(best.loss, abs=1e-9)
    component = predictions.width1_hedging_component(("10", "11"))
    assert component(p, a, b) == pytest.approx(decoder[1] * np.sign(decoder[0]), abs=1e-8)


def test_hierarchy_region_is_reached():
    """Guards the property test above from passing vacuously: on the paper's hierarchy the
    parent region wins, and there the hedging component is positive."""
    best = global_optimum(two_feature(0.25, 0.2, 0.0), SAESpec(1, 0.0))
    assert best.active[0] == (False, True, True)
    assert predictions.width1_hedging_component()(0.25, 0.2, 0.0) > 0.2


def test_tracking_coefficients():
    assert predictions.tracking_hedging_coefficient(False)(0.25, 0.2, 0.1) == pytest.approx(0.2)
    assert predictions.tracking_hedging_coefficient(True)(0.25, 0.2, 0.1) == pytest.approx(0.1)


def test_vectorised_and_broadcast():
    ratio = predictions.width1_decoder_ratio()
    grid = np.random.default_rng(0).uniform(0.05, 0.5, size=(3, 1000))
    values = ratio(*grid)
    assert values.shape == (1000,)
    assert values[17] == pytest.approx(float(ratio(*grid[:, 17])))
    assert ratio(0.25, [0.1, 0.2], 0.0).shape == (2,)


def test_wrong_arity_is_refused():
    with pytest.raises(ValueError, match=r"takes 3 values \(p, a, b\)"):
        predictions.width1_decoder_ratio()(0.25, 0.2)


def test_unknown_region_pattern_is_refused():
    with pytest.raises(ValueError, match="'12'"):
        predictions.width1_decoder_ratio(("10", "12"))


def test_catalogue_latex():
    names = [p.name for p in predictions.catalogue()]
    assert len(names) == len(set(names))
    assert predictions.absorption_slope().latex == r"- P_{11} \lambda"
