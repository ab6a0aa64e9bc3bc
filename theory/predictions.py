"""Named predictions: the quantities people ask about, as formulas and vectorised functions.

Every prediction is a `Prediction`: a sympy expression in named symbols, its LaTeX, and a numpy
function of those symbols (broadcasting, so a million parameter points is one call). The
two-feature world is parameterised by P(parent) = p, P(child | parent) = a,
P(child | not parent) = b and the L1 coefficient l1; beyond constant orthonormal features by the
magnitudes' means mu, standard deviations sigma and correlation rho, the cosine c between the
parent's and the child's directions, and noise variances v along the state coordinates.

How each generalisation moves hedging (each a prediction below, checked in tests/theory):
* random magnitudes: a latent tracking the parent hedges a (mu_p mu_c + rho sigma_p sigma_c) /
  (mu_p^2 + sigma_p^2): parent-magnitude variance dilutes it, correlated magnitudes add to it;
* superposition: the width-1 decoder written in the features, e = alpha_p f_p + alpha_c f_c, is
  the top eigenvector of F^T H F for the region's H in the feature basis, i.e. alpha is the top
  eigenvector of H G (G the Gram matrix);
* noise: the always-firing (least-squares) latent is the top eigenvector of Cov(x) + Sigma;
  isotropic noise leaves it where it is, noise along the child turns it toward the child; a
  latent whose code follows the clean parent keeps its decoder (E[x a] does not see zero-mean
  noise) and the loss grows by tr Sigma;
* l1 > 0: the width-1 decoder is adj(nu I - H) w at a root nu of the secular quartic;
* width 2: the absorption family is fully absorbing from l1 = 2 sqrt2 P01 / ((sqrt2-1) P11 - P01).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from theory.closed_forms import (
    absorption_offset_loss,
    full_absorption_l1,
    largest_root_below,
    top_eigen_angle,
    tracking_decoder,
    width1_region_terms,
    width1_root_ratio,
    width1_secular_polynomial,
)
from theory.features import SCENARIOS, FeatureModel, random_magnitudes, scenario, two_feature
from theory.optimum import global_optimum
from theory.sae import SAESpec

p, a, b = sp.symbols("p a b", positive=True)
l1 = sp.Symbol("lambda", nonnegative=True)
TWO_FEATURE_SYMBOLS = (p, a, b)
mu_p, mu_c, sigma_p, sigma_c = sp.symbols("mu_p mu_c sigma_p sigma_c", positive=True)
rho = sp.Symbol("rho", real=True)
cosine = sp.Symbol("c", real=True)
v_p, v_c = sp.symbols("v_p v_c", nonnegative=True)
nu = sp.Symbol("nu", real=True)


@dataclass(frozen=True)
class Prediction:
    """A named closed form: expression, its symbols (argument order of `numeric`), LaTeX."""

    name: str
    expr: sp.Expr
    symbols: tuple[sp.Symbol, ...]
    description: str
    numeric: Callable[..., np.ndarray] = field(repr=False, compare=False, default=None)
    root_of: tuple[sp.Symbol, sp.Expr, str] | None = None
    """(nu, polynomial, which root) when `expr` is written in a root nu of a polynomial in nu
    (whose coefficients are in `symbols`); `numeric` then finds the root."""

    def __post_init__(self) -> None:
        if self.numeric is None:
            if self.root_of is not None:
                raise ValueError(f"{self.name}: a prediction defined by a root needs `numeric`")
            object.__setattr__(self, "numeric", sp.lambdify(self.symbols, self.expr, "numpy"))

    @property
    def latex(self) -> str:
        if self.root_of is None:
            return sp.latex(self.expr)
        root, polynomial, which = self.root_of
        return (
            rf"{sp.latex(self.expr)},\quad {sp.latex(root)} = \text{{{which} of }} "
            f"{sp.latex(polynomial)} = 0"
        )

    def __call__(self, *values: float | np.ndarray) -> np.ndarray:
        if len(values) != len(self.symbols):
            names = ", ".join(map(str, self.symbols))
            raise ValueError(f"{self.name} takes {len(self.symbols)} values ({names})")
        arrays = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in values))
        return np.asarray(self.numeric(*arrays), dtype=float)


def _two_feature_model() -> object:
    return two_feature(p, a, b)


@functools.cache  # pure: building one runs sympy for a second or more
def tracking_hedging_coefficient(decoder_bias: bool = False) -> Prediction:
    """Decoder component on the child of a latent that fires exactly when the parent fires.

    Without a decoder bias it is E[s_p s_c] / E[s_p] = P(c | p) = a; with a decoder bias the
    bias takes the child's base rate and the latent keeps the difference a - b."""
    decoder, _ = tracking_decoder(_two_feature_model(), [0], decoder_bias)
    return Prediction(
        f"tracking_hedging_coefficient{'_with_bias' if decoder_bias else ''}",
        sp.simplify(decoder[0, 1] / decoder[0, 0]),
        TWO_FEATURE_SYMBOLS,
        "child component of the decoder of a latent tracking the parent exactly",
    )


