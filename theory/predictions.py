"""Named predictions: the quantities people ask about, as formulas and vectorised functions.

Every prediction is a `Prediction`: a sympy expression in named symbols, its LaTeX, and a numpy
function of those symbols (broadcasting, so a million parameter points is one call). The
two-feature world is parameterised by P(parent) = p, P(child | parent) = a,
P(child | not parent) = b and the L1 coefficient l1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from theory.closed_forms import (
    absorption_offset_loss,
    top_eigen_angle,
    tracking_decoder,
    width1_region_terms,
)
from theory.features import SCENARIOS, scenario, two_feature
from theory.optimum import global_optimum
from theory.sae import SAESpec

p, a, b = sp.symbols("p a b", positive=True)
l1 = sp.Symbol("lambda", nonnegative=True)
TWO_FEATURE_SYMBOLS = (p, a, b)


@dataclass(frozen=True)
class Prediction:
    """A named closed form: expression, its symbols (argument order of `numeric`), LaTeX."""

    name: str
    expr: sp.Expr
    symbols: tuple[sp.Symbol, ...]
    description: str
    numeric: Callable[..., np.ndarray] = field(repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.numeric is None:
            object.__setattr__(self, "numeric", sp.lambdify(self.symbols, self.expr, "numpy"))

    @property
    def latex(self) -> str:
        return sp.latex(self.expr)

    def __call__(self, *values: float | np.ndarray) -> np.ndarray:
        if len(values) != len(self.symbols):
            names = ", ".join(map(str, self.symbols))
            raise ValueError(f"{self.name} takes {len(self.symbols)} values ({names})")
        arrays = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in values))
        return np.asarray(self.numeric(*arrays), dtype=float)


def _two_feature_model() -> object:
    return two_feature(p, a, b)


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


def catalogue() -> list[Prediction]:
    """Every named prediction, for reports and `derive --symbolic`."""
    return [
        tracking_hedging_coefficient(False),
        tracking_hedging_coefficient(True),
        width1_decoder_ratio(("10", "11")),
        width1_hedging_component(("10", "11")),
        width1_expected_loss(("10", "11")),
        absorption_slope(),
    ]
