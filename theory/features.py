"""Feature models: n orthonormal features whose firing is a table of explicit states.

A feature model is the one definition of a toy world shared by the whole toolkit: theory integrates
over its states exactly, toymodels samples from the very same object. Feature i has unit direction
e_i (the feature basis), fires with pattern bit s_i and magnitude m_i, so x = sum_i s_i m_i e_i.
Probabilities and magnitudes may be numbers or sympy expressions (symbols allowed everywhere).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import sympy as sp

Scalar = int | float | sp.Expr


def _sym(value: Scalar, what: str) -> sp.Expr:
    """A sympy number or expression; floats become exact rationals so algebra stays exact."""
    if isinstance(value, bool) or not isinstance(value, int | float | sp.Basic | np.number):
        raise ValueError(f"{what} must be a number or sympy expression, got {value!r}")
    if isinstance(value, float | np.floating):
        if not np.isfinite(value):
            raise ValueError(f"{what} must be finite, got {value!r}")
        return sp.nsimplify(float(value), rational=True)
    return sp.sympify(value)


def _is_true(relation: sp.Basic) -> bool | None:
    """True/False when sympy can decide a relation, None when it depends on free symbols."""
    if relation in (sp.true, sp.false):
        return bool(relation)
    return None


def _check_probability(value: sp.Expr, what: str) -> None:
    if _is_true(value >= 0) is False or _is_true(value <= 1) is False:
        raise ValueError(f"{what} = {value} is not a probability: allowed values are in [0, 1]")


@dataclass(frozen=True)
class FeatureModel:
    """Firing states (binary pattern -> probability) of n features plus constant magnitudes.

    `magnitude_std` adds Gaussian noise to each magnitude (clipped at zero) when sampling; the exact
    theory needs constant magnitudes and refuses models with noise.
    """

    patterns: tuple[tuple[int, ...], ...]
    probabilities: tuple[sp.Expr, ...]
    magnitudes: tuple[sp.Expr, ...]
    magnitude_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.patterns:
            raise ValueError("a feature model needs at least one firing state")
        n = len(self.magnitudes)
        if n < 1:
            raise ValueError("a feature model needs at least one feature")
        if len(self.probabilities) != len(self.patterns):
            raise ValueError(
                f"{len(self.patterns)} patterns but {len(self.probabilities)} probabilities"
            )
        for pattern in self.patterns:
            if len(pattern) != n or any(bit not in (0, 1) for bit in pattern):
                raise ValueError(
                    f"pattern {_pattern_text(pattern)!r} must have {n} bits, each 0 or 1"
                )
        for pattern in set(self.patterns):
            if self.patterns.count(pattern) > 1:
                raise ValueError(f"pattern {_pattern_text(pattern)!r} appears more than once")
        for pattern, p in zip(self.patterns, self.probabilities, strict=True):
            _check_probability(p, f"P({_pattern_text(pattern)})")
        total = sp.nsimplify(sum(self.probabilities, sp.Integer(0)))
        if total.is_number and abs(float(total) - 1.0) > 1e-9:
            raise ValueError(f"state probabilities sum to {float(total):.6g}; they must sum to 1")
        for i, m in enumerate(self.magnitudes):
            if _is_true(m > 0) is False:
                raise ValueError(f"magnitude of feature {i} is {m}; magnitudes must be > 0")
        if self.magnitude_std is not None:
            if len(self.magnitude_std) != n or any(s < 0 for s in self.magnitude_std):
                raise ValueError(f"magnitude_std must be {n} values >= 0, got {self.magnitude_std}")

    # --- shape and symbols -------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return len(self.magnitudes)

    @property
    def n_states(self) -> int:
        return len(self.patterns)

    @property
    def free_symbols(self) -> set[sp.Symbol]:
        exprs = (*self.probabilities, *self.magnitudes)
        return set().union(*(sp.sympify(e).free_symbols for e in exprs))

    @property
    def is_numeric(self) -> bool:
        return not self.free_symbols

    @property
    def has_magnitude_noise(self) -> bool:
        return self.magnitude_std is not None and any(s > 0 for s in self.magnitude_std)

    def subs(self, values: Mapping[sp.Symbol, Scalar]) -> FeatureModel:
        """The same model with symbols replaced (values are checked like any other input)."""
        values = {k: _sym(v, str(k)) for k, v in values.items()}
        return FeatureModel(
            self.patterns,
            tuple(sp.sympify(p).subs(values) for p in self.probabilities),
            tuple(sp.sympify(m).subs(values) for m in self.magnitudes),
            self.magnitude_std,
        )

    # --- exact moments (sympy) -------------------------------------------------------------------
    def state_matrix(self) -> sp.Matrix:
        """S x n matrix whose row s is the activation x_s of state s in the feature basis."""
        return sp.Matrix(
            [
                [bit * m for bit, m in zip(pat, self.magnitudes, strict=True)]
                for pat in self.patterns
            ]
        )

    def marginal(self, i: int) -> sp.Expr:
        """P(feature i fires)."""
        return sp.simplify(sum((p for pat, p in self._items() if pat[i]), sp.Integer(0)))

    def joint(self, i: int, j: int) -> sp.Expr:
        """P(features i and j both fire)."""
        return sp.simplify(sum((p for pat, p in self._items() if pat[i] and pat[j]), sp.Integer(0)))

    def mean(self) -> sp.Matrix:
        """E[x] as an n x 1 column."""
        X = self.state_matrix()
        return sp.simplify(X.T * sp.Matrix(self.probabilities))

    def second_moment(self) -> sp.Matrix:
        """Uncentred second moment E[x x^T] (n x n)."""
        X = self.state_matrix()
        return sp.simplify(X.T * sp.diag(*self.probabilities) * X)

    def _items(self) -> Iterable[tuple[tuple[int, ...], sp.Expr]]:
        return zip(self.patterns, self.probabilities, strict=True)

    # --- numeric view ----------------------------------------------------------------------------
    def numeric(self) -> NumericFeatureModel:
        """Float arrays for fast evaluation and sampling; every symbol must have a value."""
        if not self.is_numeric:
            names = ", ".join(sorted(str(s) for s in self.free_symbols))
            raise ValueError(
                f"the feature model still has free symbols ({names}); use subs() first"
            )
        patterns = np.array(self.patterns, dtype=np.int64)
        probabilities = np.array([float(p) for p in self.probabilities])
        magnitudes = np.array([float(m) for m in self.magnitudes])
        std = (
            np.zeros(self.n_features)
            if self.magnitude_std is None
            else np.array(self.magnitude_std, dtype=float)
        )
        return NumericFeatureModel(patterns, probabilities, magnitudes, std)

    def describe(self) -> dict:
        """JSON-friendly description (patterns as strings, values as strings or floats)."""

        def val(e: sp.Expr) -> float | str:
            return float(e) if e.is_number else str(e)

        return {
            "n_features": self.n_features,
            "states": {_pattern_text(p): val(q) for p, q in self._items()},
            "magnitudes": [val(m) for m in self.magnitudes],
            "magnitude_std": list(self.magnitude_std) if self.magnitude_std else None,
        }


@dataclass(frozen=True)
class NumericFeatureModel:
    """Float view of a FeatureModel: S patterns, their probabilities, n magnitudes and noise std."""

    patterns: np.ndarray  # (S, n) int
    probabilities: np.ndarray  # (S,)
    magnitudes: np.ndarray  # (n,)
    magnitude_std: np.ndarray  # (n,)

    @property
    def states(self) -> np.ndarray:
        """(S, n) activations of each state in the feature basis."""
        return self.patterns * self.magnitudes


def _pattern_text(pattern: Sequence[int]) -> str:
    return "".join(str(b) for b in pattern)


def _model(
    table: Mapping[tuple[int, ...], sp.Expr],
    n: int,
    magnitudes: Sequence[Scalar] | None,
    magnitude_std: Sequence[float] | None,
) -> FeatureModel:
    mags = tuple(_sym(m, f"magnitude {i}") for i, m in enumerate(magnitudes or [1] * n))
    if len(mags) != n:
        raise ValueError(f"{len(mags)} magnitudes given for {n} features")
    std = tuple(float(s) for s in magnitude_std) if magnitude_std is not None else None
    items = [(pat, sp.simplify(p)) for pat, p in table.items() if not (p.is_number and p == 0)]
    return FeatureModel(tuple(p for p, _ in items), tuple(q for _, q in items), mags, std)


# --- builders ----------------------------------------------------------------------------------
def from_table(
    table: Mapping[str, Scalar] | str,
    magnitudes: Sequence[Scalar] | None = None,
    magnitude_std: Sequence[float] | None = None,
) -> FeatureModel:
    """Explicit table: {"00": 0.6, "10": 0.2, ...} or the text "00:0.6,10:0.2,01:0.05,11:0.15".

    A pattern's i-th character is feature i's firing bit. Missing patterns have probability 0.
    """
    if isinstance(table, str):
        parsed: dict[str, Scalar] = {}
        for item in filter(None, (t.strip() for t in table.split(","))):
            key, sep, value = item.partition(":")
            if not sep:
                raise ValueError(f"joint entry {item!r} must look like PATTERN:PROBABILITY")
            if key.strip() in parsed:
                raise ValueError(
                    f"pattern {key.strip()!r} appears more than once in the joint table"
                )
            try:
                parsed[key.strip()] = float(value)
            except ValueError:
                raise ValueError(
                    f"probability {value!r} of pattern {key!r} is not a number"
                ) from None
        table = parsed
    if not table:
        raise ValueError("the joint table is empty")
    lengths = {len(k) for k in table}
    if len(lengths) != 1:
        raise ValueError(f"patterns must all have the same length, got lengths {sorted(lengths)}")
    n = lengths.pop()
    states: dict[tuple[int, ...], sp.Expr] = {}
    for key, value in table.items():
        if any(c not in "01" for c in key):
            raise ValueError(f"pattern {key!r} may contain only the characters 0 and 1")
        states[tuple(int(c) for c in key)] = _sym(value, f"P({key})")
    return _model(states, n, magnitudes, magnitude_std)


def independent(
    probabilities: Sequence[Scalar],
    magnitudes: Sequence[Scalar] | None = None,
    magnitude_std: Sequence[float] | None = None,
) -> FeatureModel:
    """Features firing independently, feature i with probability probabilities[i]."""
    ps = [_sym(p, f"P(feature {i})") for i, p in enumerate(probabilities)]
    for i, p in enumerate(ps):
        _check_probability(p, f"P(feature {i})")
    table = {
        pat: sp.Mul(*(p if bit else 1 - p for bit, p in zip(pat, ps, strict=True)))
        for pat in itertools.product((0, 1), repeat=len(ps))
    }
    return _model(table, len(ps), magnitudes, magnitude_std)


def two_feature(
    p_parent: Scalar,
    p_child_given_parent: Scalar,
    p_child_given_not_parent: Scalar,
    magnitudes: Sequence[Scalar] | None = None,
) -> FeatureModel:
    """Feature 0 (parent) fires with p_parent; feature 1 (child) with a probability that depends
    on whether the parent fires. Covers the independent, hierarchical, correlated and
    anti-correlated scenarios of the hedging paper."""
    p = _sym(p_parent, "p_parent")
    a = _sym(p_child_given_parent, "p_child_given_parent")
    b = _sym(p_child_given_not_parent, "p_child_given_not_parent")
    for value, name in (
        (p, "p_parent"),
        (a, "p_child_given_parent"),
        (b, "p_child_given_not_parent"),
    ):
        _check_probability(value, name)
    table = {(0, 0): (1 - p) * (1 - b), (1, 0): p * (1 - a), (0, 1): (1 - p) * b, (1, 1): p * a}
    return _model(table, 2, magnitudes, None)


SCENARIOS = {
    # name: (P(child | parent), P(child | not parent)) with P(parent) = 0.25 in the paper
    "independent": (0.2, 0.2),
    "hierarchical": (0.2, 0.0),
    "correlated": (0.2, 0.1),
    "anticorrelated": (0.1, 0.2),
}


# The hedging paper's L1 coefficients for its two-feature scenarios.
PAPER_L1 = (1e-3, 2e-2, 1e-1)


def scenario(
    name: str,
    p_parent: Scalar = 0.25,
    p_child_given_parent: Scalar | None = None,
    p_child_given_not_parent: Scalar | None = None,
) -> FeatureModel:
    """One of the hedging paper's two-feature scenarios; any probability can be overridden."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; allowed: {', '.join(SCENARIOS)}")
    given, not_given = SCENARIOS[name]
    return two_feature(
        p_parent,
        given if p_child_given_parent is None else p_child_given_parent,
        not_given if p_child_given_not_parent is None else p_child_given_not_parent,
    )


