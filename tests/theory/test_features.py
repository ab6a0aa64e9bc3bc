"""Feature-model builders: valid tables, the marginals and joints asked for, clear errors."""

import itertools

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.theory.strategies import feature_models, two_feature_scenarios
from theory.features import (
    FeatureModel,
    from_table,
    hierarchical,
    independent,
    pairwise_correlated,
    product,
    scenario,
    two_feature,
)

FAST = settings(max_examples=25, deadline=None)
probabilities = st.integers(0, 20).map(lambda i: i / 20)


def total(model: FeatureModel) -> float:
    return float(sum(model.probabilities))


@FAST
@given(feature_models(n_features=3))
def test_random_tables_are_valid_and_marginals_are_pattern_sums(model):
    world = model.numeric()
    assert total(model) == pytest.approx(1, abs=1e-12)
    assert world.probabilities.min() > 0
    for i, j in itertools.combinations_with_replacement(range(3), 2):
        fires = world.patterns[:, i] * world.patterns[:, j]
        expected = world.probabilities @ fires
        got = model.marginal(i) if i == j else model.joint(i, j)
        assert float(got) == pytest.approx(expected, abs=1e-12)


@FAST
@given(two_feature_scenarios())
def test_two_feature_marginals_and_joint(args):
    p, given_parent, given_not = args
    model = two_feature(p, given_parent, given_not)
    assert total(model) == pytest.approx(1, abs=1e-12)
    assert float(model.marginal(0)) == pytest.approx(p, abs=1e-12)
    assert float(model.marginal(1)) == pytest.approx(
        p * given_parent + (1 - p) * given_not, abs=1e-12
    )
    assert float(model.joint(0, 1)) == pytest.approx(p * given_parent, abs=1e-12)


def test_named_scenarios_use_the_paper_probabilities():
    model = scenario("anticorrelated")
    assert model.marginal(0) == sp.Rational(1, 4)
    assert model.joint(0, 1) == sp.Rational(1, 4) * sp.Rational(1, 10)
    assert model.marginal(1) == sp.Rational(1, 40) + sp.Rational(3, 4) * sp.Rational(1, 5)


@FAST
@given(probabilities, probabilities, probabilities)
def test_pairwise_correlated_marginals_and_joint(a, b, c):
    p_i, p_j = max(a, b), min(a, b)
    p_ij = min(c, p_j)
    if p_i + p_j - p_ij > 1:
        p_ij = p_i + p_j - 1
    model = pairwise_correlated(p_i, p_j, p_ij)
    assert total(model) == pytest.approx(1, abs=1e-12)
    assert float(model.marginal(0)) == pytest.approx(p_i, abs=1e-12)
    assert float(model.marginal(1)) == pytest.approx(p_j, abs=1e-12)
    assert float(model.joint(0, 1)) == pytest.approx(p_ij, abs=1e-12)


@FAST
@given(probabilities, st.lists(probabilities, min_size=1, max_size=3), st.booleans())
def test_hierarchical_children_fire_only_with_the_parent(p, children, exclusive):
    if exclusive and sum(children) > 1:
        children = [c / (2 * sum(children)) for c in children]
    model = hierarchical(p, children, exclusive=exclusive)
    assert total(model) == pytest.approx(1, abs=1e-12)
    assert float(model.marginal(0)) == pytest.approx(p, abs=1e-12)
    for k, c in enumerate(children, start=1):
        assert float(model.marginal(k)) == pytest.approx(p * c, abs=1e-12)
        assert float(model.joint(0, k)) == pytest.approx(p * c, abs=1e-12)
    for (k, c), (m, d) in itertools.combinations(enumerate(children, start=1), 2):
        expected = 0.0 if exclusive else p * c * d
        assert float(model.joint(k, m)) == pytest.approx(expected, abs=1e-12)
    if exclusive:
        parent_alone = (1,) + (0,) * len(children)
        table = dict(zip(model.patterns, model.probabilities, strict=True))
        assert float(table.get(parent_alone, 0)) == pytest.approx(p * (1 - sum(children)))


@FAST
@given(feature_models(n_features=2), feature_models(n_features=1))
def test_product_blocks_are_independent(left, right):
    model = product(left, right)
    assert total(model) == pytest.approx(1, abs=1e-12)
    assert model.magnitudes == left.magnitudes + right.magnitudes
    assert float(model.joint(0, 1)) == pytest.approx(float(left.joint(0, 1)), abs=1e-12)
    for i in range(2):
        assert float(model.joint(i, 2)) == pytest.approx(
            float(left.marginal(i) * right.marginal(0)), abs=1e-12
        )


