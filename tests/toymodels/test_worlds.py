"""Large worlds: exact marginals (copula, clusters, sparse Poisson line), hierarchy rules, the
documented cluster joint probabilities, sparse and dense outputs, config round trip."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import ndtri
from scipy.stats import multivariate_normal

from theory.config import config_from_json, config_to_json
from toymodels.worlds import LargeWorld, _group_by_sample, _IndependentFiring


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_binomial(counts: np.ndarray, n: int, p: np.ndarray) -> None:
    """Counts within 5 binomial standard deviations of n p (false alarm ~1e-6 per entry)."""
    tolerance = 5 * np.sqrt(n * p * (1 - p)) + 1
    assert np.all(np.abs(counts - n * p) <= tolerance), np.abs(counts - n * p) - tolerance


def test_paper_50_matches_the_reference_world():
    world = LargeWorld.paper_50()
    i = np.arange(50)
    np.testing.assert_allclose(world.firing_probabilities, 0.345 * (50 - i - 1) / 50 + 0.05)
    assert world.true_l0 == pytest.approx(0.05 * 50 + 0.345 * 1225 / 50)  # 10.9525
    torch.testing.assert_close(
        world.directions @ world.directions.T, torch.eye(50), atol=1e-5, rtol=0
    )
    correlation = world.root_correlation()
    np.testing.assert_allclose(np.diag(correlation), 1, atol=1e-12)
    assert np.linalg.eigvalsh(correlation).min() > 0
    assert np.abs(correlation[np.triu_indices(50, 1)]).mean() > 0.05  # really correlated


@st.composite
def small_worlds(draw):
    n_trees = draw(st.integers(0, 3))
    branching = draw(st.integers(1, 3))
    depth = draw(st.integers(1, 2))
    n_children = n_trees * sum(branching**level for level in range(1, depth + 1))
    exclusive = draw(st.booleans())
    top = 1 / branching if exclusive else 0.9
    return LargeWorld(
        n_features=n_children + draw(st.integers(max(n_trees, 1), 12)),
        d_in=draw(st.integers(4, 40)),
        seed=draw(st.integers(0, 1000)),
        firing=draw(st.sampled_from(["zipf", "linear"])),
        p_max=draw(st.floats(0.2, 0.9)),
        p_min=0.05,
        n_trees=n_trees,
        branching=branching,
        depth=depth,
        child_probability=(0.1, top),
        exclusive_children=exclusive,
        correlation=draw(st.sampled_from(["none", "random", "low_rank", "clusters"])),
        correlation_rank=draw(st.integers(1, 4)),
        cluster_size=draw(st.integers(1, 5)),
    )


@settings(max_examples=24, deadline=None, derandomize=True)  # statistical: reproducible CI
@given(world=small_worlds(), seed=st.integers(0, 2**31 - 1))
def test_marginals_are_exact_through_copula_and_hierarchy(world, seed):
    n = 20_000
    firing = world.sample_firing(n, _generator(seed)).numpy()
    _assert_binomial(firing.sum(axis=0), n, world.firing_probabilities)
    children = np.flatnonzero(world.parent_of >= 0)
    parents = world.parent_of[children]
    assert not (firing[:, children] & ~firing[:, parents]).any(), "a child fired without parent"
    if world.exclusive_children:
        for parent in np.unique(parents):
            siblings = world.children_of(parent)
            assert firing[:, siblings].sum(axis=1).max() <= 1, "exclusive siblings fired together"


@pytest.mark.parametrize("correlation", ["random", "low_rank"])
def test_joint_firing_of_roots_is_the_gaussian_copula(correlation):
    world = LargeWorld(
        n_features=6,
        d_in=8,
        seed=3,
        firing="linear",
        p_max=0.5,
        p_min=0.2,
        correlation=correlation,
        correlation_strength=(0.5, 0.9),
        correlation_rank=2,
    )
    n = 100_000
    firing = world.sample_firing(n, _generator(1)).numpy()
    correlation = world.root_correlation()
    thresholds = ndtri(world.root_probabilities)
    strongest = np.unravel_index(np.abs(correlation - np.eye(6)).argmax(), correlation.shape)
    assert abs(correlation[strongest]) > 0.3  # the world is really correlated
    for i, j in [strongest, (0, 1), (2, 5), (3, 4)]:
        rho = correlation[i, j]
        expected = multivariate_normal(cov=[[1, rho], [rho, 1]]).cdf([thresholds[i], thresholds[j]])
        _assert_binomial(np.array([(firing[:, i] & firing[:, j]).sum()]), n, np.array([expected]))


def test_cluster_pairs_fire_with_the_documented_joint_probability():
    world = LargeWorld(
        n_features=12,
        d_in=16,
        seed=2,
        firing="linear",
        p_max=0.5,
        p_min=0.1,
        correlation="clusters",
        cluster_size=3,
        correlation_strength=(0.2, 0.95),
    )
    pi, q, r, rho = world.cluster_parameters
    p = world.root_probabilities
    # The derivation, checked independently: exact marginals, probabilities, and the pairwise phi
    # correlation is the requested strength capped at sqrt(odds_min / odds_max).
    np.testing.assert_allclose(pi[np.arange(12) // 3] * q + (1 - pi[np.arange(12) // 3]) * r, p)
    assert np.all((0 <= r) & (r <= q) & (q <= 1))
    odds = (p / (1 - p)).reshape(4, 3)
    assert np.all(rho <= np.minimum(0.95, np.sqrt(odds.min(axis=1) / odds.max(axis=1))) + 1e-12)
    assert np.all(rho >= np.minimum(0.2, np.sqrt(odds.min(axis=1) / odds.max(axis=1))) - 1e-12)
    assert rho.min() > 0.15  # really correlated
    n = 200_000
    firing = world.sample_firing(n, _generator(7)).numpy()
    for i, j in [(0, 1), (0, 2), (4, 5), (9, 11), (0, 3), (2, 7), (5, 10)]:
        c = i // 3
        if c == j // 3:
            joint = pi[c] * q[i] * q[j] + (1 - pi[c]) * r[i] * r[j]
            phi = (joint - p[i] * p[j]) / np.sqrt(p[i] * (1 - p[i]) * p[j] * (1 - p[j]))
            assert phi == pytest.approx(rho[c])
        else:
            joint = p[i] * p[j]
        _assert_binomial(np.array([(firing[:, i] & firing[:, j]).sum()]), n, np.array([joint]))


def test_cluster_with_a_certain_root_stays_independent():
    world = LargeWorld(n_features=8, d_in=8, p_max=1.0, correlation="clusters", cluster_size=4)
    pi, q, r, rho = world.cluster_parameters
    assert rho[0] == 0 and pi[0] == 0 and rho[1] > 0
    np.testing.assert_allclose(r[:4], world.root_probabilities[:4])
    assert world.sample_firing(1000, _generator())[:, 0].all()


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=4),
    n=st.integers(1, 6),
    seed=st.integers(0, 1000),
)
def test_counting_merge_groups_blocks_by_sample(sizes, n, seed):
    generator = _generator(seed)
    blocks = [
        (
            torch.randint(n, (size,), generator=generator).sort().values,
            torch.randint(100, (size,), generator=generator),
        )
        for size in sizes
    ]
    offsets, features = _group_by_sample(blocks, n)
    for sample in range(n):
        expected = torch.cat([f[s == sample] for s, f in blocks])  # block after block
        assert torch.equal(features[offsets[sample] : offsets[sample + 1]], expected)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    p=st.lists(
        st.sampled_from([0.0, 1e-5, 1e-3, 0.05, 0.3, 0.9, 1.0]) | st.floats(0, 1),
        min_size=1,
        max_size=40,
    ),
    seed=st.integers(0, 1000),
)
def test_sparse_independent_firing_is_exact(p, seed):
    """Poisson line + guide table, over spreads of rates (zeros, certain items, tiny rates)."""
    n, p = 4000, np.array(p)
    blocks = _IndependentFiring(p).sample(n, _generator(seed))
    samples = torch.cat([s for s, _ in blocks] + [torch.zeros(0, dtype=torch.long)])
    items = torch.cat([i for _, i in blocks] + [torch.zeros(0, dtype=torch.long)])
    for block_samples, _ in blocks:
        assert torch.all(block_samples.diff() >= 0)  # sorted by sample
    keys = samples * len(p) + items
    assert len(torch.unique(keys)) == len(keys)  # each firing once
    _assert_binomial(np.bincount(items.numpy(), minlength=len(p)), n, p)


def test_children_fire_with_their_conditional_probability():
    world = LargeWorld(
        n_features=20,
        d_in=30,
        n_trees=2,
        branching=3,
        depth=1,
        exclusive_children=True,
        child_probability=(0.1, 0.3),
        seed=4,
    )
    n = 50_000
    firing = world.sample_firing(n, _generator(2)).numpy()
    children_index = np.flatnonzero(world.parent_of >= 0)
    assert children_index.tolist() == list(range(14, 20))  # 14 roots, then 2 x 3 children
    assert world.children_of(1).tolist() == [17, 18, 19]
    parent_fires = firing[:, world.parent_of[children_index]]
    children = firing[:, children_index]
    counts = (children & parent_fires).sum(axis=0)
    for child in range(children.shape[1]):
        n_parent = int(parent_fires[:, child].sum())
        _assert_binomial(
            counts[child : child + 1], n_parent, world.child_probabilities[child : child + 1]
        )


def test_activations_are_magnitudes_along_directions():
    world = LargeWorld(n_features=30, d_in=40, n_trees=2, correlation="low_rank", seed=5)
    activations, firing = world.sample(500, _generator(3))
    torch.testing.assert_close(activations, firing.float() @ world.directions, atol=1e-5, rtol=0)
    noisy = LargeWorld(n_features=30, d_in=40, magnitude_mean=2.0, magnitude_std=0.3, seed=5)
    activations, firing = noisy.sample(2000, _generator(4))
    magnitudes = activations @ noisy.directions.T  # orthonormal directions recover them
    assert torch.all(magnitudes[~firing].abs() < 1e-5)
    fired = magnitudes[firing]
    assert abs(fired.mean().item() - 2.0) < 5 * 0.3 / math.sqrt(fired.numel())
    assert abs(fired.std().item() - 0.3) < 0.03


def test_sparse_independent_roots_are_exact_including_certain_ones():
    world = LargeWorld(n_features=2000, d_in=64, p_max=1.0, zipf_exponent=0.8, seed=8)
    n = 20_000
    firing = world.sample_firing(n, _generator(6)).numpy()
    assert firing[:, 0].all()  # P = 1
    _assert_binomial(firing.sum(axis=0), n, world.firing_probabilities)
    # independence: joint of the two most frequent non-certain roots is the product
    joint = np.array([(firing[:, 1] & firing[:, 2]).sum()])
    _assert_binomial(joint, n, world.firing_probabilities[1:2] * world.firing_probabilities[2:3])


def test_superposition_uses_unit_directions():
    world = LargeWorld(n_features=300, d_in=64, seed=6)
    np.testing.assert_allclose(world.directions.norm(dim=1).numpy(), 1, atol=1e-6)
    for n in (0, 1, 10):
        activations, firing = world.sample(n, _generator())
        assert activations.shape == (n, 64) and firing.shape == (n, 300)


@pytest.mark.parametrize("correlation", ["none", "clusters", "low_rank"])
def test_sparse_and_dense_outputs_agree(correlation):
    world = LargeWorld(
        n_features=300,
        d_in=64,
        n_trees=20,
        branching=3,
        depth=2,
        correlation=correlation,
        magnitude_std=0.2,
        seed=6,
    )
    n = 40_000  # more rows than one sampling chunk
    activations, codes = world.sample_sparse(n, _generator(1))
    dense_activations, firing = world.sample(n, _generator(1))
    assert torch.equal(activations, dense_activations) and torch.equal(codes.firing(), firing)
    torch.testing.assert_close(activations, codes.to_dense() @ world.directions, atol=1e-5, rtol=0)
    assert codes.offsets[0] == 0 and codes.offsets[-1] == len(codes.features)
    assert torch.all(codes.offsets.diff() >= 0)
    assert int(firing.sum()) == len(codes.features)  # no feature listed twice in a sample


def test_config_round_trip_and_determinism():
    world = LargeWorld(
        n_features=40,
        d_in=16,
        n_trees=3,
        exclusive_children=True,
        correlation="low_rank",
        magnitude_std=0.1,
        seed=9,
    )
    rebuilt = config_from_json(LargeWorld, json.loads(json.dumps(config_to_json(world))))
    assert rebuilt == world
    a, fa = world.sample(100, _generator(5))
    b, fb = rebuilt.sample(100, _generator(5))
    assert torch.equal(a, b) and torch.equal(fa, fb)
    with pytest.raises(ValueError, match=r"LargeWorld has no field\(s\) \['sparsity'\]"):
        config_from_json(LargeWorld, {**config_to_json(world), "sparsity": 3})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"firing": "uniform"}, "allowed: zipf, linear"),
        ({"p_min": 0.5, "p_max": 0.4}, "p_min <= p_max"),
        ({"n_trees": 10, "branching": 3}, "more than n_features"),
        (
            {"n_trees": 1, "exclusive_children": True, "child_probability": (0.2, 0.6)},
            "branching \\* max child probability <= 1",
        ),
        ({"correlation": "full"}, "allowed: none, random, low_rank, clusters"),
        ({"correlation": "clusters", "correlation_strength": (0.3, 1.2)}, "<= 1"),
        ({"cluster_size": 0}, "cluster_size = 0"),
        ({"correlation": "low_rank", "correlation_strength": (0.3, 1.0)}, "< 1"),
        ({"magnitude_std": -0.1}, "std >= 0"),
        ({"d_in": 0}, "must be >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_invalid_parameters_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        LargeWorld(**{"n_features": 20, "d_in": 8, **overrides})


def test_cluster_parameters_and_copula_correlation_belong_to_their_modes():
    with pytest.raises(ValueError, match="need correlation = 'clusters'"):
        _ = LargeWorld(n_features=8, d_in=8).cluster_parameters
    with pytest.raises(ValueError, match="has no copula"):
        LargeWorld(n_features=8, d_in=8, correlation="clusters").root_correlation()