def pairwise_correlated(
    p_i: Scalar, p_j: Scalar, p_ij: Scalar, magnitudes: Sequence[Scalar] | None = None
) -> FeatureModel:
    """Two features with marginals P(i), P(j) and joint P(i and j)."""
    pi, pj, pij = (_sym(v, n) for v, n in ((p_i, "P(i)"), (p_j, "P(j)"), (p_ij, "P(i and j)")))
    for value, name in ((pi, "P(i)"), (pj, "P(j)"), (pij, "P(i and j)")):
        _check_probability(value, name)
    for marginal, name in ((pi, "P(i)"), (pj, "P(j)")):
        if _is_true(pij <= marginal) is False:
            raise ValueError(
                f"joint P(i and j) = {pij} is larger than the marginal {name} = {marginal}"
            )
    if _is_true(pi + pj - pij <= 1) is False:
        raise ValueError(f"P(i) + P(j) - P(i and j) = {pi + pj - pij} exceeds 1")
    table = {(1, 1): pij, (1, 0): pi - pij, (0, 1): pj - pij, (0, 0): 1 - pi - pj + pij}
    return _model(table, 2, magnitudes, None)


def hierarchical(
    p_parent: Scalar,
    p_children_given_parent: Sequence[Scalar],
    exclusive: bool = False,
    magnitudes: Sequence[Scalar] | None = None,
) -> FeatureModel:
    """A parent (feature 0) and children (features 1..c) that fire only when the parent does.

    Children fire independently given the parent, or, with `exclusive`, at most one fires
    (mutually exclusive siblings; their conditional probabilities must then sum to at most 1).
    """
    p = _sym(p_parent, "p_parent")
    _check_probability(p, "p_parent")
    cs = [_sym(c, f"P(child {k} | parent)") for k, c in enumerate(p_children_given_parent)]
    for k, c in enumerate(cs):
        _check_probability(c, f"P(child {k} | parent)")
    n = 1 + len(cs)
    table: dict[tuple[int, ...], sp.Expr] = {(0,) * n: 1 - p}
    if exclusive:
        rest = 1 - sum(cs, sp.Integer(0))
        if _is_true(rest >= 0) is False:
            raise ValueError(
                f"exclusive children's probabilities sum to {1 - rest}; they must sum to at most 1"
            )
        table[(1,) + (0,) * len(cs)] = p * rest
        for k, c in enumerate(cs):
            table[(1,) + tuple(int(j == k) for j in range(len(cs)))] = p * c
    else:
        for bits in itertools.product((0, 1), repeat=len(cs)):
            prob = sp.Mul(*(c if b else 1 - c for b, c in zip(bits, cs, strict=True)))
            table[(1, *bits)] = p * prob
    return _model(table, n, magnitudes, None)