def test_independent_joints_are_products():
    model = independent([0.3, 0.6, 0.1], magnitudes=[1, 2, 0.5])
    assert model.joint(0, 2) == sp.Rational(3, 100)
    assert model.marginal(1) == sp.Rational(3, 5)
    np.testing.assert_allclose(model.numeric().magnitudes, [1, 2, 0.5])


def test_text_table_equals_mapping_table():
    text = from_table("00:0.6, 10:0.2, 01:0.05, 11:0.15", magnitudes=[1, 1.5])
    mapping = from_table({"00": 0.6, "10": 0.2, "01": 0.05, "11": 0.15}, magnitudes=[1, 1.5])
    assert text == mapping


INVALID = [
    (lambda: two_feature(1.5, 0.2, 0.1), r"p_parent = 3/2.*\[0, 1\]"),
    (lambda: two_feature(0.25, -0.2, 0.1), r"p_child_given_parent = -1/5"),
    (lambda: independent([0.5, 2]), r"P\(feature 1\) = 2"),
    (lambda: pairwise_correlated(0.2, 0.3, 0.25), r"P\(i and j\) = 1/4.*marginal P\(i\) = 1/5"),
    (lambda: pairwise_correlated(0.8, 0.9, 0.6), r"exceeds 1"),
    (lambda: hierarchical(0.3, [0.7, 0.6], exclusive=True), r"sum to 13/10"),
    (lambda: hierarchical(0.3, [1.2]), r"P\(child 0 \| parent\) = 6/5"),
    (lambda: from_table({"00": 0.5, "10": 0.4}), r"sum to 0\.9\b"),
    (lambda: from_table({"00": 0.5, "1x": 0.5}), r"'1x'.*0 and 1"),
    (lambda: from_table({"00": 0.5, "100": 0.5}), r"lengths \[2, 3\]"),
    (lambda: from_table({"0": 0.5, "1": 1.5}), r"P\(1\) = 3/2"),
    (lambda: from_table("00:0.5,10:half"), r"'half'"),
    (lambda: from_table("00=0.5"), r"'00=0.5'"),
    (lambda: from_table({}), r"empty"),
    (lambda: from_table({"0": 0.5, "1": 0.5}, magnitudes=[-1]), r"feature 0 is -1"),
    (lambda: from_table({"0": 0.5, "1": 0.5}, magnitudes=[1, 2]), r"2 magnitudes.*1 features"),
    (lambda: from_table({"0": float("nan"), "1": 0.5}), r"nan"),
    (lambda: scenario("nested"), r"'nested'.*hierarchical"),
    (lambda: product(), r"at least one"),
    (
        lambda: FeatureModel(((0,), (1,), (1,)), (0.5, 0.25, 0.25), (1,)),
        r"pattern.*once",
    ),
]


@pytest.mark.parametrize(("build", "message"), INVALID)
def test_invalid_input_raises_value_error_naming_the_value(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_duplicate_pattern_in_text_table_is_refused():
    with pytest.raises(ValueError, match="10"):
        from_table("00:0.5,10:0.5,10:0.5")


def test_symbolic_model_substitutes_then_becomes_numeric():
    p, c = sp.symbols("p c", positive=True)
    model = two_feature(p, c, 0)
    assert model.free_symbols == {p, c}
    assert sp.simplify(model.joint(0, 1) - p * c) == 0
    with pytest.raises(ValueError, match=r"free symbols \(c, p\)"):
        model.numeric()
    numeric = model.subs({p: 0.25, c: 0.2}).numeric()
    expected = scenario("hierarchical").numeric()
    order = [model.patterns.index(tuple(row)) for row in expected.patterns]
    np.testing.assert_allclose(numeric.probabilities[order], expected.probabilities)
    with pytest.raises(ValueError, match=r"is not a probability"):
        model.subs({p: 2, c: 0.2})


def test_symbolic_magnitudes_scale_the_states():
    m = sp.Symbol("m", positive=True)
    model = independent([0.5], magnitudes=[m])
    assert model.second_moment()[0, 0] == m**2 / 2
    np.testing.assert_allclose(model.subs({m: 3}).numeric().states.ravel(), [0, 3])