def _region(patterns: Sequence[str]) -> tuple[bool, ...]:
    model = _two_feature_model()
    known = {"".join(map(str, pat)) for pat in model.patterns}
    for pattern in patterns:
        if pattern not in known:
            raise ValueError(f"pattern {pattern!r} is not a state; allowed: {sorted(known)}")
    return tuple("".join(map(str, pat)) in patterns for pat in model.patterns)


@functools.cache  # pure: building one runs sympy for a second or more
def width1_decoder_ratio(
    active: Sequence[str] = ("10", "11"), decoder_bias: bool = True
) -> Prediction:
    """Child / parent component of the optimal width-1 decoder at l1 = 0 when the latent fires on
    the `active` states (e.g. "10", "11": whenever the parent fires). Positive = hedging."""
    terms = width1_region_terms(_two_feature_model(), _region(active), 0, decoder_bias)
    # tan of the top eigenvector's angle: unlike (lambda_max - H00) / H01 it stays defined
    # when H01 = 0 (independent features: ratio 0)
    ratio = sp.tan(top_eigen_angle(sp.Matrix(terms.H)))
    return Prediction(
        f"width1_decoder_ratio[{','.join(active)}]{'' if decoder_bias else '_no_bias'}",
        ratio,
        TWO_FEATURE_SYMBOLS,
        "child/parent component of the optimal width-1 decoder (l1 = 0) in one activation region",
    )


@functools.cache  # pure: building one runs sympy for a second or more
def width1_hedging_component(
    active: Sequence[str] = ("10", "11"), decoder_bias: bool = True
) -> Prediction:
    """Child component of the unit-norm optimal width-1 decoder (l1 = 0) in one region."""
    ratio = width1_decoder_ratio(active, decoder_bias)
    terms = width1_region_terms(_two_feature_model(), _region(active), 0, decoder_bias)
    return Prediction(
        ratio.name.replace("ratio", "hedging_component"),
        sp.sin(top_eigen_angle(sp.Matrix(terms.H))),
        TWO_FEATURE_SYMBOLS,
        "child component of the unit decoder of the optimal width-1 SAE (l1 = 0) in one region",
    )


@functools.cache  # pure: building one runs sympy for a second or more
def width1_expected_loss(
    active: Sequence[str] = ("10", "11"), decoder_bias: bool = True
) -> Prediction:
    """Exact expected loss of the optimal width-1 SAE (l1 = 0) in one region:
    constant - lambda_max(H)."""
    terms = width1_region_terms(_two_feature_model(), _region(active), 0, decoder_bias)
    H = sp.Matrix(terms.H)
    top = (H[0, 0] + H[1, 1]) / 2 + sp.sqrt(((H[0, 0] - H[1, 1]) / 2) ** 2 + H[0, 1] ** 2)
    return Prediction(
        f"width1_expected_loss[{','.join(active)}]",
        sp.simplify(terms.constant - top),
        TWO_FEATURE_SYMBOLS,
        "expected loss of the optimal width-1 SAE (l1 = 0) in one region",
    )


