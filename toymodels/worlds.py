"""Large toy worlds: thousands of features in superposition, too many for explicit firing states.

A LargeWorld is fully described by its JSON config (seed included); every derived array (feature
directions, probabilities, hierarchy, correlation factor) is rebuilt from it deterministically.

Features 0..R-1 are roots and fire with marginal probabilities P_i of a chosen shape:
    zipf:   P_i = p_max * (i + 1)^-zipf_exponent
    linear: P_i = p_min + (p_max - p_min) * (R - i - 1) / R   (the hedging paper's large world)
Roots are correlated through a Gaussian copula: z ~ N(0, C), root i fires when z_i < Phi^-1(P_i),
so every marginal is exact whatever C is. C is
    random:   a random matrix, each off-diagonal pair correlated with probability
              correlated_fraction, |strength| uniform in correlation_strength, positive with
              probability positive_fraction, then projected to the nearest valid correlation
              matrix (negative eigenvalues clipped, diagonal rescaled to 1);
    low_rank: C = B B^T + diag(1 - |b_i|^2), b_i = sqrt(s_i) u_i with u_i a random unit vector
              in correlation_rank dimensions and s_i uniform in correlation_strength.
The first n_trees roots head hierarchy trees (branching children per node, depth levels). A child
fires only when its parent does, with a conditional probability drawn uniformly from
child_probability; with exclusive_children at most one sibling fires (siblings own disjoint
slices of one uniform draw). Children are numbered level by level after the roots, so the
children of one parent are contiguous. Each firing feature gets magnitude
ReLU(magnitude_mean + magnitude_std * N(0, 1)). Directions are orthonormal when d_in >= n_features,
random unit vectors otherwise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from scipy.special import ndtri

from toymodels.sampling import orthonormal_directions

FIRING_SHAPES = ("zipf", "linear")
CORRELATIONS = ("none", "random", "low_rank")
_CHUNK = 16384  # rows sampled at a time


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
    d_in: int
    seed: int = 0
    firing: str = "zipf"
    p_max: float = 0.4
    p_min: float = 0.05
    zipf_exponent: float = 1.0
    n_trees: int = 0
    branching: int = 2
    depth: int = 1
    child_probability: tuple[float, float] = (0.2, 0.4)
    exclusive_children: bool = False
    correlation: str = "none"
    correlation_strength: tuple[float, float] = (0.3, 0.9)
    correlated_fraction: float = 1.0
    positive_fraction: float = 0.5
    correlation_rank: int = 8
    magnitude_mean: float = 1.0
    magnitude_std: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_features", "d_in", "n_trees", "branching", "depth", "correlation_rank"):
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
        top = 1 if self.correlation == "random" else 1 - 1e-9
        if not 0 <= lo <= hi <= top:
            raise ValueError(
                f"correlation_strength = {self.correlation_strength}; need 0 <= lo <= hi "
                f"{'<= 1' if self.correlation == 'random' else '< 1'}"
            )
        for name in ("correlated_fraction", "positive_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} = {getattr(self, name)}; allowed values are in [0, 1]")
        if self.correlation_rank < 1:
            raise ValueError(f"correlation_rank = {self.correlation_rank}; it must be >= 1")
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
            n_features=50, d_in=100, seed=seed, firing="linear", p_max=0.395, p_min=0.05,
            correlation="random", correlation_strength=(0.3, 0.9), magnitude_std=0.15,
        )

    def to_config(self) -> dict:
        """JSON-serialisable config; from_config(to_config()) rebuilds the same world."""
        config = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}

    @classmethod
    def from_config(cls, config: dict) -> LargeWorld:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - set(fields))
        if unknown:
            raise ValueError(f"unknown LargeWorld config keys {unknown}; allowed: {sorted(fields)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        return cls(**values)

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
        the root correlation matrix is B B^T + diag(idiosyncratic^2), unit diagonal."""
        if self.correlation == "none":
            return None
        rng = np.random.default_rng([self.seed, 2])
        lo, hi = self.correlation_strength
        if self.correlation == "low_rank":
            units_RK = rng.standard_normal((self.n_roots, self.correlation_rank))
            units_RK /= np.linalg.norm(units_RK, axis=1, keepdims=True)
            strengths_R = rng.uniform(lo, hi, self.n_roots)
            factor_RK = units_RK * np.sqrt(strengths_R)[:, None]
            idiosyncratic_R = np.sqrt(1 - strengths_R)
        else:
            factor_RK = _random_correlation_factor(
                self.n_roots, lo, hi, self.correlated_fraction, self.positive_fraction, rng
            )
            idiosyncratic_R = np.zeros(self.n_roots)
        return (torch.as_tensor(factor_RK, dtype=torch.float32),
                torch.as_tensor(idiosyncratic_R, dtype=torch.float32))

    def root_correlation(self) -> np.ndarray:
        """(R, R) correlation matrix of the copula's Gaussian (identity without correlation)."""
        if self.correlation_factor is None:
            return np.eye(self.n_roots)
        factor_RK, idiosyncratic_R = (t.double().numpy() for t in self.correlation_factor)
        return factor_RK @ factor_RK.T + np.diag(idiosyncratic_R**2)

    # --- sampling --------------------------------------------------------------------------------
    def sample_firing(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, n_features) boolean firing."""
        return self.sample(n, generator, activations=False)[1]

    def sample(
        self, n: int, generator: torch.Generator | None = None, activations: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(activations (n, d_in), firing (n, n_features) bool); activations=False skips them
        (an empty (n, 0) tensor takes their place)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"number of samples must be an integer >= 0, got {n!r}")
        firing_NF = torch.zeros(n, self.n_features, dtype=torch.bool)
        activations_ND = torch.empty(n, self.d_in if activations else 0)
        # Chunks of rows keep the working set (copula Gaussians, events) small and cache-friendly.
        for start in range(0, n, _CHUNK):
            stop = min(start + _CHUNK, n)
            event_blocks = self._sample_events(stop - start, generator, firing_NF[start:stop])
            if activations:
                chunk_ND = activations_ND[start:stop]
                chunk_ND.copy_(self._embed(*event_blocks[0], stop - start, generator))
                for samples_E, features_E in event_blocks[1:]:
                    chunk_ND += self._embed(samples_E, features_E, stop - start, generator)
        return activations_ND, firing_NF

    def _embed(
        self, samples_E: torch.Tensor, features_E: torch.Tensor, n: int,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """(n, d_in) sum over events of magnitude * direction; events sorted by sample."""
        magnitudes_E = torch.full((len(features_E),), float(self.magnitude_mean))
        if self.magnitude_std > 0:
            noise_E = torch.randn(len(features_E), generator=generator)
            magnitudes_E = torch.relu(magnitudes_E + self.magnitude_std * noise_E)
        offsets_N = torch.zeros(n, dtype=torch.long)
        torch.cumsum(torch.bincount(samples_E, minlength=n)[:-1], dim=0, out=offsets_N[1:])
        return torch.nn.functional.embedding_bag(
            features_E, self.directions, offsets_N, mode="sum", per_sample_weights=magnitudes_E
        )

    def _sample_events(
        self, n: int, generator: torch.Generator | None, firing_NF: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fill the zeroed firing_NF (n, n_features) and return its events as blocks of
        (sample, feature) index pairs, each sorted by sample: roots first, then one block per
        hierarchy level."""
        samples_E, features_E = self._sample_roots(n, generator, out=firing_NF[:, : self.n_roots])
        event_blocks = [(samples_E, features_E)]
        conditional_C = torch.as_tensor(self.child_probabilities, dtype=torch.float32)
        for level in self._levels:
            # Children only need random numbers where their parent fires: the parents' events
            # (the previous block) get one draw each.
            is_parent_E = (features_E >= level.parent_start) & (
                features_E < level.parent_start + level.n_parents
            )
            samples_E, parents_E = samples_E[is_parent_E], features_E[is_parent_E]
            parents_E = parents_E - level.parent_start
            first = level.start - self.n_roots
            p_PB = conditional_C[first : level.stop - self.n_roots].view(-1, self.branching)
            p_EB = p_PB[parents_E]
            if self.exclusive_children:
                # Sibling k fires when one uniform falls in [cum_{k-1}, cum_k): at most one fires.
                uniform_E1 = torch.rand(len(parents_E), 1, generator=generator)
                chosen_E = (uniform_E1 >= p_EB.cumsum(dim=1)).sum(dim=1)
                keep_E = chosen_E < self.branching
                samples_E = samples_E[keep_E]
                children_E = parents_E[keep_E] * self.branching + chosen_E[keep_E]
            else:
                events_E, siblings_E = (
                    torch.rand(p_EB.shape, generator=generator) < p_EB
                ).nonzero(as_tuple=True)
                samples_E = samples_E[events_E]
                children_E = parents_E[events_E] * self.branching + siblings_E
            features_E = children_E + level.start
            firing_NF[samples_E, features_E] = True
            event_blocks.append((samples_E, features_E))
        return event_blocks

    def _sample_roots(
        self, n: int, generator: torch.Generator | None, out: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Root firing into the zeroed `out` (n, R); returns its (sample, root) events sorted by
        sample. Correlated roots: the copula Gaussian below each root's threshold."""
        if self.correlation_factor is None:
            return self._sample_independent_roots(n, generator, out)
        loadings_RK, thresholds_R = self._copula_in_noise_units
        w_NK = torch.randn(n, loadings_RK.shape[1], generator=generator)
        if self.correlation == "low_rank":
            e_NR = torch.randn(n, self.n_roots, generator=generator)
            torch.lt(e_NR.addmm_(w_NK, loadings_RK.T), thresholds_R, out=out)
        else:
            torch.lt(w_NK @ loadings_RK.T, thresholds_R, out=out)
        return out.nonzero(as_tuple=True)

    def _sample_independent_roots(
        self, n: int, generator: torch.Generator | None, out: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Independent Bernoulli(P_i) firing drawn sparsely, with work proportional to the
        number of firings rather than n * R: a Bernoulli(p) is exactly "a Poisson(-log(1 - p))
        count is >= 1", and a Poisson process over n slots is a Poisson(n lambda) number of
        points dropped uniformly on the slots. Roots with P_i = 1 fire in every sample."""
        p_R = torch.as_tensor(self.root_probabilities, dtype=torch.float64)
        certain_R = p_R >= 1
        rates_R = torch.where(certain_R, 0.0, -torch.log1p(-p_R))
        counts_R = torch.poisson(rates_R * n, generator=generator).long()
        roots_E = torch.repeat_interleave(torch.arange(self.n_roots), counts_R)
        samples_E = torch.randint(n, roots_E.shape, generator=generator)
        certain = certain_R.nonzero().flatten()
        roots_E = torch.cat([roots_E, certain.repeat(n)])
        samples_E = torch.cat([samples_E, torch.arange(n).repeat_interleave(len(certain))])
        # Several points in one slot are one firing; unique also sorts the events by sample.
        keys_E = torch.unique(samples_E * self.n_roots + roots_E)
        samples_E, roots_E = keys_E // self.n_roots, keys_E % self.n_roots
        out[samples_E, roots_E] = True
        return samples_E, roots_E

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
    n: int, lo: float, hi: float, correlated_fraction: float, positive_fraction: float,
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
    return factor / np.linalg.norm(factor, axis=1, keepdims=True)
