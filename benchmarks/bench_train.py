"""Tokens/s of TopK SAE training on cached LLM activations: ours vs SAELens, same data, same
settings, with held-out explained variance at the same L0.

Ours: toymodels' TopK SAE (16k latents, k = 32 by default) trained by toymodels.train on the
rows of --acts (tensor "acts", (rows, d_model), as benchmarks/peers/tl_extract.py --save writes
it), the last --eval-tokens rows held out, batches reshuffled on every pass exactly as the peer
script does, constant learning rate (SAELens's default schedule), b_dec initialised to the
geometric median of a batch and, with --normalize, inputs scaled to mean norm sqrt(d_model)
(both inside the timed part, as the peer's norm estimate is). The peer,
benchmarks/peers/saelens_train.py, trains SAELens's TopKTrainingSAE with its SAETrainer in
.peer-venv. Runs are interleaved (ours, peer, ours, peer, ...) because the CPU is shared; each
pair's ratio is reported, and the median; so is the ratio of tokens per CPU-second (ours: the
timed part; the peer: its whole process, imports included), which a shared CPU disturbs less.

    .venv/bin/python benchmarks/bench_train.py --acts /tmp/gemma_l8_acts.safetensors

--precision fp32 bf16 trains ours once per precision (TrainConfig.precision: bf16 autocast, fp32
master weights) and reports each one's held-out explained variance. --roofline-rounds N first
measures the training step against this CPU's matmul roofline, interleaved round by round:
a plain torch.mm of the step's dense encoder product ((B, d) x (d, F), in fp32 and in bf16) and
one training step of the same SAE on the same batch in each precision. The TopK step's only
dense product is that forward one (its backward goes through the k chosen latents, O(B k d)),
so the step reaches the roofline fraction mm time / step time (CPU seconds: one thread, so
they are the work's own time however loaded the machine is; wall-time ratios are also given).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from llm.evaluate import reconstruction_metrics
from llm.training import normalisation_scale
from toymodels.sae import make_sae
from toymodels.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / ".peer-venv" / "bin" / "python"
PEER_SCRIPT = ROOT / "benchmarks" / "peers" / "saelens_train.py"


def shuffled_batches(acts_ND: torch.Tensor, seed: int):
    """data(batch) over the rows, reshuffled on every pass; a pass's last partial batch is
    dropped (the peer script's order of work)."""
    generator = torch.Generator().manual_seed(seed)
    state = {"order": torch.empty(0, dtype=torch.long), "next": 0}

    def data(batch: int) -> torch.Tensor:
        if state["next"] + batch > len(state["order"]):
            state["order"], state["next"] = torch.randperm(len(acts_ND), generator=generator), 0
        rows = state["order"][state["next"] : state["next"] + batch]
        state["next"] += batch
        return acts_ND[rows]

    return data


def measure_ours(
    args: argparse.Namespace,
    train_ND: torch.Tensor,
    held_out_ND: torch.Tensor,
    precision: str = "fp32",
) -> dict:
    torch.manual_seed(args.seed)
    sae = make_sae(
        "topk",
        d_in=train_ND.shape[1],
        n_latents=args.width,
        k=args.k,
        generator=torch.Generator().manual_seed(args.seed),
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    scale = normalisation_scale(train_ND[: args.batch]) if args.normalize else 1.0
    sae.init_b_dec(train_ND[: args.batch] * scale)
    source = shuffled_batches(train_ND, args.seed)
    train(
        sae,
        (lambda batch: source(batch) * scale) if args.normalize else source,
        TrainConfig(
            samples=args.tokens,
            batch_size=args.batch,
            lr=args.lr,
            decay_fraction=0.0,
            seed=args.seed,
            device="cpu",
            progress=False,
            log_every=10**9,
            precision=precision,
        ),
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    quality = reconstruction_metrics(sae, held_out_ND * scale)[0]
    tokens = args.tokens // args.batch * args.batch
    return {
        "precision": precision,
        "tokens_per_s": tokens / seconds,
        "tokens_per_cpu_s": tokens / cpu_seconds,
        "explained_variance": quality["explained_variance"],
        "l0": quality["l0"],
        "tokens": tokens,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


def measure_roofline(args: argparse.Namespace, train_ND: torch.Tensor) -> dict:
    """Median CPU seconds (and wall seconds) of the step's dense encoder product as a plain
    torch.mm and of one training step (loss, backward, Adam), per precision, interleaved over
    args.roofline_rounds."""
    sae = make_sae(
        "topk",
        d_in=train_ND.shape[1],
        n_latents=args.width,
        k=args.k,
        generator=torch.Generator().manual_seed(args.seed),
    )
    batch_BD = train_ND[: args.batch].contiguous()
    scale = normalisation_scale(batch_BD) if args.normalize else 1.0
    batch_BD = batch_BD * scale
    sae.init_b_dec(batch_BD)
    optimizer = torch.optim.Adam(sae.parameters(), lr=args.lr, fused=True)
    W_enc_DF = sae.W_enc[0].detach().contiguous()

    def step(precision: str) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            losses = sae.loss(batch_BD)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()

    times: dict[str, list[float]] = {}
    operands = {
        "fp32": (batch_BD, W_enc_DF),
        "bf16": (batch_BD.bfloat16(), W_enc_DF.bfloat16()),
    }
    for precision in ("fp32", "bf16"):  # untimed: first-call costs (lazy imports, allocations)
        step(precision)
        torch.mm(*operands[precision])
    cpu_times: dict[str, list[float]] = {}
    for _ in range(args.roofline_rounds):
        for precision in ("fp32", "bf16"):
            for name, work, argument in (
                (f"mm_{precision}", lambda pair: torch.mm(*pair), operands[precision]),
                (f"step_{precision}", step, precision),
            ):
                start, cpu_start = time.perf_counter(), time.process_time()
                work(argument)
                times.setdefault(name, []).append(time.perf_counter() - start)
                cpu_times.setdefault(name, []).append(time.process_time() - cpu_start)
    # Ratios from CPU seconds: other jobs on a shared CPU stretch wall time (descheduled
    # threads), not the CPU time the work takes; wall-time ratios are reported too.
    seconds = {name: statistics.median(values) for name, values in cpu_times.items()}
    wall = {name: statistics.median(values) for name, values in times.items()}
    flop = 2 * args.batch * train_ND.shape[1] * args.width
    result = {
        "dense_product_gflop": flop / 1e9,
        "wall_seconds": times,
        "cpu_seconds": cpu_times,
        "wall_step_fraction_of_roofline_fp32": wall["mm_fp32"] / wall["step_fp32"],
        "wall_step_fraction_of_roofline_bf16": wall["mm_bf16"] / wall["step_bf16"],
        "wall_step_speedup_bf16_vs_fp32": wall["step_fp32"] / wall["step_bf16"],
    }
    for precision in ("fp32", "bf16"):
        result[f"mm_gflop_per_s_{precision}"] = flop / seconds[f"mm_{precision}"] / 1e9
        result[f"step_gflop_per_s_{precision}"] = flop / seconds[f"step_{precision}"] / 1e9
        result[f"step_fraction_of_roofline_{precision}"] = (
            seconds[f"mm_{precision}"] / seconds[f"step_{precision}"]
        )
    result["step_speedup_bf16_vs_fp32"] = seconds["step_fp32"] / seconds["step_bf16"]
    result["roofline_bf16_vs_fp32"] = seconds["mm_fp32"] / seconds["mm_bf16"]
    return result


def measure_peer(args: argparse.Namespace) -> dict:
    command = [
        str(PEER_PYTHON),
        str(PEER_SCRIPT),
        "--acts",
        str(args.acts),
        "--width",
        str(args.width),
        "--k",
        str(args.k),
        "--tokens",
        str(args.tokens),
        "--batch",
        str(args.batch),
        "--eval-tokens",
        str(args.eval_tokens),
        "--lr",
        str(args.lr),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
        "--normalize",
        "expected_average_only_in" if args.normalize else "none",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        command, capture_output=True, text=True, check=True, cwd=PEER_SCRIPT.parent
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    peer = json.loads(result.stdout.strip().splitlines()[-1])
    # CPU time of the whole peer process: its imports and data loading count against it too.
    cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        **peer,
        "process_cpu_seconds": cpu_seconds,
        "tokens_per_cpu_s": peer["tokens"] / cpu_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acts", required=True, help="safetensors file with tensor 'acts'")
    parser.add_argument("--width", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=81_920, help="training tokens per run")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument(
        "--normalize",
        action="store_true",
        help="scale inputs to mean norm sqrt(d_model) (peer: expected_average_only_in)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="interleaved (ours, peer) pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-peer", action="store_true", help="measure ours alone")
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["fp32"],
        choices=["fp32", "bf16"],
        help="train ours once per precision in each repeat (the peer runs fp32)",
    )
    parser.add_argument(
        "--roofline-rounds",
        type=int,
        default=0,
        help="rounds of the step vs matmul-roofline measurement (0: skip it)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    acts_ND = load_file(args.acts)["acts"].float()
    train_ND, held_out_ND = acts_ND[: -args.eval_tokens], acts_ND[-args.eval_tokens :]
    roofline = None
    if args.roofline_rounds > 0:
        roofline = measure_roofline(args, train_ND)
        print(json.dumps(roofline), file=sys.stderr)
    pairs = []
    for _ in range(args.repeats):
        ours, *others = [
            measure_ours(args, train_ND, held_out_ND, precision) for precision in args.precision
        ]
        peer = None if args.no_peer else measure_peer(args)
        pairs.append(
            {
                "ours": ours,
                "ours_other_precisions": others,
                "peer": peer,
                "load_average_1min": os.getloadavg()[0],
                "ratio_ours_vs_peer": None
                if peer is None
                else ours["tokens_per_s"] / peer["tokens_per_s"],
                "cpu_ratio_ours_vs_peer": None
                if peer is None
                else ours["tokens_per_cpu_s"] / peer["tokens_per_cpu_s"],
            }
        )
        print(json.dumps(pairs[-1]), file=sys.stderr)
    ratios = [p["ratio_ours_vs_peer"] for p in pairs if p["ratio_ours_vs_peer"] is not None]
    print(
        json.dumps(
            {
                "benchmark": "TopK SAE training on cached activations: tokens per second",
                "width": args.width,
                "k": args.k,
                "d_model": acts_ND.shape[1],
                "batch": args.batch,
                "tokens_per_run": args.tokens,
                "normalize": args.normalize,
                "pairs": pairs,
                "median_ratio_ours_vs_peer": statistics.median(ratios) if ratios else None,
                "roofline": roofline,
                "torch_threads": torch.get_num_threads(),
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
