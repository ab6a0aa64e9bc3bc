"""`derive`: the exact optimum of one SAE on one feature model, as a JSON-ready record."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import sympy as sp

from theory.architectures import architecture_codes, architecture_optimum
from theory.closed_forms import top_eigen_angle, top_eigen_ratio, width1_region_terms
from theory.config import require_choice, require_positive_int
from theory.features import FeatureModel, WorldConfig
from theory.matryoshka import balancing_mu
from theory.numeric import numeric_optimum
from theory.optimum import Optimum
from theory.predictions import evaluate_catalogue
from theory.sae import SAESpec


@dataclass(frozen=True)
class DeriveConfig:
    """`derive`: the optimum of one small SAE on one feature model (exact, or numeric)."""

    world: WorldConfig = field(default_factory=WorldConfig)
    sae: SAESpec = field(default_factory=SAESpec)
    symbolic: bool = False
    """Include the optimum's closed forms in LaTeX."""
    seed: int = 0
    """Seed of the direction search's starting points."""
    balance: bool = False
    """Matryoshka with a one-latent inner level: also the balancing mu in [0, 1] (the parent is
    feature 0, the read-out children features 1..width-1; theory.matryoshka.balancing_mu)."""
    method: str = "exact"
    """exact: the global optimum with a guarantee (region enumeration); numeric: the best of
    `starts` local searches of the same exact loss, no guarantee (theory.numeric), for models
    the exact search refuses as too large."""
    starts: int = 32
    """Starting points of the numeric method."""

    def __post_init__(self) -> None:
        require_choice("method", self.method, METHODS)
        require_positive_int("starts", self.starts)


METHODS = ("exact", "numeric")


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
    record = derive(model, config.sae, config.symbolic, config.seed, config.method, config.starts)
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


def derive(
    model: FeatureModel,
    spec: SAESpec,
    symbolic: bool = False,
    seed: int = 0,
    method: str = "exact",
    starts: int = 32,
) -> dict:
    """Optimum parameters in the state coordinates (the feature basis unless the features have
    cosines; untied: decoder rows unit norm; tied: encoder = decoder), its exact expected loss,
    the states each latent fires on (strictly positive code), the catalogue's predictions for a
    two-feature world and, with `symbolic`, the closed forms of its region.

    With additive noise the optimum is that of the noiseless states (the exact search needs
    finitely many) and "noise" adds what is exact or small-noise about the noisy world. A
    matryoshka SAE on more than 16 states gets the optimum of the basin that starts at the true
    features (theory.matryoshka.matryoshka_optimum). `method` "numeric" takes the best of
    `starts` local searches instead (an upper bound on the optimum, no guarantee;
    "regions_tried" is then null)."""
    require_choice("method", method, METHODS)
    start = time.perf_counter()
    clean = model.noiseless()
    if method == "exact":
        optimum = architecture_optimum(clean, spec, seed=seed)
        record = optimum_record(clean, spec, optimum, symbolic)
        record["method"] = "exact"
    else:
        numeric = numeric_optimum(clean, spec, n_starts=starts, seed=seed)
        firing_SK = architecture_codes(clean.numeric(), numeric.params, spec) > 0
        optimum = Optimum(numeric.params, numeric.loss, tuple(map(tuple, firing_SK.T.tolist())), 0)
        record = optimum_record(clean, spec, optimum, symbolic)
        record["method"] = f"numeric: the best of {starts} local searches, no guarantee"
        record["regions_tried"] = None
    record["model"] = model.describe()
    record["predictions"] = evaluate_catalogue(model, float(spec.l1), spec.decoder_bias)
    if model.has_additive_noise:
        record["noise"] = noise_record(model, spec, optimum)
    record["seconds"] = time.perf_counter() - start
    return record