@functools.cache  # pure: building one runs sympy for a second or more
def absorption_slope() -> Prediction:
    """Slope of the width-2 absorption family's loss at delta = 0: -l1 P(parent and child).
    Negative whenever l1 > 0, so sparsity always starts absorption in a wide SAE."""
    p10, p11, p01 = sp.symbols("P_10 P_11 P_01", nonnegative=True)
    loss, delta = absorption_offset_loss(p10, p11, p01, l1)
    return Prediction(
        "absorption_slope",
        sp.simplify(sp.diff(loss, delta).subs(delta, 0)),
        (p10, p11, p01, l1),
        "d loss / d delta at delta = 0 for the absorption family",
    )


def hedging_by_architecture(
    specs: Sequence[SAESpec], scenarios: Sequence[str] = tuple(SCENARIOS), p_parent: float = 0.25
) -> list[dict]:
    """Per scenario and spec, the exact optimum's hedging: its first latent's child component
    (theory.derive.hedging_components; width 1: the latent), next to P(child | parent).
    Numeric (the gated architectures have no closed form), one exact optimum per row."""
    from theory.derive import hedging_components

    rows = []
    for name in scenarios:
        model = scenario(name, p_parent)
        p_child_given_parent = float(SCENARIOS[name][0])
        for spec in specs:
            decoder = global_optimum(model, spec).params.decoder
            rows.append(
                {
                    "scenario": name,
                    "architecture": spec.architecture,
                    "spec": spec,
                    "hedging": hedging_components(decoder)[0],
                    "p_child_given_parent": p_child_given_parent,
                }
            )
    return rows


@functools.cache  # pure: building one runs sympy for a second or more
def tracking_hedging_coefficient_moments() -> Prediction:
    """Child component of the decoder of a latent tracking the parent's activation exactly
    (code s_p m_p, no decoder bias) with random magnitudes: E[s_p s_c m_p m_c] / E[s_p m_p^2]
    = a (mu_p mu_c + rho sigma_p sigma_c) / (mu_p^2 + sigma_p^2). Derived on the exact two-point
    expansion; it depends on the magnitude law only through these moments, so it holds for any
    law with them (and for rho < 0: the expression is linear in rho)."""
    model = random_magnitudes(two_feature(p, a, b, [mu_p, mu_c]), [sigma_p, sigma_c], rho)
    decoder, _ = tracking_decoder(model, [0])
    return Prediction(
        "tracking_hedging_coefficient_moments",
        sp.factor(sp.simplify(decoder[0, 1] / decoder[0, 0])),
        (a, mu_p, mu_c, sigma_p, sigma_c, rho),
        "child component of the decoder of a latent tracking the parent, random magnitudes",
    )


@functools.cache  # pure: building one runs sympy for a second or more
def width1_decoder_ratio_cosine(
    active: Sequence[str] = ("10", "11"), decoder_bias: bool = True
) -> Prediction:
    """alpha_c / alpha_p of the optimal width-1 decoder e = alpha_p f_p + alpha_c f_c (l1 = 0,
    one region) when the parent's and child's directions have cosine c.

    With F = [[1, 0], [c, s]], s = sqrt(1 - c^2) (rows f_p, f_c), states are x = y F and the
    region's matrix is F^T H F (H in the feature basis). Its top eigenvector (cos t, sin t) gives
    alpha = F^-T e: alpha_c = sin t / s, alpha_p = cos t - c alpha_c, so the ratio is
    tan t / (s - c tan t). At c = 0 it is width1_decoder_ratio."""
    terms = width1_region_terms(_two_feature_model(), _region(active), 0, decoder_bias)
    s = sp.sqrt(1 - cosine**2)
    F = sp.Matrix([[1, 0], [cosine, s]])
    tangent = sp.tan(top_eigen_angle(F.T * sp.Matrix(terms.H) * F))
    return Prediction(
        f"width1_decoder_ratio_cosine[{','.join(active)}]{'' if decoder_bias else '_no_bias'}",
        tangent / (s - cosine * tangent),
        (p, a, b, cosine),
        "child/parent coefficient of the optimal width-1 decoder (l1 = 0) with feature cosine c",
    )


