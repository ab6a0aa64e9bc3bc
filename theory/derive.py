"""`derive`: the exact optimum of one SAE on one feature model, as a JSON-ready record."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import sympy as sp

from theory.closed_forms import top_eigen_angle, top_eigen_ratio, width1_region_terms
from theory.features import FeatureModel, WorldConfig
from theory.matryoshka import balancing_mu, matryoshka_optimum
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
    balance: bool = False
    """Matryoshka with a one-latent inner level: also the balancing mu in [0, 1] (the parent is
    feature 0, the read-out children features 1..width-1; theory.matryoshka.balancing_mu)."""


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
    if config.balance and config.sae.architecture != "matryoshka":
        raise ValueError(f"balance needs architecture matryoshka, got {config.sae.architecture!r}")
    record = derive(model, config.sae, config.symbolic, config.seed)
    if config.balance:
        start = time.perf_counter()
        read_out = tuple(range(1, config.sae.width))
        balance = balancing_mu(model, config.sae, 0, read_out)
        record["balance"] = {
            "mu": balance.mu,
            "bracket": list(balance.bracket),
            "read_out_features": list(read_out),
            "read_out_at_mu": asdict(balance.read_out),
            "balanced": "the inner latent's mean encoder component on the read-out children "
            "crosses 0: absorption (negative) below mu, hedging (positive) above",
        }
        record["seconds"] += time.perf_counter() - start
    return record


def derive(model: FeatureModel, spec: SAESpec, symbolic: bool = False, seed: int = 0) -> dict:
    """Optimum parameters in the feature basis (untied: decoder rows unit norm; tied: encoder =
    decoder), its exact expected loss, the states each latent fires on (strictly positive code)
    and, with `symbolic`, the closed forms of its region. A matryoshka SAE on more than 16
    states gets the optimum of the basin that starts at the true features
    (theory.matryoshka.matryoshka_optimum)."""
    start = time.perf_counter()
    if spec.architecture == "matryoshka":
        optimum = matryoshka_optimum(model, spec, 0, tuple(range(1, spec.width)), seed)
    else:
        optimum = global_optimum(model, spec, seed=seed)
    record = optimum_record(model, spec, optimum, symbolic)
    record["seconds"] = time.perf_counter() - start
    return record


def optimum_record(
    model: FeatureModel, spec: SAESpec, optimum: Optimum, symbolic: bool = False
) -> dict:
    """The JSON record of an optimum already found (keys as `derive`'s, without timing)."""
    patterns = ["".join(map(str, pat)) for pat in model.patterns]
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
            "architecture": spec.architecture,
            **(
                {"levels": list(spec.levels), "mu": spec.mu, "level_sparsity": spec.level_sparsity}
                if spec.architecture == "matryoshka"
                else {}
            ),
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
    if spec.width != 1 or spec.tied or len(spec.loss_levels().weight_J) > 1:
        return {
            "note": "closed forms are given for width-1 untied SAEs; this optimum comes "
            "from the reduced direction search of its activation region"
        }
    if not any(active[0]):
        return {"note": "the optimal latent never fires (the decoder bias alone is best)"}
    symbols = [
        sp.Symbol(f"P_{{{''.join(map(str, pat))}}}", positive=True) for pat in model.patterns
    ]
    symbolic_model = FeatureModel(model.patterns, tuple(symbols), model.magnitudes)
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