def noise_record(model: FeatureModel, spec: SAESpec, optimum: Optimum) -> dict:
    """What additive noise (covariance Sigma) does to the noiseless optimum: every SAE pays at
    least tr Sigma times the fraction of it outside what its codes follow; for a width-1 untied
    SAE at l1 = 0 the optimum of the noiseless optimum's activation region under noise, from
    width1_region_terms(noise=Sigma) (exact when that region is every state, the small-noise
    limit otherwise)."""
    Sigma = np.diag(np.asarray(model.noise_std, dtype=float) ** 2)
    record = {
        "note": "the optimum above is of the noiseless states",
        "noise_variance_total": float(np.trace(Sigma)),
    }
    if spec.width != 1 or spec.tied or float(spec.l1) != 0 or not any(optimum.active[0]):
        return record
    world = model.numeric()
    region = optimum.active[0]
    terms = width1_region_terms(world, region, 0, spec.decoder_bias, Sigma)
    if terms is None:
        return record
    values, vectors = np.linalg.eigh(terms.H)
    direction = vectors[:, -1] * np.sign(vectors[:, -1] @ optimum.params.decoder[0] or 1.0)
    record.update(
        {
            "region": [lab for lab, on in zip(model.state_labels(), region, strict=True) if on],
            "exact": bool(all(region)),
            "decoder": direction.tolist(),
            "expected_loss": float(terms.constant - values[-1]),
        }
    )
    return record


def optimum_record(
    model: FeatureModel, spec: SAESpec, optimum: Optimum, symbolic: bool = False
) -> dict:
    """The JSON record of an optimum already found (keys as `derive`'s, without timing).
    Two-feature models add "hedging": see `hedging_components`; BatchTopK adds
    "kept_fraction" [latent][state], the share of a state's samples keeping the code."""
    patterns = model.state_labels()
    firing_SK = architecture_codes(model.numeric(), optimum.params, spec) > 0
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
            "k": spec.k,
            "l0": float(spec.l0),
            **(
                {"levels": list(spec.levels), "mu": spec.mu, "level_sparsity": spec.level_sparsity}
                if spec.architecture == "matryoshka"
                else {}
            ),
        },
        "model": model.describe(),
        "regions_tried": optimum.regions_tried,
    }
    decoder_in_features = optimum.params.decoder
    if model.directions is not None:  # decoder rows as combinations of the feature directions
        F = np.array(model.numeric().directions)
        decoder_in_features = optimum.params.decoder @ np.linalg.pinv(F)
        record["decoder_in_features"] = decoder_in_features.tolist()
    if model.n_features == 2:
        record["hedging"] = hedging_components(decoder_in_features)
    if spec.architecture == "batchtopk":  # the state on the threshold keeps a fraction
        from theory.batchtopk import kept_fractions

        fractions_SK = kept_fractions(model.numeric(), optimum.params, spec.k)
        record["kept_fraction"] = fractions_SK.T.tolist()
    if symbolic:
        record["symbolic"] = closed_forms_latex(model, spec, optimum.active)
    return record


def hedging_components(decoder_KN: np.ndarray) -> list[float]:
    """Each latent's child (second-feature) component of its unit decoder row, the row turned
    so that its parent (first-feature) component is >= 0; 0 when dead. Turning it makes the
    number the same for a latent and its complement (firing on the other states with the
    opposite decoder), which tie when there is no sparsity penalty."""
    norms_K = np.linalg.norm(decoder_KN, axis=1)
    return [
        float(d[1] * (1.0 if d[0] >= 0 else -1.0) / n) if n > 0 else 0.0
        for d, n in zip(decoder_KN, norms_K, strict=True)
    ]


def closed_forms_latex(
    model: FeatureModel, spec: SAESpec, active: tuple[tuple[bool, ...], ...]
) -> dict[str, str]:
    """LaTeX of the optimum's closed forms in symbols P_{pattern} of the state probabilities.

    Available for width-1 untied ReLU-L1 SAEs (the region's quadratic form on the sphere; at
    l1 = 0 the decoder angle and hedging ratio of a 2-feature model)."""
    if spec.architecture not in ("relu-l1", "matryoshka"):
        return {
            "note": f"closed forms are given for relu-l1; this {spec.architecture} optimum "
            "comes from the direction search of its region (theory.gated)"
        }
    if spec.width != 1 or spec.tied or len(spec.loss_levels().weight_J) > 1:
        return {
            "note": "closed forms are given for width-1 untied SAEs; this optimum comes "
            "from the reduced direction search of its activation region"
        }
    if not any(active[0]):
        return {"note": "the optimal latent never fires (the decoder bias alone is best)"}
    symbols = [sp.Symbol(f"P_{{{label}}}", positive=True) for label in model.state_labels()]
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
