"""Theory speed and agreement: exact optima vs the independent numeric minimiser (random width-1
models, random models of every variant at widths 1-3, and the three larger cases of issue 12;
TopK, BatchTopK and JumpReLU at width 2), symbolic cold start, vectorised predictions. Prints one
JSON object. Times are wall-clock and CPU seconds of this process and its children (on a shared
machine the CPU time is the steadier figure; searches of many regions use every CPU).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_theory.py [--models 100]
        [--guarantee-models 60]
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_theory.py --gated-only --models 20
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_theory.py --larger-only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from theory.features import from_table, hierarchical, independent, product, scenario  # noqa: E402
from theory.numeric import numeric_optimum  # noqa: E402
from theory.optimum import global_optimum  # noqa: E402
from theory.sae import SAESpec  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children: an exact optimum with many
    regions shares them among processes (theory.optimum.PARALLEL_REGIONS)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def random_model(rng: np.random.Generator, n_features: int, magnitudes: list | None = None):  # noqa: ANN201
    """All 2^n patterns, the all-zero state holding 40-80% of the mass."""
    weights = rng.uniform(0.05, 1.0, size=2**n_features - 1)
    zero = rng.uniform(0.4, 0.8)
    probs = np.concatenate([[zero], (1 - zero) * weights / weights.sum()])
    patterns = [format(i, f"0{n_features}b") for i in range(2**n_features)]
    return from_table(dict(zip(patterns, probs, strict=True)), magnitudes)


def every_variant(n_models: int, seed: int = 2) -> dict:
    """The guarantee over random 2-feature models (random magnitudes for half of them) and random
    specs: width 1-3, tied or untied, with or without a decoder bias, l1 from 0 to 0.3."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_models):
        magnitudes = list(rng.uniform(0.5, 2.0, size=2)) if rng.random() < 0.5 else None
        model = random_model(rng, 2, magnitudes)
        spec = SAESpec(
            int(rng.integers(1, 4)),
            float(rng.choice([0.0, 1e-3, 5e-3, 2e-2, 5e-2, 1e-1, 3e-1])),
            tied=bool(rng.random() < 0.5),
            decoder_bias=bool(rng.random() < 0.5),
        )
        c0 = cpu_seconds()
        exact = global_optimum(model, spec)
        c1 = cpu_seconds()
        numeric = numeric_optimum(model, spec, n_starts=32)
        c2 = cpu_seconds()
        rows.append((spec, exact.loss - numeric.loss, c1 - c0, c2 - c1))
    gaps = np.array([row[1] for row in rows])
    by_kind = {}
    for spec, _, t_exact, t_numeric in rows:
        kind = f"width{spec.width}_{'tied' if spec.tied else 'untied'}"
        entry = by_kind.setdefault(kind, {"models": 0, "exact_cpu_s": 0.0, "numeric_cpu_s": 0.0})
        entry["models"] += 1
        entry["exact_cpu_s"] += t_exact
        entry["numeric_cpu_s"] += t_numeric
    return {
        "models": n_models,
        "exact_reaches_numeric_within_1e-6": int((gaps <= 1e-6).sum()),
        "exact_strictly_better_by_1e-6": int((gaps < -1e-6).sum()),
        "max_gap_exact_minus_numeric": float(gaps.max()),
        "cpu_seconds_by_kind": by_kind,
    }


def relu_width1(rng: np.random.Generator) -> SAESpec:
    return SAESpec(1, float(rng.choice([0.0, 1e-3, 2e-2, 1e-1])))


GATED = {  # architecture -> its width-2 spec with a drawn hyperparameter
    "topk_k1": lambda rng: SAESpec(2, architecture="topk", decoder_bias=bool(rng.integers(2))),
    "batchtopk_k1": lambda rng: SAESpec(
        2, architecture="batchtopk", decoder_bias=bool(rng.integers(2))
    ),
    "jumprelu": lambda rng: SAESpec(
        2, architecture="jumprelu", l0=float(rng.choice([0.0, 5e-3, 3e-2, 1e-1]))
    ),
}


def exact_vs_numeric(
    n_models: int,
    n_features: int,
    seed: int = 0,
    spec_of: Callable[[np.random.Generator], SAESpec] = relu_width1,
) -> dict:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_models):
        model = random_model(rng, n_features)
        spec = spec_of(rng)
        t0 = time.perf_counter()
        exact = global_optimum(model, spec)
        t1 = time.perf_counter()
        numeric = numeric_optimum(model, spec, n_starts=32)
        t2 = time.perf_counter()
        rows.append((exact.loss, numeric.loss, t1 - t0, t2 - t1))
    exact_loss, numeric_loss, t_exact, t_numeric = map(np.array, zip(*rows, strict=True))
    gap = exact_loss - numeric_loss
    return {
        "models": n_models,
        "n_features": n_features,
        "exact_reaches_numeric_within_1e-6": int((gap <= 1e-6).sum()),
        "exact_strictly_better_by_1e-6": int((gap < -1e-6).sum()),
        "max_gap_exact_minus_numeric": float(gap.max()),
        "exact_seconds_per_model_median": float(np.median(t_exact)),
        "exact_seconds_per_model_max": float(t_exact.max()),
        "numeric_seconds_per_model_median": float(np.median(t_numeric)),
        "speedup_exact_over_numeric": float(t_numeric.sum() / t_exact.sum()),
    }


