"""Data-parallel scaling of SAE training: samples/s of 1 process vs N gloo processes on the CPU.

Each run trains the same TopK SAE with the same global batch on rows drawn (global RNG) from one
fixed activation matrix, one torch thread per process. Rank 0 times `train` alone (the process
group is already open, so start-up is excluded). Scaling efficiency = samples/s of N processes /
(N x samples/s of 1). Runs alternate (1, N, 1, N, ...) because the CPU is shared; the median
of the per-pair efficiencies is reported, with the largest relative difference between the
N-process and the 1-process weights (the correctness side of the same runs).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_distributed.py --processes 2 --repeats 2
"""

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from toymodels import distributed
from toymodels.sae import make_sae
from toymodels.train import TrainConfig, train


def build(args: argparse.Namespace) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(args.seed)
    sae = make_sae("topk", d_in=args.d_in, n_latents=args.width, k=args.k, generator=generator)
    return sae.to(getattr(torch, args.dtype))


def rows(args: argparse.Namespace):
    acts_ND = torch.randn(args.rows, args.d_in, generator=torch.Generator().manual_seed(1))
    return lambda batch: acts_ND[torch.randint(len(acts_ND), (batch,))]


def rank_main(rank: int, world_size: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    config = TrainConfig(
        samples=args.batch * args.steps,
        batch_size=args.batch,
        lr=1e-3,
        seed=args.seed,
        progress=False,
        device="cpu",
    )
    sae, data = build(args), rows(args)
    with distributed.session("cpu") as me:
        distributed.barrier()
        start = time.perf_counter()
        train(sae, data, config)
        seconds = time.perf_counter() - start
    if me.is_main:
        torch.save({"seconds": seconds, "state": sae.state_dict()}, out)


def measure(world_size: int, args: argparse.Namespace, folder: Path) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = folder / f"world{world_size}.pt"
    mp.spawn(rank_main, args=(world_size, port, args, str(out)), nprocs=world_size)
    return torch.load(out, weights_only=False)


def max_relative_difference(got: dict, want: dict) -> float:
    return max(
        float((got[n] - want[n]).abs().max() / want[n].abs().max().clamp(min=1e-12))
        for n in want
        if want[n].is_floating_point()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2048, help="global batch")
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--rows", type=int, default=65_536)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            one = measure(1, args, Path(tmp))
            many = measure(args.processes, args, Path(tmp))
            samples = args.batch * args.steps
            pair = {
                "samples_per_s_1": samples / one["seconds"],
                f"samples_per_s_{args.processes}": samples / many["seconds"],
                "efficiency": one["seconds"] / (args.processes * many["seconds"]),
                "max_relative_weight_difference": max_relative_difference(
                    many["state"], one["state"]
                ),
                "load_1min": os.getloadavg()[0],
            }
            pairs.append(pair)
            print(json.dumps(pair))
    efficiency = statistics.median(p["efficiency"] for p in pairs)
    print(json.dumps({"processes": args.processes, "median_efficiency": efficiency}))


if __name__ == "__main__":
    main()
