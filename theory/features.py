"""Feature models: n features whose firing is a table of explicit states.

A feature model is the one definition of a toy world shared by the whole toolkit: theory integrates
over its states exactly, toymodels samples from the very same object. Feature i has unit direction
f_i, fires with pattern bit s_i and magnitude m_i, so x = sum_i s_i m_i f_i. Probabilities and
magnitudes may be numbers or sympy expressions (symbols allowed everywhere).

Three generalisations of constant magnitudes on orthonormal features keep the state table exact:

* Random magnitudes (`random_magnitudes`): each firing feature's magnitude is the two-point law
  m_i = mu_i + sigma_i u_i, u_i = +-1 with probability 1/2, so E[m_i] = mu_i, Var m_i = sigma_i^2,
  and the signs of co-firing features have correlation rho: with probability |rho| they are one
  shared sign (rho < 0, two features only: opposite signs), otherwise independent. A state with
  firing set F splits into 2^|F| states of probability
      P(s) (|rho| [u_F shared] / 2 + (1 - |rho|) 2^-|F|),
  each with its own magnitudes (`state_magnitudes`). Everything theory computes on the expanded
  table (exact loss, exact optimum) is exact for THIS law. For a continuous law with the same
  first and second moments and correlation only what depends on second moments agrees: at
  l1 = 0 a latent whose code is a fixed affine function of x on its states (tracking, or every
  latent always firing) has the least-squares decoder D = E[x a^T] E[a a^T]^-1, made of
  E[s_i s_j] (mu_i mu_j + rho_ij sigma_i sigma_j) and E[s_i] (mu_i^2 + sigma_i^2)
  (theory.closed_forms.tracking_decoder); optima where codes are thresholded depend on more.
* Superposition (`with_cosines`): unit directions with a given Gram matrix G_ij = f_i . f_j.
  States live in d = rank G coordinates, x_s = sum_i s_i m_i f_i, the rows f_i of a factor
  G = F F^T (Cholesky when G is definite, so f_0 = e_0 and feature 1 lies in the first plane;
  eigen-factor otherwise, d < n). Theory's SAE parameters are then in these d coordinates (the
  feature basis when G = I); the exact machinery is unchanged because it only sees the state
  vectors.
* Additive noise (`with_noise`): x = x_s + eps, eps ~ N(0, diag(sigma_1^2..sigma_d^2)) in the
  state coordinates (isotropic: all equal). The exact optimum enumerates finitely many states, so
  it is computed for the noiseless states; noise enters exactly wherever codes are affine on the
  support (theory.closed_forms.width1_region_terms(noise=...)) and is drawn when sampling.
"""

from __future__ import annotations

