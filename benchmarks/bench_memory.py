"""Peak memory of training and evaluating an SAE on an activation cache larger than memory.

Builds (or reuses) a synthetic activation cache in llm.cache's format, --cache-factor times the
memory cap (default 4 x 1.5 GiB = 6 GiB of float32 rows), then runs, in a child process whose
address space is capped with RLIMIT_AS (ulimit -v) at --cap-mib: one epoch of TopK training over
every training shard (llm.training.train_on_cache, the `llm train` path: ActivationStream with a
pool of --buffer-shards shards) and the held-out evaluation over every held-out shard
(reconstruction_metrics over held_out_batches, the `llm train`/`llm eval` path). A process that
loaded the cache, or only its held-out quarter, would exceed the cap and fail. Reports the
child's peak resident set (ru_maxrss) and peak address space (VmPeak) next to the cache size.

Rows are sparse non-negative sums of 16 of 4096 random unit directions plus a common offset
(so the SAE has something to learn). The cache stays on disk for reuse: delete --cache-dir after.

    .venv/bin/python benchmarks/bench_memory.py
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as nnf

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def build_cache(cache_dir: Path, n_rows: int, d_model: int, shard_tokens: int, seed: int) -> None:
    """A complete cache of n_rows synthetic rows (resumes a partial one)."""
    # The extraction's own shard and manifest writers, so the files are those `llm extract` makes.
    from llm.cache import MANIFEST, _resume_or_start, _write_shard
    from toymodels.runs import atomic_write_json

    config = {
        "model": "synthetic",
        "layer": 0,
        "hook": "resid_post",
        "dtype": "float32",
        "corpus": "synthetic",
        "corpus_sha256": "0" * 64,
        "n_tokens": n_rows,
        "shard_tokens": shard_tokens,
        "batch_size": shard_tokens,
        "context_length": 128,
        "seed": seed,
        "d_model": d_model,
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = _resume_or_start(cache_dir, config, d_model)
    if manifest["complete"]:
        return
    directions_FD = nnf.normalize(
        torch.randn(4096, d_model, generator=torch.Generator().manual_seed(seed)), dim=-1
    )
    offset_D = 3 * directions_FD[0]
    while manifest["n_tokens"] < n_rows:
        index = len(manifest["shards"])
        generator = torch.Generator().manual_seed(seed + 1 + index)
        size = min(shard_tokens, n_rows - manifest["n_tokens"])
        features_NK = torch.randint(0, 4096, (size, 16), generator=generator)
        magnitudes_NK = torch.rand(size, 16, generator=generator) * 2
        rows_ND = nnf.embedding_bag(
            features_NK, directions_FD, per_sample_weights=magnitudes_NK, mode="sum"
        )
        ids_N = torch.zeros(size, dtype=torch.int32)
        _write_shard(cache_dir, manifest, [rows_ND + offset_D], [ids_N], size)
    manifest["complete"] = True
    atomic_write_json(cache_dir / MANIFEST, manifest)


def child(args: argparse.Namespace) -> None:
    """Train and evaluate under the address-space cap; print one JSON line."""
    cap = args.cap_mib * MiB
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    torch.set_num_threads(args.threads)
    from llm.evaluate import reconstruction_metrics
    from llm.training import held_out_batches, split_cache, train_on_cache
    from toymodels.sae import make_sae
    from toymodels.train import TrainConfig

    split = split_cache(args.cache_dir, held_out_tokens=args.held_out_tokens)
    train_rows = split.n_rows(split.train_shards)
    sae = make_sae(
        "topk",
        d_in=split.d_model,
        n_latents=args.width,
        k=args.k,
        generator=torch.Generator().manual_seed(0),
    )
    start = time.perf_counter()
    trained = train_on_cache(
        sae,
        split,
        TrainConfig(
            samples=train_rows // args.batch * args.batch,
            batch_size=args.batch,
            lr=1e-3,
            device="cpu",
            progress=False,
            checkpoint_every=10**9,
            log_every=10**9,
        ),
        buffer_shards=args.buffer_shards,
    )
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    quality = reconstruction_metrics(
        trained.sae, held_out_batches(split, scale=trained.input_scale)
    )[0]
    status = Path("/proc/self/status").read_text()
    vm_peak_kib = int(status.split("VmPeak:")[1].split()[0])
    print(
        json.dumps(
            {
                "train_rows": train_rows,
                "held_out_rows": split.n_rows(split.held_out_shards),
                "train_seconds": train_seconds,
                "eval_seconds": time.perf_counter() - start,
                "explained_variance": quality["explained_variance"],
                "l0": quality["l0"],
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_address_space_mib": vm_peak_kib / 1024,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/sae-memory-cache"))
    parser.add_argument("--cap-mib", type=int, default=1536, help="RLIMIT_AS of the child")
    parser.add_argument("--cache-factor", type=float, default=4.0, help="cache size / cap")
    parser.add_argument("--d-model", type=int, default=640)
    parser.add_argument("--shard-tokens", type=int, default=8192)
    parser.add_argument("--buffer-shards", type=int, default=4)
    parser.add_argument("--held-out-fraction", type=float, default=0.25)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--held-out-tokens", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    row_bytes = 4 * args.d_model
    n_rows = math.ceil(args.cache_factor * args.cap_mib * MiB / row_bytes)
    n_rows = math.ceil(n_rows / args.shard_tokens) * args.shard_tokens
    start = time.perf_counter()
    build_cache(args.cache_dir, n_rows, args.d_model, args.shard_tokens, args.seed)
    build_seconds = time.perf_counter() - start
    held_out = int(n_rows * args.held_out_fraction) // args.shard_tokens * args.shard_tokens
    command = [
        sys.executable,
        __file__,
        "--child",
        *("--cache-dir", str(args.cache_dir), "--cap-mib", str(args.cap_mib)),
        *("--buffer-shards", str(args.buffer_shards), "--held-out-tokens", str(held_out)),
        *("--width", str(args.width), "--k", str(args.k), "--batch", str(args.batch)),
        *("--threads", str(args.threads)),
    ]
    # glibc raises its mmap threshold after a large block is freed, so later shard-sized blocks
    # come from the heap, which keeps its high-water address space: under RLIMIT_AS that
    # allocator slack, not live data, would hit the cap. A fixed threshold returns freed blocks.
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_ARENA_MAX": "2"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment)
    if result.returncode != 0:
        sys.exit(f"the capped child failed:\n{result.stderr[-3000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    cache_bytes = sum(p.stat().st_size for p in args.cache_dir.glob("shard_*.safetensors"))
    print(
        json.dumps(
            {
                "benchmark": "SAE training + evaluation on a cache larger than memory",
                "cap_address_space_mib": args.cap_mib,
                "cache_mib": cache_bytes / MiB,
                "cache_over_cap": cache_bytes / (args.cap_mib * MiB),
                "cache_rows": n_rows,
                "build_seconds": build_seconds,
                **measured,
                "cache_over_peak_rss": cache_bytes / (measured["peak_rss_mib"] * MiB),
                "settings": vars(args) | {"cache_dir": str(args.cache_dir)},
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
