"""Matryoshka SAEs in theory: the level loss, its exact optimum against the numeric one, the
balance mu, and the spec's checks."""

import numpy as np
import pytest
import sympy as sp
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import check_grad

from tests.theory.strategies import feature_models, sae_params
from theory.features import FeatureModel, hierarchical, independent, scenario
from theory.matryoshka import (
    balancing_mu,
    basin_optimum,
    matryoshka_optimum,
    read_out_by_mu,
    read_out_components,
)
from theory.numeric import _Layout, loss_and_gradient, numeric_optimum
from theory.optimum import (
    _coordinates,
    _limit_variants,
    _Reduced,
    _region_solver,
    global_optimum,
)
from theory.sae import SAESpec, codes, expected_loss

# Random draws, tied included: a tied latent whose best code exists only in the limit of unbounded
# encoder gain is searched as such with the level sums (theory.optimum._Face), so no draw is
# excluded (the gap once seen here at mu = 0 without decoder bias: 0.0054276 vs 0.0054130).
FAST = settings(max_examples=6, deadline=None)


def matryoshka_specs(width: int = 2) -> st.SearchStrategy[SAESpec]:
    return st.builds(
        SAESpec,
        width=st.just(width),
        l1=st.sampled_from([0.0, 5e-3, 2e-2, 1e-1]),
        tied=st.booleans(),
        decoder_bias=st.booleans(),
        architecture=st.just("matryoshka"),
        levels=st.sampled_from([(1, width), (width,)] if width > 1 else [(1,)]),
        mu=st.sampled_from([0.0, 0.25, 0.7, 1.0, 2.0]),
        level_sparsity=st.booleans(),
    )


def direct_loss(world, params, spec: SAESpec) -> float:
    """The matryoshka loss written out from its definition, state by state (independent of
    SAESpec.loss_levels and expected_loss)."""
    levels = spec.levels or (spec.width,)
    betas = [spec.mu ** (len(levels) - 1 - j) for j in range(len(levels))]
    h_SK = codes(world, params)
    norms = np.linalg.norm(params.decoder, axis=1)
    total = 0.0
    for p, x, h in zip(world.probabilities, world.states, h_SK, strict=True):
        for beta, m in zip(betas, levels, strict=True):
            x_hat = params.decoder_bias + h[:m] @ params.decoder[:m]
            total += p * beta * np.sum((x - x_hat) ** 2)
            if spec.level_sparsity:
                total += p * beta * spec.l1 * h[:m] @ norms[:m]
        if not spec.level_sparsity:
            total += p * spec.l1 * h @ norms
    return total


# --- the loss -----------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.sampled_from([2, 3]).flatmap(lambda n: feature_models(n_features=n)), st.data())
def test_level_loss_matches_its_definition(model, data):
    spec = data.draw(matryoshka_specs(data.draw(st.sampled_from([2, 3]))))
    world = model.numeric()
    params = data.draw(sae_params(spec, model.n_features))
    claimed = float(expected_loss(world, params, float(spec.l1), spec.loss_levels()))
    assert claimed == pytest.approx(direct_loss(world, params, spec), rel=1e-10, abs=1e-12)


@settings(max_examples=15, deadline=None)
@given(st.sampled_from([2, 3]).flatmap(lambda n: feature_models(n_features=n)), st.data())
def test_level_gradient_matches_finite_differences_away_from_kinks(model, data):
    spec = data.draw(matryoshka_specs(data.draw(st.sampled_from([2, 3]))))
    world, n = model.numeric(), model.n_features
    params = data.draw(sae_params(spec, n))
    pre = (world.states - params.decoder_bias) @ params.encoder.T + params.encoder_bias
    assume(np.abs(pre).min() > 1e-2 and np.linalg.norm(params.decoder, axis=-1).min() > 1e-2)
    layout = _Layout(spec.width, n, spec.tied, spec.decoder_bias)
    theta = layout.pack(params.encoder, params.encoder_bias, params.decoder, params.decoder_bias)
    l1, levels = float(spec.l1), spec.loss_levels()

    def loss(t: np.ndarray) -> float:
        return float(loss_and_gradient(world, layout, t, l1, levels=levels)[0])

    def grad(t: np.ndarray) -> np.ndarray:
        return loss_and_gradient(world, layout, t, l1, levels=levels)[1]

    assert loss(theta) == pytest.approx(direct_loss(world, params, spec), rel=1e-10)
    assert check_grad(loss, grad, theta, epsilon=1e-7) < 1e-5 * max(
        1.0, np.linalg.norm(grad(theta))
    )


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([2, 3]).flatmap(lambda n: feature_models(n_features=n)), st.data())
def test_region_solver_gradient_sums_the_levels(model, data):
    """The exact optimum's direction search: the envelope gradient of the region solver's
    level-summed loss (tied term included) against central differences, in the forms the
    search takes (theory.optimum._limit_variants: a tied latent on one state only in its limit
    of unbounded gain; its finite form there, which the search never takes, has a gain that
    grows without bound as an excluded state ties with its one state, and the ridge's pull on
    that gain then spoils the gradient: CI's draw, 1.9e-4 off at gain 669)."""
    spec = data.draw(matryoshka_specs(data.draw(st.sampled_from([2, 3]))))
    # at l1 = 0 a tied latent on every state can duplicate the decoder bias: the inner optimum
    # is not unique and the envelope gradient can miss (plain SAEs alike; seen 0.23 off)
    assume(spec.l1 > 0)
    world, n, k = model.numeric(), model.n_features, spec.width
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    rows = rng.normal(size=(k, n))
    # each latent fires where its direction is largest (a tied latent's direction must separate
    # its states, or it is silent and its gain term vanishes)
    along_KS = rows @ world.states.T
    cut_K = np.array([rng.choice(np.unique(a)) for a in along_KS]) - 1e-3
    active = (along_KS > cut_K[:, None]).astype(float)
    faces = data.draw(st.sampled_from(_limit_variants(world, spec, active)))
    solve = _region_solver(world, spec, active, float(spec.l1), faces=faces)
    fun = _Reduced(solve, n, faces)
    y = _coordinates(rows, faces)
    value, grad = fun(y)
    eps, scale = 1e-6, max(1.0, np.abs(grad).max())
    up, down = np.array([[fun(y + eps * e)[0], fun(y - eps * e)[0]] for e in np.eye(len(y))]).T
    # away from kinks (the tight constraints change, or a tied latent stops separating its
    # states): there the one-sided differences differ by far more than eps times the curvature
    assume(np.abs(up - 2 * value + down).max() <= 1e-9 * scale)
    # (mutations of the level terms miss by far more than this tolerance)
    assert np.abs((up - down) / (2 * eps) - grad).max() <= 1e-4 * scale


