"""SAE-samples/s of a toy sweep trained as one stack vs SAELens's toy trainer, one SAE at a time.

Ours: N ReLU+L1 SAEs (widths cycling through --widths) in ONE stacked model trained by
toymodels.train on the hedging paper's hierarchical two-feature world (parent p = 0.25, child
p = 0.2 given the parent) embedded in d_in dimensions; every member sees --samples samples, drawn
once per step and shared by all members (the timing includes sampling). The peer,
benchmarks/peers/saelens_toy.py, trains the same kind of SAEs on the same world with
sae_lens.synthetic.train_toy_sae one after another in .peer-venv. Its time per SAE-sample does
not depend on how many SAEs it trains or for how long (a fixed cost per step), so --peer-n-saes
and --peer-samples may be smaller than ours and its rate is extrapolated per SAE-sample; with
--peer-n-saes a multiple of the number of widths it sees every width equally often.
The CPU is shared, so --rounds alternates ours and the peer and reports each round's ratio and
their median. Prints one JSON object.

    .venv/bin/python benchmarks/bench_toy_sweep.py --threads 1        # runs the peer if present
    .venv/bin/python benchmarks/bench_toy_sweep.py --peer-json peer.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from theory.features import scenario
from toymodels.sae import make_sae
from toymodels.sampling import orthonormal_directions, sample_activations
from toymodels.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / ".peer-venv" / "bin" / "python"
PEER_SCRIPT = ROOT / "benchmarks" / "peers" / "saelens_toy.py"


def measure_ours(args: argparse.Namespace) -> dict:
    world = scenario("hierarchical").numeric()
    directions = orthonormal_directions(2, args.d_in, torch.Generator().manual_seed(args.seed))
    widths = [args.widths[i % len(args.widths)] for i in range(args.n_saes)]
    sae = make_sae(
        "relu-l1",
        d_in=args.d_in,
        n_latents=max(widths),
        n_members=args.n_saes,
        widths=widths,
        l1=args.l1,
        generator=torch.Generator().manual_seed(args.seed),
    )

    def data(batch: int) -> torch.Tensor:
        return sample_activations(world, directions, batch)

    # Untimed warm-up, as in the peer: one-time costs (lazy imports such as torch._dynamo).
    train(
        make_sae("relu-l1", d_in=args.d_in, n_latents=1),
        data,
        TrainConfig(samples=args.batch, batch_size=args.batch, device=args.device, progress=False),
    )
    start = time.perf_counter()
    schedule = TrainConfig(
        samples=args.samples,
        batch_size=args.batch,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        progress=False,
        log_every=100,
    )
    log = train(sae, data, schedule)
    seconds = time.perf_counter() - start
    steps = args.samples // args.batch
    return {
        "samples_per_s": args.n_saes * steps * args.batch / seconds,
        "seconds": seconds,
        "n_saes": args.n_saes,
        "samples_per_sae": steps * args.batch,
        "final_mean_loss": float(log.as_arrays()["total"][-1].mean()),
        "device": str(next(sae.parameters()).device),
    }


def measure_peer(args: argparse.Namespace) -> dict | None:
    if args.peer_json:
        return json.loads(Path(args.peer_json).read_text())
    if args.no_peer or not (PEER_PYTHON.exists() and PEER_SCRIPT.exists()):
        return None
    command = [
        str(PEER_PYTHON),
        str(PEER_SCRIPT),
        "--n-saes",
        str(args.peer_n_saes),
        "--samples",
        str(args.peer_samples or args.samples),
        "--d-in",
        str(args.d_in),
        "--widths",
        ",".join(map(str, args.widths)),
        "--batch",
        str(args.batch),
        "--l1",
        str(args.l1),
        "--lr",
        str(args.lr),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, check=True, cwd=PEER_SCRIPT.parent
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-saes", type=int, default=64)
    parser.add_argument("--samples", type=int, default=2_000_000, help="samples per SAE")
    parser.add_argument("--d-in", type=int, default=50)
    parser.add_argument(
        "--widths",
        type=lambda s: [int(w) for w in s.split(",")],
        default=[1, 2, 3, 4],
        help="comma-separated widths, cycled over the SAEs",
    )
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--l1", type=float, default=0.01)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--peer-n-saes", type=int, default=4, help="SAEs the peer trains one after another"
    )
    parser.add_argument(
        "--peer-samples", type=int, help="samples per SAE for the peer (default: --samples)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternate ours and the peer this many times"
    )
    parser.add_argument("--peer-json", help="read the peer's JSON from this file instead")
    parser.add_argument("--no-peer", action="store_true", help="report ours alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds = []
    for _ in range(args.rounds):
        ours = measure_ours(args)
        peer = measure_peer(args)
        rounds.append(
            {
                "ours": ours,
                "peer": peer,
                "ratio_ours_vs_peer": (
                    None if peer is None else ours["samples_per_s"] / peer["samples_per_s"]
                ),
                "load_average_1min": os.getloadavg()[0],
            }
        )
    ratios = [r["ratio_ours_vs_peer"] for r in rounds if r["ratio_ours_vs_peer"] is not None]
    report = {
        "benchmark": "toy sweep: SAE-samples per second",
        "rounds": rounds,
        "median_ratio_ours_vs_peer": statistics.median(ratios) if ratios else None,
        "torch_threads": torch.get_num_threads(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