import dataclasses
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
    """Firing states (binary pattern -> probability) of n features, their magnitudes and
    directions (see the module docstring for the three generalisations).

    `magnitude_std` adds Gaussian noise to each magnitude (clipped at zero) when sampling; the exact
    theory needs a finite state table and refuses models with it (random magnitudes it can
    integrate exactly are `state_magnitudes`, from `random_magnitudes`).
    """

    patterns: tuple[tuple[int, ...], ...]
    probabilities: tuple[sp.Expr, ...]
    magnitudes: tuple[sp.Expr, ...]
    magnitude_std: tuple[float, ...] | None = None
    state_magnitudes: tuple[tuple[sp.Expr, ...], ...] | None = None
    """Per-state magnitudes (S x n) where magnitudes are random; `magnitudes` are then means."""
    directions: tuple[tuple[sp.Expr, ...], ...] | None = None
    """Feature directions (n x d) in the state coordinates; None: orthonormal (the identity)."""
    noise_std: tuple[float, ...] | None = None
    """Std of additive Gaussian noise per state coordinate (d values); None: no noise."""

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
        if self.state_magnitudes is not None and (
            len(self.state_magnitudes) != len(self.patterns)
            or any(len(row) != n for row in self.state_magnitudes)
        ):
            raise ValueError(f"state_magnitudes must be {len(self.patterns)} rows of {n} values")
        keys = self._state_keys()
        for key in set(keys):
            if keys.count(key) > 1:
                what = "state" if self.state_magnitudes else "pattern"
                raise ValueError(f"{what} {self._label(key)!r} appears more than once")
        for label, p in zip(self.state_labels(), self.probabilities, strict=True):
            _check_probability(p, f"P({label})")
        total = sp.nsimplify(sum(self.probabilities, sp.Integer(0)))
        if total.is_number and abs(float(total) - 1.0) > 1e-9:
            raise ValueError(f"state probabilities sum to {float(total):.6g}; they must sum to 1")
        for i, m in enumerate(self.magnitudes):
            if _is_true(m > 0) is False:
                raise ValueError(f"magnitude of feature {i} is {m}; magnitudes must be > 0")
        for pattern, row in zip(self.patterns, self.state_magnitudes or (), strict=False):
            for i, m in enumerate(row):
                if pattern[i] and _is_true(m > 0) is False:
                    raise ValueError(
                        f"magnitude of feature {i} in state {_pattern_text(pattern)} is {m}; "
                        "magnitudes must be > 0"
                    )
        if self.magnitude_std is not None:
            if len(self.magnitude_std) != n or any(s < 0 for s in self.magnitude_std):
                raise ValueError(f"magnitude_std must be {n} values >= 0, got {self.magnitude_std}")
        if self.directions is not None:
            if len(self.directions) != n or len({len(row) for row in self.directions}) != 1:
                raise ValueError(f"directions must be {n} rows of equal length")
        if self.noise_std is not None:
            if len(self.noise_std) != self.dim or any(
                not np.isfinite(s) or s < 0 for s in self.noise_std
            ):
                raise ValueError(
                    f"noise_std must be {self.dim} finite values >= 0 (one per state "
                    f"coordinate), got {self.noise_std}"
                )

    # --- shape and symbols -------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return len(self.magnitudes)

    @property
    def n_states(self) -> int:
        return len(self.patterns)

    @property
    def dim(self) -> int:
        """Dimension d of the state vectors (n unless the directions are in superposition)."""
        return self.n_features if self.directions is None else len(self.directions[0])

    @property
    def free_symbols(self) -> set[sp.Symbol]:
        exprs = (
            *self.probabilities,
            *self.magnitudes,
            *itertools.chain(*(self.state_magnitudes or ())),
            *itertools.chain(*(self.directions or ())),
        )
        return set().union(*(sp.sympify(e).free_symbols for e in exprs))

    @property
    def is_numeric(self) -> bool:
        return not self.free_symbols

    @property
    def has_magnitude_noise(self) -> bool:
        return self.magnitude_std is not None and any(s > 0 for s in self.magnitude_std)

    @property
    def has_additive_noise(self) -> bool:
        return self.noise_std is not None and any(s > 0 for s in self.noise_std)

    def noiseless(self) -> FeatureModel:
        """The same states without additive noise (what the exact optimum integrates over)."""
        return dataclasses.replace(self, noise_std=None)

    def subs(self, values: Mapping[sp.Symbol, Scalar]) -> FeatureModel:
        """The same model with symbols replaced (values are checked like any other input)."""
        values = {k: _sym(v, str(k)) for k, v in values.items()}

        def put(rows: tuple[tuple[sp.Expr, ...], ...] | None) -> tuple | None:
            if rows is None:
                return None
            return tuple(tuple(sp.sympify(e).subs(values) for e in row) for row in rows)

        return dataclasses.replace(
            self,
            probabilities=tuple(sp.sympify(p).subs(values) for p in self.probabilities),
            magnitudes=tuple(sp.sympify(m).subs(values) for m in self.magnitudes),
            state_magnitudes=put(self.state_magnitudes),
            directions=put(self.directions),
        )

    # --- exact moments (sympy) -------------------------------------------------------------------
    def code_matrix(self) -> sp.Matrix:
        """S x n matrix whose row s holds the features' activations s_i m_i in state s."""
        rows = self.state_magnitudes or (self.magnitudes,) * self.n_states
        return sp.Matrix(
            [
                [bit * m for bit, m in zip(pat, mags, strict=True)]
                for pat, mags in zip(self.patterns, rows, strict=True)
            ]
        )

    def state_matrix(self) -> sp.Matrix:
        """S x d matrix whose row s is the state vector x_s = sum_i s_i m_i f_i (in the feature
        basis when the directions are orthonormal)."""
        codes = self.code_matrix()
        return codes if self.directions is None else codes * sp.Matrix(self.directions)

    def gram(self) -> sp.Matrix:
        """n x n matrix of the feature directions' inner products (cosines)."""
        if self.directions is None:
            return sp.eye(self.n_features)
        F = sp.Matrix(self.directions)
        return sp.simplify(F * F.T)

    def marginal(self, i: int) -> sp.Expr:
        """P(feature i fires)."""
        return sp.simplify(sum((p for pat, p in self._items() if pat[i]), sp.Integer(0)))

    def joint(self, i: int, j: int) -> sp.Expr:
        """P(features i and j both fire)."""
        return sp.simplify(sum((p for pat, p in self._items() if pat[i] and pat[j]), sp.Integer(0)))

    def mean(self) -> sp.Matrix:
        """E[x] as a d x 1 column."""
        X = self.state_matrix()
        return sp.simplify(X.T * sp.Matrix(self.probabilities))

    def second_moment(self) -> sp.Matrix:
        """Uncentred second moment E[x x^T] (d x d) of the noiseless states."""
        X = self.state_matrix()
        return sp.simplify(X.T * sp.diag(*self.probabilities) * X)

    def state_labels(self) -> list[str]:
        """One label per state: its pattern, plus its magnitudes where they are random."""
        return [self._label(key) for key in self._state_keys()]

    def _state_keys(self) -> list[tuple]:
        if self.state_magnitudes is None:
            return [(pat,) for pat in self.patterns]
        return list(zip(self.patterns, self.state_magnitudes, strict=True))

    @staticmethod
    def _label(key: tuple) -> str:
        if len(key) == 1:
            return _pattern_text(key[0])
        pattern, mags = key
        values = ",".join(_short(m) for bit, m in zip(pattern, mags, strict=True) if bit)
        return f"{_pattern_text(pattern)}@{values}" if values else _pattern_text(pattern)

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

        def floats(rows: tuple | None) -> np.ndarray | None:
            return None if rows is None else np.array([[float(e) for e in r] for r in rows])

        noise = None if self.noise_std is None else np.array(self.noise_std, dtype=float)
        return NumericFeatureModel(
            patterns,
            probabilities,
            magnitudes,
            std,
            floats(self.state_magnitudes),
            floats(self.directions),
            noise,
        )

    def describe(self) -> dict:
        """JSON-friendly description (states as labels, values as strings or floats)."""

        def val(e: sp.Expr) -> float | str:
            e = sp.sympify(e)
            return float(e) if e.is_number else str(e)

        record = {
            "n_features": self.n_features,
            "states": {
                label: val(q)
                for label, q in zip(self.state_labels(), self.probabilities, strict=True)
            },
            "magnitudes": [val(m) for m in self.magnitudes],
            "magnitude_std": list(self.magnitude_std) if self.magnitude_std else None,
        }
        if self.directions is not None:
            record["dim"] = self.dim
            record["gram"] = [[val(e) for e in row] for row in self.gram().tolist()]
        if self.noise_std is not None:
            record["noise_std"] = list(self.noise_std)
        return record