def test_plain_spec_is_one_level():
    levels = SAESpec(3, 0.1).loss_levels()
    assert levels.weight_J.tolist() == [1.0] and levels.prefix_JK.all()
    assert levels.l1_weight_K.tolist() == [1.0, 1.0, 1.0]
    paper = SAESpec(4, 0.1, architecture="matryoshka", levels=(1, 4), mu=0.25).loss_levels()
    assert paper.weight_J.tolist() == [0.25, 1.0]
    assert paper.l1_weight_K.tolist() == [1.25, 1.0, 1.0, 1.0]  # the inner latent: l1 (1 + mu)


# --- the exact optimum --------------------------------------------------------------------------
@FAST
@given(feature_models(2), matryoshka_specs(2))
def test_exact_optimum_beats_numeric_and_has_its_claimed_loss(model, spec):
    ours = global_optimum(model, spec)
    numeric = numeric_optimum(model, spec, n_starts=8)
    assert ours.loss <= numeric.loss + 1e-6
    assert ours.loss == pytest.approx(direct_loss(model.numeric(), ours.params, spec), abs=1e-9)
    if spec.tied:
        np.testing.assert_array_equal(ours.params.encoder, ours.params.decoder)


@pytest.mark.parametrize(
    "model",
    [scenario("hierarchical"), independent([0.5, 0.5], magnitudes=[1.0, 0.5])],
    ids=["hierarchical", "independent-unequal-magnitudes"],
)
def test_tied_child_latent_beside_a_parent_tilts_as_numeric_does(model):
    """Tied, no decoder bias: the inner latent leans toward the child and the outer one fires on
    the child's state alone. Every start used to lean the outer latent to the parent, and the
    search stopped 6e-3 (hierarchical, mu 1) above the numeric minimiser."""
    spec = SAESpec(2, 0.0, tied=True, decoder_bias=False, architecture="matryoshka",
                   levels=(1, 2), mu=1.0)  # fmt: skip
    ours = global_optimum(model, spec)
    assert ours.loss <= numeric_optimum(model, spec, n_starts=16).loss + 1e-6


def test_tied_pca_like_optimum_is_found_from_an_orthonormal_start():
    """CI's draw (tied, no decoder bias, l1 0, mu 2): the optimum decodes along two orthogonal
    directions; every start but the feature directions led the first local search of its region
    to a basin 0.0531 higher, that search ended the region, and the limit form's 0.1577 stood,
    1.6e-3 above the numeric minimiser's 0.15609."""
    model = FeatureModel(
        patterns=((0, 0), (0, 1), (1, 0), (1, 1)),
        probabilities=tuple(sp.Rational(*f) for f in [(1, 3), (1, 6), (5, 27), (17, 54)]),
        magnitudes=(sp.Rational(1, 2), sp.Rational(29, 20)),
    )
    spec = SAESpec(2, 0.0, tied=True, decoder_bias=False, architecture="matryoshka",
                   levels=(1, 2), mu=2.0)  # fmt: skip
    ours = global_optimum(model, spec)
    assert ours.loss <= numeric_optimum(model, spec, n_starts=8).loss + 1e-9
    assert ours.loss == pytest.approx(0.156092958605269, abs=1e-9)