@functools.cache  # pure: building one runs sympy for a second or more
def width1_decoder_ratio_noise(decoder_bias: bool = True) -> Prediction:
    """Child / parent component of the optimal always-firing width-1 latent (l1 = 0: least
    squares on the noisy inputs) under additive noise of variance v_p along the parent and v_c
    along the child: the top eigenvector of H + diag(v_p, v_c), H = Cov(x) (E[x x^T] without a
    decoder bias). Exact: the code is affine on the whole support (see
    theory.closed_forms.width1_region_terms). tan 2t = 2 H01 / (H00 - H11 + v_p - v_c), so
    isotropic noise (v_p = v_c) moves nothing and noise along the child turns the decoder toward
    the child (more hedging), along the parent away from it."""
    model = _two_feature_model()
    # an affine code of every state reproduces E[x x^T] (C is Z's first columns: C^T Z^+ C)
    second, mean = model.second_moment(), model.mean()
    H = (second - mean * mean.T if decoder_bias else second) + sp.diag(v_p, v_c)
    return Prediction(
        f"width1_decoder_ratio_noise{'' if decoder_bias else '_no_bias'}",
        sp.tan(top_eigen_angle(H)),
        (p, a, b, v_p, v_c),
        "child/parent component of the always-firing width-1 decoder (l1 = 0) under noise",
    )


@functools.cache  # pure: building one runs sympy for a second or more
def width1_decoder_ratio_l1(
    active: Sequence[str] = ("10", "11"), decoder_bias: bool = True
) -> Prediction:
    """Child / parent component of the optimal width-1 decoder at l1 > 0 in one region, where
    its unconstrained stationary point is feasible: adj(nu I - H) w at nu, the largest real root
    below lambda_max(H) of the secular quartic (theory.closed_forms.width1_secular_polynomial).
    NaN where that root does not exist (the latent dies or sits on a region boundary)."""
    terms = width1_region_terms(_two_feature_model(), _region(active), l1, decoder_bias)
    H, w = sp.Matrix(terms.H), sp.Matrix(terms.w)
    polynomial = width1_secular_polynomial(H, w, l1, nu)
    coefficients = sp.lambdify((p, a, b, l1), sp.Poly(polynomial, nu).all_coeffs(), "numpy")
    ratio = width1_root_ratio(H, w, nu)
    ratio_at = sp.lambdify((p, a, b, l1, nu), ratio, "numpy")
    matrix = sp.lambdify((p, a, b), H, "numpy")
    symbols = (p, a, b, l1)

    def numeric(*values: np.ndarray) -> np.ndarray:
        shape = np.shape(values[0])
        flat = [np.ravel(v).astype(float) for v in values]
        rows = np.stack(
            [
                np.broadcast_to(np.asarray(c, dtype=float), flat[0].shape)
                for c in coefficients(*flat)
            ],
            axis=1,
        )
        H_N22 = np.moveaxis(
            np.array(
                [
                    [np.broadcast_to(np.asarray(e, float), flat[0].shape) for e in r]
                    for r in matrix(*flat[:3])
                ]
            ),
            -1,
            0,
        )
        top = np.linalg.eigvalsh(H_N22)[:, -1]
        root = largest_root_below(rows, top)
        return np.reshape(ratio_at(*flat, root), shape)

    return Prediction(
        f"width1_decoder_ratio_l1[{','.join(active)}]{'' if decoder_bias else '_no_bias'}",
        ratio,
        symbols,
        "child/parent component of the optimal width-1 decoder at l1 > 0 (secular root)",
        numeric,
        (nu, polynomial, "the largest real root below the top eigenvalue of H"),
    )


@functools.cache  # pure: building one runs sympy for a second or more
def full_absorption_threshold() -> Prediction:
    """L1 from which the width-2 absorption family on a parent/child pair is fully absorbing:
    2 sqrt2 P01 / ((sqrt2 - 1) P11 - P01) (infinite when P01 >= (sqrt2 - 1) P11; 0 for a true
    hierarchy, P01 = 0)."""
    p11, p01 = sp.symbols("P_11 P_01", nonnegative=True)
    return Prediction(
        "full_absorption_threshold",
        full_absorption_l1(p11, p01),
        (p11, p01),
        "l1 from which the width-2 absorption family is fully absorbing (delta = 1)",
    )


