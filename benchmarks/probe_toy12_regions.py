"""Why the exact optimum refuses the hedging paper's 12-state multi-latent toy at width 3: how
many activation regions survive the L1-inclusive complete-region bound, and how far those
regions really are from the optimum. Prints one JSON object.

Samples unordered triples of non-empty separable sets uniformly, computes the bound
theory.optimum uses for complete regions (subspace fits, clusters, silent states collapsed,
the Huber L1 share), and searches a subsample of the survivors to their region optimum (every
start, no incumbent). A small gap (region optimum - global optimum) would mean a near-optimal
plateau that no bound can cut; a large gap with a large slack (region optimum - bound) means
the bound is loose and a stronger one, not a faster search, is what the 60 s target needs.
The same regions are also searched at l1 = 0: a region whose reconstruction alone costs more
than the optimum is one that no L1 bound, however tight, is needed to cut.
Also measured on up to 20,000 survivors: the bound that keeps each latent's affine code but not
its rank-one decoder (least squares of the states on the joint design [1, each latent's (x, 1)
masked to the states it fires on]) and the rank of that design.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/probe_toy12_regions.py \
        [--samples 200000] [--searched 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from theory.features import hierarchical, independent, product  # noqa: E402
from theory.numeric import numeric_optimum  # noqa: E402
from theory.optimum import (  # noqa: E402
    _affine_design,
    _candidate,
    _direction_starts,
    _fit_residuals,
    _region_bound,
    _search_region,
    _with_sparsity,
    firing_rows,
    separable_masks,
)
from theory.sae import SAESpec  # noqa: E402


def quantiles(values: np.ndarray) -> dict:
    qs = (0.0, 0.01, 0.05, 0.5, 0.95, 1.0)
    return {f"q{int(q * 100)}": float(np.quantile(values, q)) for q in qs}


def affine_relaxation(world, fired_KS: np.ndarray) -> tuple[float, int]:  # noqa: ANN001
    """Residual and rank of the least-squares fit of the states on [1, fired_i * (x, 1) for
    each latent i]: the region's reconstruction loss with every decoder freed from rank one."""
    X, sqrt_p = world.states, np.sqrt(world.probabilities)[:, None]
    Z = _affine_design(X)
    design = np.hstack([np.ones((len(X), 1))] + [Z * fired[:, None] for fired in fired_KS])
    coef, *_ = np.linalg.lstsq(sqrt_p * design, sqrt_p * X, rcond=None)
    residual = float(((sqrt_p * (X - design @ coef)) ** 2).sum())
    return residual, int(np.linalg.matrix_rank(design))


def region_optima(world, spec: SAESpec, masks_RK: np.ndarray, keys, seed: int):  # noqa: ANN001, ANN201
    """Each region's optimum (every start, no incumbent) at the spec's l1 and at l1 = 0."""
    S = world.states.shape[0]
    optima = np.zeros((2, len(masks_RK)))
    for j, (masks_K, key) in enumerate(zip(masks_RK, keys, strict=True)):
        active = firing_rows(masks_K, S)
        starts = _direction_starts(world, active, np.random.default_rng((seed, int(key))), False)
        for row, variant in enumerate((spec, dataclasses.replace(spec, l1=0.0))):
            found = _search_region(world, variant, active, float(variant.l1), starts, math.inf)
            optima[row, j] = min(_candidate(world, variant, d, i, None).loss for d, i in found)
    return optima[0], optima[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--searched", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = product(independent([0.25, 0.25]), hierarchical(0.25, [0.2]))
    spec = SAESpec(3, 1e-2)
    world = model.numeric()
    S = world.states.shape[0]
    rng = np.random.default_rng(args.seed)

    t0 = time.perf_counter()
    target = numeric_optimum(model, spec, n_starts=32).loss
    t1 = time.perf_counter()
    masks = separable_masks(world)
    t2 = time.perf_counter()
    fits = _fit_residuals(world, spec.decoder_bias)
    picks_RK = np.sort(rng.integers(1, len(masks), size=(args.samples, 3)), axis=1)
    masks_RK = masks[picks_RK]
    subspace = np.asarray(_region_bound(fits, list(masks_RK.T), 0, 2**S - 1), dtype=float)
    bounds = _with_sparsity(world, spec, subspace, np.bitwise_or.reduce(masks_RK, axis=1))
    alive = np.nonzero(bounds < target)[0]
    t3 = time.perf_counter()

    searched = rng.choice(alive, size=min(args.searched, len(alive)), replace=False)
    optima, reconstruction = region_optima(world, spec, masks_RK[searched], searched, args.seed)
    t4 = time.perf_counter()
    relaxed = [affine_relaxation(world, firing_rows(masks_RK[r], S)) for r in alive[:20_000]]
    relaxed_residual = np.array([residual for residual, _ in relaxed])
    design_rank = np.bincount([rank for _, rank in relaxed], minlength=S + 1)
    share = len(alive) / args.samples
    n_sets = len(masks) - 1
    triples = math.comb(n_sets + 2, 3)  # multisets of 3 non-empty sets
    print(
        json.dumps(
            {
                "numeric_optimum": target,
                "separable_sets": n_sets,
                "sampled_triples": args.samples,
                "surviving_share": share,
                "surviving_share_se": math.sqrt(share * (1 - share) / args.samples),
                "surviving_triples_estimated": share * triples,
                "searched": len(searched),
                "seconds_per_searched_region_and_l1": (t4 - t3) / max(2 * len(searched), 1),
                "gap_region_optimum_minus_numeric": quantiles(optima - target),
                "slack_region_optimum_minus_bound": quantiles(optima - bounds[searched]),
                "regions_within_1e-3_of_optimum": int((optima - target < 1e-3).sum()),
                "share_above_optimum_at_l1_0": float((reconstruction > target).mean()),
                "gap_at_l1_0": quantiles(reconstruction - target),
                "affine_relaxation_residual": quantiles(relaxed_residual),
                "affine_relaxation_cuts": int((relaxed_residual >= target).sum()),
                "affine_design_rank_counts": {
                    str(rank): int(count) for rank, count in enumerate(design_rank) if count
                },
                "seconds": {
                    "numeric_optimum": t1 - t0,
                    "separable_sets": t2 - t1,
                    "bounds": t3 - t2,
                    "search": t4 - t3,
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