def product(*models: FeatureModel) -> FeatureModel:
    """Independent blocks side by side: the features of each model, in order."""
    if not models:
        raise ValueError("product() needs at least one feature model")
    table: dict[tuple[int, ...], sp.Expr] = {(): sp.Integer(1)}
    for model in models:
        table = {pat + other: p * q for pat, p in table.items() for other, q in model._items()}
    mags = [m for model in models for m in model.magnitudes]
    stds = (
        [s for model in models for s in (model.magnitude_std or [0.0] * model.n_features)]
        if any(model.magnitude_std for model in models)
        else None
    )
    return _model(table, len(mags), mags, stds)


@dataclass(frozen=True)
class WorldConfig:
    """A small feature model named on the command line: a state table or a paper scenario."""

    joint: str | None = None
    """State table, e.g. 00:0.6,10:0.2,01:0.05,11:0.15 (a pattern's i-th character is feature
    i's firing bit)."""
    scenario: str | None = None
    """A hedging-paper scenario: independent | hierarchical | correlated | anticorrelated."""
    p_parent: float = 0.25
    """Scenario: P(parent)."""
    p_child_given_parent: float | None = None
    """Scenario: P(child | parent) (default: the scenario's)."""
    p_child_given_not_parent: float | None = None
    """Scenario: P(child | not parent) (default: the scenario's)."""

    def __post_init__(self) -> None:
        if self.joint is not None and self.scenario is not None:
            raise ValueError("give a state table (joint) or a scenario, not both")
        if self.scenario is not None and self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; allowed: {', '.join(SCENARIOS)}")

    def feature_model(self) -> FeatureModel:
        if self.joint is not None:
            return from_table(self.joint)
        if self.scenario is None:
            raise ValueError("no feature model: give a state table (joint) or a scenario")
        return scenario(
            self.scenario, self.p_parent, self.p_child_given_parent, self.p_child_given_not_parent
        )