def catalogue() -> list[Prediction]:
    """Every named prediction, for reports and `derive --symbolic`."""
    return [
        tracking_hedging_coefficient(False),
        tracking_hedging_coefficient(True),
        width1_decoder_ratio(("10", "11")),
        width1_hedging_component(("10", "11")),
        width1_expected_loss(("10", "11")),
        absorption_slope(),
        tracking_hedging_coefficient_moments(),
        width1_decoder_ratio_cosine(("10", "11")),
        width1_decoder_ratio_noise(),
        width1_decoder_ratio_l1(("10", "11")),
        full_absorption_threshold(),
    ]


def two_feature_parameters(model: FeatureModel) -> dict[sp.Symbol, float]:
    """The catalogue's symbols read off a numeric two-feature model (feature 0 the parent): p,
    a, b from its firing, mu and sigma of each magnitude law and rho from its states, the cosine
    c and the noise variances v along the state coordinates where it has them."""
    if model.n_features != 2 or not model.is_numeric:
        raise ValueError("catalogue parameters are read from numeric two-feature models")
    world = model.numeric()
    fire_S2 = world.patterns.astype(bool)
    prob = world.probabilities
    parent = float(prob @ fire_S2[:, 0])
    both = float(prob @ (fire_S2[:, 0] & fire_S2[:, 1]))
    child = float(prob @ fire_S2[:, 1])
    values = {p: parent, a: both / parent if parent else 0.0}
    values[b] = (child - both) / (1 - parent) if parent < 1 else 0.0
    spread_S2 = world.codes - world.magnitudes * fire_S2  # (m - mu) where a feature fires
    sigma = [
        float(
            np.sqrt(
                prob @ (spread_S2[:, i] ** 2 * fire_S2[:, i]) / max(prob @ fire_S2[:, i], 1e-300)
            )
        )
        for i in range(2)
    ]
    values.update({mu_p: world.magnitudes[0], mu_c: world.magnitudes[1]})
    values.update({sigma_p: sigma[0], sigma_c: sigma[1]})
    joint_spread = prob @ (spread_S2[:, 0] * spread_S2[:, 1] * fire_S2.all(1))
    values[rho] = float(joint_spread / both / (sigma[0] * sigma[1])) if both and all(sigma) else 0.0
    values[cosine] = float(model.gram()[0, 1])
    variances = np.zeros(model.dim) if world.noise_std is None else world.noise_std**2
    if model.dim == 2:
        values.update({v_p: float(variances[0]), v_c: float(variances[1])})
    values.update({sp.Symbol("P_11", nonnegative=True): both})
    values.update({sp.Symbol("P_01", nonnegative=True): child - both})
    return values


def applicable(model: FeatureModel, l1_value: float, decoder_bias: bool) -> list[Prediction]:
    """The catalogue's predictions that describe this two-feature world (the conditions each
    was derived under: constant magnitudes, orthonormal directions, no noise, the sign of l1)."""
    constant = model.state_magnitudes is None
    orthonormal = model.directions is None
    noiseless = not model.has_additive_noise
    found = [tracking_hedging_coefficient_moments()]  # any magnitudes, cosines, noise
    if constant and orthonormal and noiseless:
        found.append(full_absorption_threshold())
        if l1_value == 0:
            found.append(width1_decoder_ratio(("10", "11"), decoder_bias))
        else:
            found.append(width1_decoder_ratio_l1(("10", "11"), decoder_bias))
    if constant and noiseless and l1_value == 0:
        found.append(width1_decoder_ratio_cosine(("10", "11"), decoder_bias))
    if constant and orthonormal and l1_value == 0:
        found.append(width1_decoder_ratio_noise(decoder_bias))
    return found


def evaluate_catalogue(model: FeatureModel, l1_value: float, decoder_bias: bool) -> dict:
    """{name: {"value", "latex", "description"}} of every applicable prediction on this
    two-feature world (empty for other worlds)."""
    if model.n_features != 2 or not model.is_numeric:
        return {}
    values = {**two_feature_parameters(model), l1: l1_value}
    record = {}
    for prediction in applicable(model, l1_value, decoder_bias):
        with np.errstate(all="ignore"):
            value = float(prediction(*(values[s] for s in prediction.symbols)))
        record[prediction.name] = {
            "value": value if np.isfinite(value) else None,
            "latex": prediction.latex,
            "description": prediction.description,
        }
    return record