@dataclass(frozen=True)
class NumericFeatureModel:
    """Float view of a FeatureModel: S patterns, their probabilities, n magnitudes and noise std,
    and where present per-state magnitudes (S, n), directions (n, d) and additive noise std (d)."""

    patterns: np.ndarray  # (S, n) int
    probabilities: np.ndarray  # (S,)
    magnitudes: np.ndarray  # (n,)
    magnitude_std: np.ndarray  # (n,)
    state_magnitudes: np.ndarray | None = None  # (S, n)
    directions: np.ndarray | None = None  # (n, d)
    noise_std: np.ndarray | None = None  # (d,)

    @property
    def codes(self) -> np.ndarray:
        """(S, n) features' activations s_i m_i in each state."""
        mags = self.magnitudes if self.state_magnitudes is None else self.state_magnitudes
        return self.patterns * mags

    @property
    def states(self) -> np.ndarray:
        """(S, d) state vectors in the state coordinates (the feature basis when orthonormal)."""
        return self.codes if self.directions is None else self.codes @ self.directions

    @property
    def dim(self) -> int:
        return self.patterns.shape[1] if self.directions is None else self.directions.shape[1]


def _short(value: sp.Expr) -> str:
    value = sp.sympify(value)
    return f"{float(value):.4g}" if value.is_number else str(value)


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
    for model in models:
        if model.state_magnitudes or model.directions or model.noise_std:
            raise ValueError(
                "product() combines constant-magnitude orthonormal models; apply "
                "random_magnitudes, with_cosines and with_noise to the product"
            )
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