def larger_cases() -> dict:
    """Issue 12's speed cases, exact optimum vs the numeric minimiser (32 starts) in the same run:
    width 2 on an 8-state 3-feature model (independent, P = 0.3, 0.2, 0.15), width 3 on the
    correlated 2-feature scenario, and the hedging paper's multi-latent toy (features 1-3
    independent at 0.25, feature 4 a child of feature 3 with P(4 | 3) = 0.2: 12 states), width 3.
    All untied with a decoder bias. An exact optimum that refuses the model records its error."""
    cases = {
        "width2_three_features_8_states": (independent([0.3, 0.2, 0.15]), SAESpec(2, 2e-2)),
        "width3_two_features": (scenario("correlated"), SAESpec(3, 2e-2)),
        "width3_multi_latent_toy_12_states": (
            product(independent([0.25, 0.25]), hierarchical(0.25, [0.2])),
            SAESpec(3, 1e-2),
        ),
    }
    rows = {}
    for name, (model, spec) in cases.items():
        t0, c0 = time.perf_counter(), cpu_seconds()
        try:
            exact = global_optimum(model, spec)
            exact_loss, regions, error = exact.loss, exact.regions_tried, None
        except ValueError as err:
            exact_loss, regions, error = None, None, str(err)
        t1, c1 = time.perf_counter(), cpu_seconds()
        numeric = numeric_optimum(model, spec, n_starts=32)
        t2, c2 = time.perf_counter(), cpu_seconds()
        rows[name] = {
            "states": model.n_states,
            "exact_seconds": t1 - t0,
            "exact_cpu_seconds": c1 - c0,
            "numeric_seconds": t2 - t1,
            "numeric_cpu_seconds": c2 - c1,
            "exact_over_numeric_cpu_time": (c1 - c0) / (c2 - c1),
            "regions_searched": regions,
            "exact_loss": exact_loss,
            "numeric_loss": numeric.loss,
            "exact_minus_numeric_loss": None if exact_loss is None else exact_loss - numeric.loss,
            "exact_error": error,
        }
    return rows


def _cold(code: str) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {"in_process": float(out.stdout.strip()), "with_interpreter": time.perf_counter() - t0}


def symbolic_cold_start() -> dict:
    """Fresh interpreters: the 2-feature width-1 closed form (derive --symbolic), and the whole
    catalogue of named two-feature predictions in p, a, b."""
    derive = (
        "import time; t=time.perf_counter();"
        "from theory.features import scenario; from theory.sae import SAESpec;"
        "from theory.derive import derive;"
        "derive(scenario('correlated'), SAESpec(1, 0.0), symbolic=True);"
        "print(time.perf_counter()-t)"
    )
    catalogue = (
        "import time; t=time.perf_counter();"
        "from theory.predictions import catalogue; catalogue();"
        "print(time.perf_counter()-t)"
    )
    return {
        "symbolic_width1_two_feature_seconds_cold": _cold(derive),
        "prediction_catalogue_seconds_cold": _cold(catalogue),
    }


def vectorised_predictions(n_points: int = 1_000_000) -> dict:
    from theory.predictions import width1_decoder_ratio

    prediction = width1_decoder_ratio(("10", "11"))
    grid = np.random.default_rng(0).uniform(0.05, 0.5, size=(3, n_points))
    prediction(*grid[:, :10])  # warm the lambdified function
    t0 = time.perf_counter()
    values = prediction(*grid)
    seconds = time.perf_counter() - t0
    return {
        "prediction_points": n_points,
        "prediction_seconds": seconds,
        "finite_fraction": float(np.isfinite(values).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--guarantee-models", type=int, default=60)
    parser.add_argument("--gated-only", action="store_true", help="only the gated rows")
    parser.add_argument("--larger-only", action="store_true", help="only issue 12's speed cases")
    args = parser.parse_args()
    if args.larger_only:
        print(json.dumps(larger_cases(), indent=2))
        return
    gated = {
        f"two_feature_width2_{name}": exact_vs_numeric(args.models, 2, 2, spec_of)
        for name, spec_of in GATED.items()
    }
    if args.gated_only:
        print(json.dumps(gated, indent=2))
        return
    result = {
        **gated,
        "two_feature_width1": exact_vs_numeric(args.models, 2),
        "three_feature_width1": exact_vs_numeric(args.models, 3, seed=1),
        "every_variant_two_features": every_variant(args.guarantee_models),
        "larger_cases": larger_cases(),
        **symbolic_cold_start(),
        **vectorised_predictions(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
