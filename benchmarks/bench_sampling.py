"""Samples/s of the large-world sampler: 1,000 features in 256 dims, hierarchy, correlated roots.

The world of the issue's figure (target: 1M samples/s on this 2-core CPU): 400 Zipf roots in
clusters of 4 with shared triggers (correlation "clusters", sparse path), 100 trees of depth 2 with
exclusive children, magnitude noise; true L0 = 11. Contenders, timed interleaved (one batch each
per round, so a shared CPU slows them alike) at torch threads 1 and 2:
  sparse:        world.sample_sparse (activations + sparse codes), the fast path;
  sparse_dense_firing: world.sample (the same plus a dense (n, 1000) bool firing);
  copula:        the same world with a low-rank Gaussian copula instead of clusters (dense:
                 n x 400 Gaussians), through the same sample_sparse;
  write_roofline: torch.empty(n, 256).fill_(1), writing the output once (memory bandwidth
                 including fresh pages), the floor of any sampler that returns new activations;
  dense_matmul:  firing (n, 1000) float @ directions (1000, 256), the last step of a dense
                 sampler alone.
Ratios are medians over rounds of per-round wall-time ratios; samples_per_cpu_s divides by the
process CPU time (all threads), which a shared CPU distorts less. Prints one JSON object.

    .venv/bin/python benchmarks/bench_sampling.py [--batch 16384] [--rounds 15]
"""

import argparse
import json
import os
import statistics
import time

import torch

from toymodels.worlds import LargeWorld

WORLD = dict(
    n_features=1000,
    d_in=256,
    seed=0,
    firing="zipf",
    p_max=0.4,
    zipf_exponent=0.7,
    n_trees=100,
    branching=2,
    depth=2,
    exclusive_children=True,
    correlation="clusters",
    cluster_size=4,
    correlation_strength=(0.3, 0.9),
    magnitude_std=0.15,
)


def _seconds(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; CPU time (all threads) is less hurt by a shared CPU."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _measure(contenders: dict, batch: int, rounds: int) -> dict:
    for fn in contenders.values():
        fn()  # warm-up: caches of derived arrays, allocator
    times = {name: [] for name in contenders}
    cpu_times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            wall, cpu = _seconds(fn)
            times[name].append(wall)
            cpu_times[name].append(cpu)
    rates = {name: round(batch / statistics.median(t)) for name, t in times.items()}
    cpu_rates = {name: round(batch / statistics.median(t)) for name, t in cpu_times.items()}
    ratios = {
        f"sparse_vs_{name}": round(
            statistics.median(
                other / sparse for sparse, other in zip(times["sparse"], times[name], strict=True)
            ),
            3,
        )
        for name in contenders
        if name != "sparse"
    }
    return {"samples_per_s": rates, "ratios": ratios, "samples_per_cpu_s": cpu_rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    world = LargeWorld(**WORLD)
    copula_world = LargeWorld(**{**WORLD, "correlation": "low_rank", "correlation_rank": 16})
    generator = torch.Generator().manual_seed(0)
    firing_NF = world.sample_firing(args.batch, generator).float()
    contenders = {
        "sparse": lambda: world.sample_sparse(args.batch, generator),
        "sparse_dense_firing": lambda: world.sample(args.batch, generator),
        "copula": lambda: copula_world.sample_sparse(args.batch, generator),
        "write_roofline": lambda: torch.empty(args.batch, world.d_in).fill_(1.0),
        "dense_matmul": lambda: firing_NF @ world.directions,
    }
    by_threads = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        by_threads[threads] = _measure(contenders, args.batch, args.rounds)
    codes = world.sample_codes(65536, generator)
    print(
        json.dumps(
            {
                "world": {
                    "n_features": world.n_features,
                    "d_in": world.d_in,
                    "n_roots": world.n_roots,
                    "true_l0": round(world.true_l0, 3),
                    "measured_l0": round(len(codes.features) / codes.n_samples, 3),
                },
                "batch": args.batch,
                "rounds": args.rounds,
                "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
                "target_samples_per_s": 1_000_000,
                "by_torch_threads": by_threads,
            }
        )
    )


if __name__ == "__main__":
    main()