def random_magnitudes(
    model: FeatureModel,
    std: Sequence[Scalar],
    correlation: Scalar = 0,
) -> FeatureModel:
    """Two-point random magnitudes: feature i's magnitude is its mean +- std[i], the signs of
    co-firing features correlated by `correlation` (module docstring). Every state splits into
    one state per sign pattern of its firing features; the means stay `magnitudes`."""
    if model.state_magnitudes is not None or model.directions or model.noise_std:
        raise ValueError("random_magnitudes needs a model with constant magnitudes")
    n = model.n_features
    sigmas = tuple(_sym(s, f"magnitude std {i}") for i, s in enumerate(std))
    if len(sigmas) != n:
        raise ValueError(f"{len(sigmas)} magnitude stds given for {n} features")
    rho = _sym(correlation, "magnitude correlation")
    for i, (mu, sigma) in enumerate(zip(model.magnitudes, sigmas, strict=True)):
        if _is_true(sigma >= 0) is False or _is_true(sigma < mu) is False:
            raise ValueError(
                f"magnitude std of feature {i} is {sigma}: a two-point magnitude law with mean "
                f"{mu} stays positive for 0 <= std < mean"
            )
    low = -1 if n == 2 else 0
    if _is_true(rho >= low) is False or _is_true(rho <= 1) is False:
        raise ValueError(
            f"magnitude correlation is {rho}; allowed: {low} <= correlation <= 1 (a negative "
            "common correlation of two-point magnitudes exists for 2 features only)"
        )
    # a symbolic correlation is taken to be >= 0 (the share of samples with one common sign)
    opposite = rho.is_number and rho < 0
    share = -rho if opposite else rho
    table: dict[tuple, sp.Expr] = {}  # (pattern, magnitudes) -> probability; std 0 merges
    for pattern, p in model._items():
        firing = [i for i in range(n) if pattern[i]]
        for signs in itertools.product((1, -1), repeat=len(firing)):
            weight = sp.Rational(1, 2 ** len(firing))
            if len(firing) >= 2:
                linked = signs[0] != signs[1] if opposite else len(set(signs)) == 1
                weight = (1 - share) * weight + (share / 2 if linked else 0)
            row = list(model.magnitudes)
            for i, s in zip(firing, signs, strict=True):
                row[i] = model.magnitudes[i] + s * sigmas[i]
            key = (pattern, tuple(row))
            table[key] = table.get(key, sp.Integer(0)) + p * weight
    items = [(k, sp.simplify(q)) for k, q in table.items()]
    items = [(k, q) for k, q in items if not (q.is_number and q == 0)]
    return dataclasses.replace(
        model,
        patterns=tuple(k[0] for k, _ in items),
        probabilities=tuple(q for _, q in items),
        state_magnitudes=tuple(k[1] for k, _ in items),
    )


def gram_factor(gram: sp.Matrix) -> sp.Matrix:
    """Rows f_i (n x d) with F F^T = gram: the Cholesky factor (exact with symbols; in floats for
    numbers) when gram is definite, else the eigen-factor of a semi-definite gram (d = its
    rank)."""
    n = gram.rows
    if gram.shape != (n, n) or gram != gram.T:
        raise ValueError(f"the cosine (Gram) matrix must be square and symmetric, got {gram}")
    for i in range(n):
        if sp.simplify(gram[i, i] - 1) != 0:
            raise ValueError(f"feature directions are unit vectors: cosine({i},{i}) must be 1")
    for i, j in itertools.combinations(range(n), 2):
        c = gram[i, j]
        if _is_true(c >= -1) is False or _is_true(c <= 1) is False:
            raise ValueError(f"cosine({i},{j}) = {c}; allowed: -1 <= cosine <= 1")
    if gram.free_symbols:  # symbolic cosines are taken to give a definite matrix
        return sp.simplify(gram.cholesky(hermitian=False))
    values, vectors = np.linalg.eigh(np.array(gram.evalf(), dtype=float))
    if values.min() < -1e-9:
        raise ValueError(
            f"the cosines are not those of real unit vectors: their Gram matrix has eigenvalue "
            f"{values.min():.4g} < 0"
        )
    if values.min() > 1e-9:
        factor = np.linalg.cholesky(np.array(gram.evalf(), dtype=float))
    else:
        keep = values > 1e-9
        factor = vectors[:, keep] * np.sqrt(values[keep])
    return sp.Matrix(factor.shape[0], factor.shape[1], lambda i, j: sp.Float(factor[i, j]))


def with_cosines(model: FeatureModel, cosines: Mapping[tuple[int, int], Scalar]) -> FeatureModel:
    """Feature directions in superposition: cosines {(i, j): cos(f_i, f_j)} for i < j (missing
    pairs are orthogonal). States then live in d = rank(Gram) coordinates (module docstring)."""
    if model.directions is not None or model.noise_std:
        raise ValueError("with_cosines needs a model with orthonormal directions and no noise")
    n = model.n_features
    gram = sp.eye(n)
    for (i, j), c in cosines.items():
        if not (0 <= i < n and 0 <= j < n) or i == j:
            raise ValueError(
                f"cosine pair ({i},{j}) must name two different features of 0..{n - 1}"
            )
        gram[i, j] = gram[j, i] = _sym(c, f"cosine({i},{j})")
    factor = gram_factor(gram)
    return dataclasses.replace(model, directions=tuple(tuple(row) for row in factor.tolist()))


