"""Samples/s of a LargeWorld (1,000 features in 256 dims, low-rank copula, hierarchy) on this CPU.

A second world (10,000 independent Zipf features in 256 dims) measures the sparse path.

Peers measured in the same run on the same batch size:
  dense_matmul: only the final step of a dense sampler, firing (N, F) float @ directions (F, D);
  copula_randn: drawing only the copula's Gaussians (N x roots), the random numbers any exact
                dense Gaussian copula needs; the sampler can at best match it.
Ratios > 1 mean the full sampler is faster than that peer alone. Prints one JSON object.

    .venv/bin/python benchmarks/bench_sampling.py [--batch 65536] [--repeats 5] [--threads 2]

On a CPU shared with other jobs, 2 threads can be several times slower than 1 (threads wait for
each other); compare runs with --threads 1 and 2.
"""

import argparse
import json
import time

import torch

from toymodels.worlds import LargeWorld


def _rate(fn, batch: int, repeats: int) -> float:
    fn()  # warm-up: caches of derived arrays, allocator
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = LargeWorld(
        n_features=1000, d_in=256, seed=0, firing="zipf", p_max=0.4, zipf_exponent=0.7,
        n_trees=100, branching=2, depth=2, exclusive_children=True,
        correlation="low_rank", correlation_rank=16, magnitude_std=0.15,
    )
    generator = torch.Generator().manual_seed(0)
    firing_NF = world.sample_firing(args.batch, generator).float()
    rates = {
        "sample": _rate(lambda: world.sample(args.batch, generator), args.batch, args.repeats),
        "sample_firing_only": _rate(
            lambda: world.sample_firing(args.batch, generator), args.batch, args.repeats
        ),
        "dense_matmul": _rate(lambda: firing_NF @ world.directions, args.batch, args.repeats),
        "copula_randn": _rate(
            lambda: torch.randn(args.batch, world.n_roots, generator=generator),
            args.batch, args.repeats,
        ),
    }
    # Independent firing is drawn sparsely (work ~ firings, not samples x features); its peer
    # is the dense way: one uniform per (sample, feature).
    independent = LargeWorld(n_features=10_000, d_in=256, seed=0, firing="zipf", p_max=0.4)
    independent_rates = {
        "sample": _rate(lambda: independent.sample(args.batch, generator), args.batch,
                        args.repeats),
        "dense_uniforms": _rate(
            lambda: torch.rand(args.batch, independent.n_features, generator=generator),
            args.batch, args.repeats,
        ),
    }
    print(json.dumps({
        "world": {"n_features": world.n_features, "d_in": world.d_in,
                  "n_roots": world.n_roots, "true_l0": round(world.true_l0, 3)},
        "batch": args.batch,
        "torch_threads": torch.get_num_threads(),
        "samples_per_s": {k: round(v) for k, v in rates.items()},
        "ratio_sample_vs_dense_matmul": round(rates["sample"] / rates["dense_matmul"], 3),
        "ratio_sample_vs_copula_randn": round(rates["sample"] / rates["copula_randn"], 3),
        "target_samples_per_s": 1_000_000,
        "independent_world": {
            "n_features": independent.n_features, "true_l0": round(independent.true_l0, 3),
            "samples_per_s": {k: round(v) for k, v in independent_rates.items()},
            "ratio_sample_vs_dense_uniforms": round(
                independent_rates["sample"] / independent_rates["dense_uniforms"], 3
            ),
        },
    }))


if __name__ == "__main__":
    main()
