"""Large toy worlds: thousands of features in superposition, too many for explicit firing states.

A LargeWorld is a typed config (seed included; theory.config gives its JSON round trip); every
derived array (feature directions, probabilities, hierarchy, correlation factor) is rebuilt from
it deterministically.

Features 0..R-1 are roots and fire with marginal probabilities P_i of a chosen shape:
    zipf:   P_i = p_max * (i + 1)^-zipf_exponent
    linear: P_i = p_min + (p_max - p_min) * (R - i - 1) / R   (the hedging paper's large world)
Roots are correlated in one of two ways.
Gaussian copula (correlation "random" or "low_rank"): z ~ N(0, C), root i fires when
z_i < Phi^-1(P_i), so every marginal is exact whatever C is. C is
    random:   a random matrix, each off-diagonal pair correlated with probability
              correlated_fraction, |strength| uniform in correlation_strength, positive with
              probability positive_fraction, then projected to the nearest valid correlation
              matrix (negative eigenvalues clipped, diagonal rescaled to 1);
    low_rank: C = B B^T + diag(1 - |b_i|^2), b_i = sqrt(s_i) u_i with u_i a random unit vector
              in correlation_rank dimensions and s_i uniform in correlation_strength.
This needs n x roots Gaussians per batch (dense, exact, slow).
Shared triggers (correlation "clusters", sparse): roots are cut into consecutive clusters of
cluster_size. Cluster c is triggered in a sample with probability pi_c; given the trigger its
members fire independently with q_i, given no trigger with r_i (alpha/beta form: background
firing beta_i = r_i, plus firing with alpha_i = (q_i - r_i) / (1 - r_i) on a trigger). Then
    P(i) = pi q_i + (1 - pi) r_i,   P(i and j) = pi q_i q_j + (1 - pi) r_i r_j   (same cluster),
and roots of different clusters are independent. With q_i - r_i = k sigma_i, sigma_i^2 =
P_i (1 - P_i), k^2 = rho / (pi (1 - pi)), every pair of the cluster has firing (phi) correlation
rho, and r_i = P_i - pi k sigma_i, q_i = P_i + (1 - pi) k sigma_i keep each marginal exactly P_i.
They are probabilities iff rho <= min_i min(odds_i / o, o / odds_i), o = pi / (1 - pi), odds_i =
P_i / (1 - P_i): o = sqrt(odds_min odds_max) allows the most, rho_max = sqrt(odds_min / odds_max).
Each cluster requests rho uniform in correlation_strength and gets min(rho, rho_max)
(cluster_parameters); one-member clusters and clusters holding a certain root stay independent.

The first n_trees roots head hierarchy trees (branching children per node, depth levels). A child
fires only when its parent does, with a conditional probability drawn uniformly from
child_probability; with exclusive_children at most one sibling fires (siblings own disjoint
slices of one uniform draw). Children are numbered level by level after the roots, so the
children of one parent are contiguous. Each firing feature gets magnitude
ReLU(magnitude_mean + magnitude_std * N(0, 1)). Directions are orthonormal when d_in >= n_features,
random unit vectors otherwise.

Sampling keeps firing sparse wherever the world allows (work ~ firings, not samples x features):
independent Bernoulli firing comes from a Poisson process on a line (_IndependentFiring), children
are drawn only at their parent's events, trigger members only at trigger events; activations are a
gather-sum of direction rows (embedding_bag). Only the copula draws n x roots Gaussians.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from scipy.special import ndtri

from theory.sae import unit_rows
from toymodels.sampling import orthonormal_directions

FIRING_SHAPES = ("zipf", "linear")
CORRELATIONS = ("none", "random", "low_rank", "clusters")
_CHUNK = 16384  # rows sampled at a time
_Block = tuple[torch.Tensor, torch.Tensor]  # (samples_E sorted, features_E): events of a batch
_EMPTY = torch.zeros(0, dtype=torch.long)


@dataclass(frozen=True)
class SparseCodes:
    """Feature-basis activations of n samples in compressed rows: sample s's firing features are
    features[offsets[s] : offsets[s + 1]] (each at most once, in no particular order), with their
    magnitudes alongside."""

    offsets: torch.Tensor  # (n + 1,) long, offsets[0] = 0
    features: torch.Tensor  # (E,) long
    magnitudes: torch.Tensor  # (E,) float32
    n_features: int

    @property
    def n_samples(self) -> int:
        return len(self.offsets) - 1

    def samples(self) -> torch.Tensor:
        """(E,) the sample of each event."""
        return torch.repeat_interleave(torch.arange(self.n_samples), self.offsets.diff())

    def firing(self) -> torch.Tensor:
        """(n, n_features) dense boolean firing."""
        firing_NF = torch.zeros(self.n_samples, self.n_features, dtype=torch.bool)
        firing_NF[self.samples(), self.features] = True
        return firing_NF

    def to_dense(self) -> torch.Tensor:
        """(n, n_features) dense codes: the magnitude where a feature fires, 0 elsewhere."""
        codes_NF = torch.zeros(self.n_samples, self.n_features)
        codes_NF[self.samples(), self.features] = self.magnitudes
        return codes_NF

    @staticmethod
    def concatenate(parts: list[SparseCodes], n_features: int) -> SparseCodes:
        """The samples of several parts, in order."""
        if len(parts) == 1:
            return parts[0]
        starts = np.cumsum([0] + [len(part.features) for part in parts])
        return SparseCodes(
            torch.cat(
                [_EMPTY]
                + [
                    part.offsets[:-1] + int(start)
                    for part, start in zip(parts, starts, strict=False)
                ]
                + [torch.tensor([int(starts[-1])])]
            ),
            torch.cat([_EMPTY] + [part.features for part in parts]),
            torch.cat([torch.zeros(0)] + [part.magnitudes for part in parts]),
            n_features,
        )


@dataclass(frozen=True)
class _Level:
    """One hierarchy level: parents [parent_start, parent_start + n_parents) own the children
    [start, start + n_parents * branching), `branching` consecutive children each."""

    parent_start: int
    n_parents: int
    start: int
    stop: int


@dataclass(frozen=True)
class LargeWorld:
    """A seeded large toy world; see the module docstring for the model."""

    n_features: int
    """Features n (roots first, then the trees' descendants)."""
    d_in: int
    """Dimension of the activations (superposition when d_in < n_features)."""
    seed: int = 0
    """Seed of everything derived: directions, probabilities, hierarchy, correlations."""
    firing: str = "zipf"
    """Shape of the roots' firing probabilities: zipf | linear."""
    p_max: float = 0.4
    """Largest root firing probability."""
    p_min: float = 0.05
    """Smallest root firing probability (linear shape)."""
    zipf_exponent: float = 1.0
    """Exponent of the zipf shape."""
    n_trees: int = 0
    """Roots heading a hierarchy tree."""
    branching: int = 2
    """Children per tree node."""
    depth: int = 1
    """Levels of children below each tree's root."""
    child_probability: tuple[float, float] = (0.2, 0.4)
    """Range of P(child | parent), drawn uniformly per child."""
    exclusive_children: bool = False
    """At most one sibling fires."""
    correlation: str = "none"
    """How roots correlate: none | random | low_rank (Gaussian copula) | clusters (shared
    triggers)."""
    correlation_strength: tuple[float, float] = (0.3, 0.9)
    """Range of correlation strengths (|c| or rho), drawn uniformly."""
    correlated_fraction: float = 1.0
    """random: fraction of root pairs that are correlated."""
    positive_fraction: float = 0.5
    """random: fraction of correlated pairs with a positive sign."""
    correlation_rank: int = 8
    """low_rank: rank of the correlation factor."""
    cluster_size: int = 4
    """clusters: roots per cluster."""
    magnitude_mean: float = 1.0
    """Mean magnitude of a firing feature."""
    magnitude_std: float = 0.0
    """Standard deviation of a firing feature's magnitude (ReLU-clipped)."""

    def __post_init__(self) -> None:
        for name in (
            "n_features",
            "d_in",
            "n_trees",
            "branching",
            "depth",
            "correlation_rank",
            "cluster_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.n_features < 1 or self.d_in < 1:
            raise ValueError(
                f"n_features and d_in must be >= 1, got {self.n_features} and {self.d_in}"
            )
        if self.firing not in FIRING_SHAPES:
            raise ValueError(f"firing = {self.firing!r}; allowed: {', '.join(FIRING_SHAPES)}")
        if not 0 < self.p_min <= self.p_max <= 1:
            raise ValueError(
                f"p_min = {self.p_min}, p_max = {self.p_max}; need 0 < p_min <= p_max <= 1"
            )
        if not self.zipf_exponent > 0:
            raise ValueError(f"zipf_exponent = {self.zipf_exponent}; it must be > 0")
        if self.n_trees < 0 or self.branching < 1 or self.depth < 1:
            raise ValueError(
                f"n_trees = {self.n_trees}, branching = {self.branching}, depth = {self.depth}; "
                "need n_trees >= 0, branching >= 1, depth >= 1"
            )
        if self.n_roots < self.n_trees:
            raise ValueError(
                f"{self.n_trees} trees of branching {self.branching} and depth {self.depth} need "
                f"{self.n_trees * self._tree_size} features, more than n_features = "
                f"{self.n_features}"
            )
        lo, hi = self.child_probability
        if not 0 <= lo <= hi <= 1:
            raise ValueError(
                f"child_probability = {self.child_probability}; need 0 <= lo <= hi <= 1"
            )
        if self.exclusive_children and self.n_trees and self.branching * hi > 1:
            raise ValueError(
                f"exclusive siblings need branching * max child probability <= 1, got "
                f"{self.branching} * {hi} = {self.branching * hi}"
            )
        if self.correlation not in CORRELATIONS:
            raise ValueError(
                f"correlation = {self.correlation!r}; allowed: {', '.join(CORRELATIONS)}"
            )
        lo, hi = self.correlation_strength
        top = 1 - 1e-9 if self.correlation == "low_rank" else 1
        if not 0 <= lo <= hi <= top:
            raise ValueError(
                f"correlation_strength = {self.correlation_strength}; need 0 <= lo <= hi "
                f"{'< 1' if self.correlation == 'low_rank' else '<= 1'}"
            )
        for name in ("correlated_fraction", "positive_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} = {getattr(self, name)}; allowed values are in [0, 1]")
        if self.correlation_rank < 1:
            raise ValueError(f"correlation_rank = {self.correlation_rank}; it must be >= 1")
        if self.cluster_size < 1:
            raise ValueError(f"cluster_size = {self.cluster_size}; it must be >= 1")
        if not self.magnitude_mean > 0 or not self.magnitude_std >= 0:
            raise ValueError(
                f"magnitude_mean = {self.magnitude_mean}, magnitude_std = {self.magnitude_std}; "
                "need mean > 0 and std >= 0"
            )

    # --- configuration ---------------------------------------------------------------------------
    @classmethod
    def paper_50(cls, seed: int = 0) -> LargeWorld:
        """The hedging paper's large world: 50 features in 100 dims, linear probabilities from
        0.39 down to 0.05, random correlations with strengths in (0.3, 0.9), magnitude std 0.15
        (true L0 = 10.95)."""
        return cls(
            n_features=50,
            d_in=100,
            seed=seed,
            firing="linear",
            p_max=0.395,
            p_min=0.05,
            correlation="random",
            correlation_strength=(0.3, 0.9),
            magnitude_std=0.15,
        )

    # --- structure -------------------------------------------------------------------------------
    @property
    def _tree_size(self) -> int:
        return sum(self.branching**level for level in range(self.depth + 1))

    @property
    def n_roots(self) -> int:
        return self.n_features - self.n_trees * (self._tree_size - 1)

    @cached_property
    def directions(self) -> torch.Tensor:
        """(n_features, d_in) unit feature directions (orthonormal when d_in >= n_features)."""
        generator = torch.Generator().manual_seed(self.seed)
        if self.d_in >= self.n_features:
            return orthonormal_directions(self.n_features, self.d_in, generator)
        gaussian_FD = torch.randn(self.n_features, self.d_in, generator=generator)
        return gaussian_FD / gaussian_FD.norm(dim=1, keepdim=True)

    @cached_property
    def root_probabilities(self) -> np.ndarray:
        """(R,) marginal firing probability of each root."""
        rank = np.arange(self.n_roots)
        if self.firing == "zipf":
            return self.p_max * (rank + 1.0) ** -self.zipf_exponent
        return self.p_min + (self.p_max - self.p_min) * (self.n_roots - rank - 1) / self.n_roots

    @cached_property
    def _levels(self) -> tuple[_Level, ...]:
        levels, parent_start, n_parents, start = [], 0, self.n_trees, self.n_roots
        for _ in range(self.depth if self.n_trees else 0):
            n_children = n_parents * self.branching
            levels.append(_Level(parent_start, n_parents, start, start + n_children))
            parent_start, n_parents, start = start, n_children, start + n_children
        return tuple(levels)

    @cached_property
    def parent_of(self) -> np.ndarray:
        """(n_features,) index of each feature's parent, -1 for roots."""
        parents = np.full(self.n_features, -1)
        for level in self._levels:
            children = np.arange(level.stop - level.start)
            parents[level.start : level.stop] = level.parent_start + children // self.branching
        return parents

    def children_of(self, feature: int) -> np.ndarray:
        """Indices of a feature's children (consecutive; empty for leaves)."""
        return np.flatnonzero(self.parent_of == feature)

    @cached_property
    def child_probabilities(self) -> np.ndarray:
        """(n_features - R,) probability of each child given that its parent fires."""
        rng = np.random.default_rng([self.seed, 1])
        return rng.uniform(*self.child_probability, size=self.n_features - self.n_roots)

    @cached_property
    def firing_probabilities(self) -> np.ndarray:
        """(n_features,) exact marginal firing probabilities."""
        p = np.empty(self.n_features)
        p[: self.n_roots] = self.root_probabilities
        p[self.n_roots :] = self.child_probabilities
        for level in self._levels:  # parents' marginals are final before their children's
            p[level.start : level.stop] *= p[self.parent_of[level.start : level.stop]]
        return p

    @property
    def true_l0(self) -> float:
        """Expected number of firing features per sample."""
        return float(self.firing_probabilities.sum())

    @cached_property
    def correlation_factor(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(B_RK, idiosyncratic_R) with z = w B^T + idiosyncratic * e, w, e standard normal;
        the root correlation matrix is B B^T + diag(idiosyncratic^2), unit diagonal; None without
        a copula."""
        if self.correlation not in ("random", "low_rank"):
            return None
        rng = np.random.default_rng([self.seed, 2])
        lo, hi = self.correlation_strength
        if self.correlation == "low_rank":
            units_RK = rng.standard_normal((self.n_roots, self.correlation_rank))
            units_RK = unit_rows(units_RK)
            strengths_R = rng.uniform(lo, hi, self.n_roots)
            factor_RK = units_RK * np.sqrt(strengths_R)[:, None]
            idiosyncratic_R = np.sqrt(1 - strengths_R)
        else:
            factor_RK = _random_correlation_factor(
                self.n_roots, lo, hi, self.correlated_fraction, self.positive_fraction, rng
            )
            idiosyncratic_R = np.zeros(self.n_roots)
        return (
            torch.as_tensor(factor_RK, dtype=torch.float32),
            torch.as_tensor(idiosyncratic_R, dtype=torch.float32),
        )

    def root_correlation(self) -> np.ndarray:
        """(R, R) correlation matrix of the copula's Gaussian (identity without correlation)."""
        if self.correlation == "clusters":
            raise ValueError("correlation = 'clusters' has no copula; see cluster_parameters")
        if self.correlation_factor is None:
            return np.eye(self.n_roots)
        factor_RK, idiosyncratic_R = (t.double().numpy() for t in self.correlation_factor)
        return factor_RK @ factor_RK.T + np.diag(idiosyncratic_R**2)

    @cached_property
    def cluster_parameters(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(pi_C, q_R, r_R, rho_C) of the clusters mode (module docstring): cluster c = roots
        [c m, c m + m), m = cluster_size, is triggered with probability pi_C[c]; root i fires with
        q_R[i] in a triggered sample, r_R[i] otherwise; rho_C[c] is the firing correlation of
        every pair in cluster c (the requested strength capped at the feasible maximum)."""
        if self.correlation != "clusters":
            raise ValueError(
                f"cluster_parameters need correlation = 'clusters', not {self.correlation!r}"
            )
        p_R = self.root_probabilities
        n_clusters = -(-self.n_roots // self.cluster_size)
        rng = np.random.default_rng([self.seed, 2])
        requested_C = rng.uniform(*self.correlation_strength, n_clusters)
        cluster_R = np.arange(self.n_roots) // self.cluster_size
        starts_C = np.arange(n_clusters) * self.cluster_size
        with np.errstate(divide="ignore", invalid="ignore"):
            odds_R = p_R / (1 - p_R)  # inf for certain roots
            odds_min_C = np.minimum.reduceat(odds_R, starts_C)
            odds_max_C = np.maximum.reduceat(odds_R, starts_C)
            correlatable_C = (np.bincount(cluster_R) > 1) & np.isfinite(odds_max_C)
            rho_C = np.where(
                correlatable_C, np.minimum(requested_C, np.sqrt(odds_min_C / odds_max_C)), 0.0
            )
            o_C = np.sqrt(odds_min_C * odds_max_C)
            pi_C = np.where(rho_C > 0, o_C / (1 + o_C), 0.0)
            pi_R, rho_R = pi_C[cluster_R], rho_C[cluster_R]
            k_R = np.where(rho_R > 0, np.sqrt(rho_R / (pi_R * (1 - pi_R))), 0.0)
        sigma_R = np.sqrt(p_R * (1 - p_R))
        q_R = np.clip(p_R + (1 - pi_R) * k_R * sigma_R, 0, 1)  # clip: rounding at the bounds
        r_R = np.clip(p_R - pi_R * k_R * sigma_R, 0, 1)
        return pi_C, q_R, r_R, rho_C

    # --- sampling --------------------------------------------------------------------------------
    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> SparseCodes:
        """n samples' firing features with their magnitudes, in compressed rows."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"number of samples must be an integer >= 0, got {n!r}")
        # Chunks of rows keep the working set (events, copula Gaussians) cache-sized.
        chunks = [
            self._sample_chunk(min(_CHUNK, n - start), generator) for start in range(0, n, _CHUNK)
        ]
        return SparseCodes.concatenate(chunks, self.n_features)

    def embed(self, codes: SparseCodes) -> torch.Tensor:
        """(n, d_in) activations: per sample, the sum of magnitude * direction over its firing
        features (a gather-sum of direction rows; work ~ firings * d_in)."""
        if codes.n_features != self.n_features:
            raise ValueError(f"codes have {codes.n_features} features, the world {self.n_features}")
        return torch.nn.functional.embedding_bag(
            codes.features,
            self.directions,
            codes.offsets,
            mode="sum",
            per_sample_weights=codes.magnitudes,
            include_last_offset=True,
        )

    def sample_sparse(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, SparseCodes]:
        """(activations (n, d_in), codes): the fast path, firing kept sparse."""
        codes = self.sample_codes(n, generator)
        return self.embed(codes), codes

    def sample(
        self, n: int, generator: torch.Generator | None = None, activations: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(activations (n, d_in), firing (n, n_features) bool): sample_sparse with dense firing
        (n * n_features bytes); activations=False skips them (an empty (n, 0) tensor instead).
        The same generator state gives the same samples as sample_sparse."""
        codes = self.sample_codes(n, generator)
        activations_ND = self.embed(codes) if activations else torch.empty(n, 0)
        return activations_ND, codes.firing()

    def sample_firing(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, n_features) boolean firing."""
        return self.sample_codes(n, generator).firing()

    def _sample_chunk(self, n: int, generator: torch.Generator | None) -> SparseCodes:
        blocks = self._sample_roots(n, generator)
        if self._levels:
            # Events of each level's parents, numbered within the level: first the tree roots.
            parent_blocks = []
            for samples_E, roots_E in blocks:
                is_tree_E = (roots_E < self.n_trees).nonzero().flatten()
                parent_blocks.append((samples_E[is_tree_E], roots_E[is_tree_E]))
            for level in self._levels:
                parent_blocks = [
                    self._sample_children(level, *block, generator) for block in parent_blocks
                ]
                blocks += [
                    (samples_E, children_E + level.start) for samples_E, children_E in parent_blocks
                ]
        offsets_N1, features_E = _group_by_sample(blocks, n)
        magnitudes_E = torch.full((len(features_E),), float(self.magnitude_mean))
        if self.magnitude_std > 0:
            noise_E = torch.randn(len(features_E), generator=generator)
            magnitudes_E = torch.relu_(magnitudes_E.add_(noise_E, alpha=self.magnitude_std))
        return SparseCodes(offsets_N1, features_E, magnitudes_E, self.n_features)

    def _sample_children(
        self,
        level: _Level,
        samples_E: torch.Tensor,
        parents_E: torch.Tensor,
        generator: torch.Generator | None,
    ) -> _Block:
        """(samples, children numbered within the level) below parent events (sorted by sample,
        parents numbered within their level): children draw random numbers only there."""
        first_row = (level.start - self.n_roots) // self.branching
        if self.exclusive_children:
            # Sibling k fires when one uniform falls in [cum_{k-1}, cum_k): at most one fires.
            cumulative_EB = self._child_probabilities_PB.cumsum(dim=1)[first_row + parents_E]
            uniform_E1 = torch.rand(len(parents_E), 1, generator=generator)
            chosen_E = (uniform_E1 >= cumulative_EB).sum(dim=1)
            keep_E = (chosen_E < self.branching).nonzero().flatten()
            return samples_E[keep_E], parents_E[keep_E] * self.branching + chosen_E[keep_E]
        p_EB = self._child_probabilities_PB[first_row + parents_E]
        events_E, siblings_E = (torch.rand(p_EB.shape, generator=generator) < p_EB).nonzero(
            as_tuple=True
        )
        return samples_E[events_E], parents_E[events_E] * self.branching + siblings_E

    @cached_property
    def _child_probabilities_PB(self) -> torch.Tensor:
        """(all parents, branching) conditional probabilities of each parent's children."""
        return torch.as_tensor(self.child_probabilities, dtype=torch.float32).view(
            -1, self.branching
        )

    def _sample_roots(self, n: int, generator: torch.Generator | None) -> list[_Block]:
        """Root events as blocks sorted by sample."""
        if self.correlation in ("random", "low_rank"):
            return [self._sample_copula_roots(n, generator)]
        if self.correlation == "none":
            return self._independent_roots.sample(n, generator)
        return self._sample_cluster_roots(n, generator)

    @cached_property
    def _independent_roots(self) -> _IndependentFiring:
        return _IndependentFiring(self.root_probabilities)

    def _sample_copula_roots(self, n: int, generator: torch.Generator | None) -> _Block:
        """Dense: the copula Gaussian (n x roots) below each root's threshold."""
        loadings_RK, thresholds_R = self._copula_in_noise_units
        w_NK = torch.randn(n, loadings_RK.shape[1], generator=generator)
        if self.correlation == "low_rank":
            e_NR = torch.randn(n, self.n_roots, generator=generator)
            firing_NR = e_NR.addmm_(w_NK, loadings_RK.T) < thresholds_R
        else:
            firing_NR = w_NK @ loadings_RK.T < thresholds_R
        return firing_NR.nonzero(as_tuple=True)

    def _sample_cluster_roots(self, n: int, generator: torch.Generator | None) -> list[_Block]:
        """Background events everywhere except in triggered (sample, cluster) pairs, where the
        members are drawn afresh with their triggered probabilities."""
        triggers, background, triggered_CM = self._cluster_samplers
        n_clusters = len(triggered_CM)
        samples_T, clusters_T = triggers.sample(n, generator)[0]  # all pi < 1: one block
        blocks = background.sample(n, generator)
        if len(clusters_T):
            triggered_NC = torch.zeros(n * n_clusters, dtype=torch.bool)
            triggered_NC[samples_T * n_clusters + clusters_T] = True
            for b, (samples_E, roots_E) in enumerate(blocks):
                untriggered_E = triggered_NC[
                    samples_E * n_clusters + roots_E // self.cluster_size
                ].logical_not_()
                untriggered_E = untriggered_E.nonzero().flatten()
                blocks[b] = (samples_E[untriggered_E], roots_E[untriggered_E])
        p_TM = triggered_CM[clusters_T]
        triggers_E, members_E = (torch.rand(p_TM.shape, generator=generator) < p_TM).nonzero(
            as_tuple=True
        )
        blocks.append(
            (samples_T[triggers_E], clusters_T[triggers_E] * self.cluster_size + members_E)
        )
        return blocks

    @cached_property
    def _cluster_samplers(self) -> tuple[_IndependentFiring, _IndependentFiring, torch.Tensor]:
        """(triggers, background firing, triggered probabilities (C, cluster_size) float32
        padded with 0)."""
        trigger_C, triggered_R, background_R, _ = self.cluster_parameters
        padded = np.zeros(len(trigger_C) * self.cluster_size)
        padded[: self.n_roots] = triggered_R
        return (
            _IndependentFiring(trigger_C),
            _IndependentFiring(background_R),
            torch.as_tensor(padded, dtype=torch.float32).view(len(trigger_C), -1),
        )

    @cached_property
    def _copula_in_noise_units(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Root i fires when z_i = w . b_i + s_i e_i < Phi^-1(P_i). For low rank everything is
        divided by s_i, so the test is e_i + w . b_i / s_i < Phi^-1(P_i) / s_i (one fused addmm)."""
        factor_RK, idiosyncratic_R = self.correlation_factor
        thresholds_R = torch.as_tensor(ndtri(self.root_probabilities), dtype=torch.float32)
        if self.correlation == "low_rank":
            return factor_RK / idiosyncratic_R[:, None], thresholds_R / idiosyncratic_R
        return factor_RK, thresholds_R


def _random_correlation_factor(
    n: int,
    lo: float,
    hi: float,
    correlated_fraction: float,
    positive_fraction: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """(n, n) factor L with L L^T the nearest valid correlation matrix to a random target."""
    target = np.eye(n)
    rows, cols = np.triu_indices(n, k=1)
    strength = rng.uniform(lo, hi, rows.size)
    sign = np.where(rng.random(rows.size) < positive_fraction, 1.0, -1.0)
    mask = rng.random(rows.size) < correlated_fraction
    target[rows, cols] = target[cols, rows] = strength * sign * mask
    eigenvalues, eigenvectors = np.linalg.eigh(target)
    factor = eigenvectors * np.sqrt(np.clip(eigenvalues, 1e-6, None))
    return unit_rows(factor)


class _IndependentFiring:
    """Exact sparse sampler of independent Bernoulli(p_k) firing of K items in n samples, with work
    ~ the number of firings: returns (sample, item) blocks sorted by sample, each firing once.

    A Bernoulli(p) is "a Poisson(-log(1 - p)) count is >= 1". Sample s owns the segment
    [s L, s L + L) of a line, L = sum of the rates, and item k the piece of length rate_k inside it.
    A rate-1 Poisson process on the line (cumulative sums of Exp(1) gaps) puts independent
    Poisson(rate_k) counts of points in the pieces; item k fires in sample s when its piece holds
    a point. Points come out in order, so the points of one firing are neighbours. A point's item
    comes from a guide table (the first candidate item per cell of width L / cells) plus a few
    steps. Certain items (p = 1) fire in every sample, as a second block."""

    def __init__(self, p_K: np.ndarray) -> None:
        certain_K = p_K >= 1
        self.certain = torch.as_tensor(np.flatnonzero(certain_K))
        with np.errstate(divide="ignore"):
            rates_K = np.where(certain_K, 0.0, -np.log1p(-np.minimum(p_K, 1)))
        self.items_J = torch.as_tensor(np.flatnonzero(rates_K > 0))  # items with a piece
        bounds_J = np.cumsum(rates_K[rates_K > 0])
        self.length = float(bounds_J[-1]) if len(bounds_J) else 0.0
        cells = 8 * len(bounds_J) + 1
        self.cell_width = self.length / cells
        # guide[c] = number of bounds <= the start of cell c: a lower bound on the item index.
        self.guide = torch.as_tensor(
            np.searchsorted(bounds_J, np.arange(cells) * self.cell_width, side="right")
        )
        self.bounds = torch.as_tensor(np.append(bounds_J, np.inf))  # inf: the walk stops there

    def sample(self, n: int, generator: torch.Generator | None) -> list[_Block]:
        blocks = [self._line(n, generator)]
        if len(self.certain):
            blocks.append(
                (torch.arange(n).repeat_interleave(len(self.certain)), self.certain.repeat(n))
            )
        return blocks

    def _line(self, n: int, generator: torch.Generator | None) -> _Block:
        end = n * self.length
        if end == 0:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        points, reached = [], 0.0
        while reached < end:  # almost always once: 4 standard deviations of slack
            count = int(end - reached + 4 * math.sqrt(end - reached) + 16)
            gaps = torch.rand(count, generator=generator, dtype=torch.float64)
            points.append(gaps.neg_().log1p_().neg_().cumsum_(0).add_(reached))
            reached = float(points[-1][-1])
        x = torch.cat(points) if len(points) > 1 else points[0]
        x = x[: int(torch.searchsorted(x, end))]
        sample_starts_E = torch.floor(x / self.length)  # float64: a long tensor * float is float32
        within_E = x.sub_(sample_starts_E * self.length)
        samples_E = sample_starts_E.long().clamp_(max=n - 1)
        cells_E = (within_E / self.cell_width).long().clamp_(0, len(self.guide) - 1)
        items_E = self.guide[cells_E]
        behind = (self.bounds[items_E] <= within_E).nonzero().flatten()
        while len(behind):
            items_E[behind] += 1
            behind = behind[self.bounds[items_E[behind]] <= within_E[behind]]
        items_E.clamp_(max=len(self.items_J) - 1)  # a point rounded onto its segment's end
        keys_E = samples_E * len(self.bounds) + items_E
        first_E = torch.ones_like(keys_E, dtype=torch.bool)
        torch.ne(keys_E[1:], keys_E[:-1], out=first_E[1:])
        first_E = first_E.nonzero().flatten()
        return samples_E[first_E], self.items_J[items_E[first_E]]


def _group_by_sample(blocks: list[_Block], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(offsets (n + 1,), features (E,)): the events of several blocks, each sorted by sample,
    grouped by sample (block after block within a sample) by a counting merge, no sort."""
    counts_BN = torch.stack([torch.bincount(samples_E, minlength=n) for samples_E, _ in blocks])
    offsets_N1 = torch.zeros(n + 1, dtype=torch.long)
    torch.cumsum(counts_BN.sum(dim=0), dim=0, out=offsets_N1[1:])
    if len(blocks) == 1:
        return offsets_N1, blocks[0][1]
    # Block b's events of sample s start at in_block_BN[b, s] within the block and go to
    # merged_BN[b, s]: after all earlier samples and after sample s's events of earlier blocks.
    in_block_BN = counts_BN.cumsum(dim=1) - counts_BN
    merged_BN = offsets_N1[:-1] + counts_BN.cumsum(dim=0) - counts_BN
    shift_BN = merged_BN - in_block_BN
    features_E = torch.empty(int(offsets_N1[-1]), dtype=torch.long)
    for (samples_E, block_features_E), shift_N in zip(blocks, shift_BN, strict=True):
        destination_E = torch.arange(len(samples_E)) + shift_N[samples_E]
        features_E[destination_E] = block_features_E
    return offsets_N1, features_E