@settings(max_examples=2, deadline=None)
@given(
    st.integers(1, 10).map(lambda i: i / 20),
    st.lists(st.integers(1, 19).map(lambda i: i / 20), min_size=2, max_size=2),
    st.sampled_from([0.25, 1.0]),
)
def test_exact_optimum_beats_numeric_on_three_features(p_parent, p_children, mu):
    """A parent and two children (5 states; all 8 patterns of 3 features take minutes)."""
    model = hierarchical(p_parent, p_children)
    spec = SAESpec(2, 2e-2, architecture="matryoshka", levels=(1, 2), mu=mu)
    ours = global_optimum(model, spec)
    assert ours.loss <= numeric_optimum(model, spec, n_starts=8).loss + 1e-6
    assert ours.loss == pytest.approx(direct_loss(model.numeric(), ours.params, spec), abs=1e-9)


@pytest.mark.parametrize("name", ["hierarchical", "correlated"])
def test_mu_zero_is_the_plain_sae(name):
    """beta = (0, 1) and w = (0 + 1, 1): the plain SAE's loss and optimum, found through the
    matryoshka path (ordered, per-level region lists)."""
    plain = global_optimum(scenario(name), SAESpec(2, 2e-2))
    nested = global_optimum(
        scenario(name), SAESpec(2, 2e-2, architecture="matryoshka", levels=(1, 2), mu=0.0)
    )
    assert nested.loss == pytest.approx(plain.loss, abs=1e-10)


def test_inner_latent_hedges_more_as_mu_grows():
    """On the hierarchy, more inner weight puts a larger child component in the inner latent's
    decoder (hedging), toward the width-1 SAE's."""
    children = [
        global_optimum(
            scenario("hierarchical"),
            SAESpec(2, 2e-2, architecture="matryoshka", levels=(1, 2), mu=mu),
        ).params.decoder[0, 1]
        for mu in (0.25, 1.0, 4.0)
    ]
    assert 0 < children[0] < children[1] < children[2]


def test_basin_optimum_is_the_global_one_when_the_global_lies_in_the_basin():
    spec = SAESpec(2, 2e-2, architecture="matryoshka", levels=(1, 2), mu=0.5)
    for name in ("hierarchical", "anticorrelated", "independent"):
        assert basin_optimum(scenario(name), spec).loss == pytest.approx(
            global_optimum(scenario(name), spec).loss, abs=1e-10
        )


# --- the balance --------------------------------------------------------------------------------
def test_balancing_mu_is_where_the_encoder_turns_from_absorbing_to_hedging():
    spec = SAESpec(2, 2e-2, architecture="matryoshka", levels=(1, 2))
    balance = balancing_mu(scenario("hierarchical"), spec, xtol=1e-8)
    assert 0 < balance.mu < 1
    assert abs(balance.read_out.encoder) < 1e-6
    below, above = read_out_by_mu(
        scenario("hierarchical"), spec, [balance.mu - 0.02, balance.mu + 0.02]
    )
    assert below.encoder < 0 < above.encoder  # absorption below, hedging above
    assert below.absorption > 0 and above.hedging > 0


def test_the_paper_toy_balances_near_a_quarter():
    """The hedging paper's balance-matryoshka toy (17 states: the basin optimum)."""
    world = hierarchical(0.25, [0.15] * 3 + [0.55])
    spec = SAESpec(4, 3e-2, architecture="matryoshka", levels=(1, 4), level_sparsity=True)
    assert len(world.patterns) == 17
    optimum = matryoshka_optimum(
        world, spec.__class__(**{**spec.__dict__, "mu": 0.25}), 0, (1, 2, 3)
    )
    assert read_out_components(optimum.params, (1, 2, 3)).encoder == pytest.approx(0, abs=0.01)
    balance = balancing_mu(world, spec, 0, (1, 2, 3), xtol=1e-4)
    assert 0.2 < balance.mu < 0.35


def test_unbalanceable_model_is_refused_with_the_end_values():
    spec = SAESpec(2, 2e-2, architecture="matryoshka", levels=(1, 2))
    with pytest.raises(ValueError, match="no balance in mu in \\[0.5, 1\\]"):
        balancing_mu(scenario("hierarchical"), spec, bracket=(0.5, 1.0))


# --- the spec ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"architecture": "gated"}, "unknown architecture 'gated'; allowed: relu-l1, .*matryoshka"),
        ({"levels": (1, 2)}, "levels \\[1, 2\\] need architecture matryoshka"),
        ({"architecture": "matryoshka", "levels": (1, 3)}, "increase strictly to the width 2"),
        ({"architecture": "matryoshka", "levels": (2, 1, 2)}, "increase strictly"),
        ({"architecture": "matryoshka", "mu": -0.5}, "mu must be in \\[0, inf\\]"),
    ],
)
def test_bad_matryoshka_specs_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SAESpec(2, 0.1, **kwargs)


def test_balance_needs_a_one_latent_inner_level():
    with pytest.raises(ValueError, match="first level is one latent"):
        balancing_mu(scenario("hierarchical"), SAESpec(2, 0.1))
