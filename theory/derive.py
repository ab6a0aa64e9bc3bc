"""`derive`: the exact optimum of one SAE on one feature model, as a JSON-ready record."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import sympy as sp

from theory.closed_forms import top_eigen_angle, top_eigen_ratio, width1_region_terms
from theory.features import FeatureModel, WorldConfig
from theory.optimum import Optimum, global_optimum
from theory.sae import SAESpec, codes


@dataclass(frozen=True)
class DeriveConfig:
    """`derive`: the exact optimum of one small SAE on one feature model."""

    world: WorldConfig = field(default_factory=WorldConfig)
    sae: SAESpec = field(default_factory=SAESpec)
    symbolic: bool = False
    """Include the optimum's closed forms in LaTeX."""
    seed: int = 0
    """Seed of the direction search's starting points."""


def run_derive(config: DeriveConfig) -> dict:
    """derive() on the config's feature model and SAE. A width beyond the model's firing states
    is refused before the search (a latent per state is already the most an SAE can use)."""
    model = config.world.feature_model()
    n_states = len(model.patterns)
    if config.sae.width > n_states:
        raise ValueError(
            f"width {config.sae.width} exceeds the {n_states} states of the feature model; "
            f"allowed: 1..{n_states}"
        )
    return derive(model, config.sae, config.symbolic, config.seed)


def derive(model: FeatureModel, spec: SAESpec, symbolic: bool = False, seed: int = 0) -> dict:
    """Optimum parameters in the feature basis (untied: decoder rows unit norm; tied: encoder =
    decoder), its exact expected loss, the states each latent fires on (strictly positive code)
    and, with `symbolic`, the closed forms of its region."""
    start = time.perf_counter()
    record = optimum_record(model, spec, global_optimum(model, spec, seed=seed), symbolic)
    record["seconds"] = time.perf_counter() - start
    return record


def optimum_record(
    model: FeatureModel, spec: SAESpec, optimum: Optimum, symbolic: bool = False
) -> dict:
    """The JSON record of an optimum already found (keys as `derive`'s, without timing)."""
    patterns = model.state_labels()
    firing_SK = codes(model.numeric(), optimum.params) > 0
    record = {
        **optimum.params.to_json(),
        "expected_loss": optimum.loss,
        "fires_on": [
            [pat for pat, on in zip(patterns, row, strict=True) if on] for row in firing_SK.T
        ],
        "spec": {
            "width": spec.width,
            "l1": float(spec.l1),
            "tied": spec.tied,
            "decoder_bias": spec.decoder_bias,
        },
        "model": model.describe(),
        "regions_tried": optimum.regions_tried,
    }
    if symbolic:
        record["symbolic"] = closed_forms_latex(model, spec, optimum.active)
    return record


def closed_forms_latex(
    model: FeatureModel, spec: SAESpec, active: tuple[tuple[bool, ...], ...]
) -> dict[str, str]:
    """LaTeX of the optimum's closed forms in symbols P_{pattern} of the state probabilities.

    Available for width-1 untied SAEs (the region's quadratic form on the sphere; at l1 = 0 the
    decoder angle and hedging ratio of a 2-feature model)."""
    if spec.width != 1 or spec.tied:
        return {
            "note": "closed forms are given for width-1 untied SAEs; this optimum comes "
            "from the reduced direction search of its activation region"
        }
    if not any(active[0]):
        return {"note": "the optimal latent never fires (the decoder bias alone is best)"}
    symbols = [
        sp.Symbol(f"P_{{{label}}}", positive=True) for label in model.state_labels()
    ]
    symbolic_model = dataclasses.replace(model, probabilities=tuple(symbols), noise_std=None)
    l1 = sp.Symbol("lambda", nonnegative=True) if float(spec.l1) else 0
    terms = width1_region_terms(symbolic_model, active[0], l1, spec.decoder_bias)
    forms = {
        "loss_on_unit_sphere": r"L(e) = c - e^\top H e + \lambda\, w^\top e",
        "H": sp.latex(terms.H),
        "w": sp.latex(terms.w),
        "c": sp.latex(terms.constant),
        "stationarity": r"(\nu I - H)\, e = -\tfrac{\lambda}{2} w,\ \|e\| = 1",
    }
    if model.n_features == 2 and not l1:
        H = sp.Matrix(terms.H)
        forms["decoder_angle"] = sp.latex(top_eigen_angle(H))
        forms["hedging_ratio"] = sp.latex(sp.simplify(top_eigen_ratio(H)))
    return forms