def with_noise(model: FeatureModel, std: float | Sequence[float]) -> FeatureModel:
    """Additive Gaussian noise in the state coordinates: one std (isotropic) or one per
    coordinate (model.dim values)."""
    stds = [std] * model.dim if isinstance(std, int | float) else list(std)
    for s in stds:
        if isinstance(s, bool) or not isinstance(s, int | float) or not np.isfinite(s) or s < 0:
            raise ValueError(f"noise std must be finite numbers >= 0, got {std!r}")
    return dataclasses.replace(model, noise_std=tuple(float(s) for s in stds))


@dataclass(frozen=True)
class WorldConfig:
    """A small feature model named on the command line: a state table or a paper scenario, with
    optional random magnitudes, feature cosines and additive noise (module docstring)."""

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
    magnitudes: tuple[float, ...] = ()
    """Mean magnitude of each feature when it fires (default: 1 each)."""
    magnitude_std: tuple[float, ...] = ()
    """Std of each feature's magnitude, an exact two-point law mean +- std (0 <= std < mean;
    default: constant magnitudes)."""
    magnitude_correlation: float = 0.0
    """Correlation of co-firing features' magnitudes (needs magnitude_std; -1..1 for 2
    features, 0..1 for more)."""
    cosines: tuple[float, ...] = ()
    """Cosines between feature directions, pairs (0,1), (0,2), .., (1,2), .. in order (default:
    orthonormal; fewer values leave the remaining pairs orthogonal)."""
    noise_std: tuple[float, ...] = ()
    """Std of additive Gaussian noise: one value (isotropic) or one per state coordinate."""

    def __post_init__(self) -> None:
        if self.joint is not None and self.scenario is not None:
            raise ValueError("give a state table (joint) or a scenario, not both")
        if self.scenario is not None and self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; allowed: {', '.join(SCENARIOS)}")
        for name in ("magnitudes", "magnitude_std", "cosines", "noise_std"):
            for value in getattr(self, name):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"each of {name} must be a number, got {value!r}")
                if not np.isfinite(value):
                    raise ValueError(f"each of {name} must be finite, got {value!r}")
        for value in self.magnitudes:
            if value <= 0:
                raise ValueError(f"each of magnitudes must be > 0, got {value!r}")
        for name in ("magnitude_std", "noise_std"):
            for value in getattr(self, name):
                if value < 0:
                    raise ValueError(f"each of {name} must be >= 0, got {value!r}")
        for value in self.cosines:
            if not -1 <= value <= 1:
                raise ValueError(f"each of cosines must be in [-1, 1], got {value!r}")
        rho = self.magnitude_correlation
        if isinstance(rho, bool) or not isinstance(rho, int | float) or not -1 <= rho <= 1:
            raise ValueError(f"magnitude_correlation must be in [-1, 1], got {rho!r}")
        if rho and not self.magnitude_std:
            raise ValueError("magnitude_correlation needs magnitude_std (random magnitudes)")

    def feature_model(self) -> FeatureModel:
        if self.joint is not None:
            model = from_table(self.joint)
        elif self.scenario is None:
            raise ValueError("no feature model: give a state table (joint) or a scenario")
        else:
            model = scenario(
                self.scenario,
                self.p_parent,
                self.p_child_given_parent,
                self.p_child_given_not_parent,
            )
        n = model.n_features
        for name in ("magnitudes", "magnitude_std"):
            if getattr(self, name) and len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} values for {n} features")
        if self.magnitudes:
            model = dataclasses.replace(
                model, magnitudes=tuple(_sym(m, "m") for m in self.magnitudes)
            )
        if self.magnitude_std:
            model = random_magnitudes(model, self.magnitude_std, self.magnitude_correlation)
        pairs = list(itertools.combinations(range(n), 2))
        if len(self.cosines) > len(pairs):
            raise ValueError(
                f"{len(self.cosines)} cosines given; {n} features have {len(pairs)} pairs"
            )
        if any(self.cosines):
            model = with_cosines(model, dict(zip(pairs, self.cosines, strict=False)))
        if self.noise_std:
            if len(self.noise_std) not in (1, model.dim):
                raise ValueError(
                    f"noise_std has {len(self.noise_std)} values; allowed: 1 (isotropic) or "
                    f"{model.dim} (one per state coordinate)"
                )
            std = self.noise_std[0] if len(self.noise_std) == 1 else self.noise_std
            model = with_noise(model, std)
        return model
