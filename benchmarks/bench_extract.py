"""Tokens per second of the truncated activation extraction (llm.models.activations), against a
plain transformers forward with output_hidden_states=True, the machine's matmul roofline and the
TransformerLens peer, all measured in the same run on the same batches.

    .venv/bin/python benchmarks/bench_extract.py [--layer 8] [--batch 32] [--ctx 128]

Batches come from the embedded corpus (python-docs). The roofline is the best of a few float32
(and bfloat16) GEMMs of the model's own shapes; the FLOP count covers the layers actually run:
2 x (linear weights of blocks 0..L) per token plus attention (QK^T and AV over the keys each
query sees, causal and sliding-window aware). The CPU may be shared with other jobs, so fp32,
bf16 and the GEMM peaks are measured interleaved, batch by batch, and each ratio is the median of
per-batch ratios; the full forward is compared with our fp32 runs on the same batch just before
and after it. The TransformerLens peer runs
run_with_cache(stop_at_layer=L+1) from the benchmark-only venv .peer-venv when it exists
(benchmarks/peers/tl_extract.py, random token ids); else pass its JSON with --peer-json.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llm.corpus import load_corpus, token_batches  # noqa: E402
from llm.models import LoadedModel, activations, load_model  # noqa: E402


def matmul_gflops(dtype: torch.dtype, shapes: list[tuple[int, int, int]], repeats: int = 5):
    """Best GFLOP/s over (m, k, n) GEMMs of `dtype`, each timed after a warm-up."""
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9)
    return best


def flops_per_token(model: LoadedModel, layer: int, context_length: int) -> float:
    """Useful FLOPs per token of blocks 0..layer: linear layers plus attention scores and mixing."""
    config = model.model.config.get_text_config()
    head_dim = getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * model.n_layers
    window = getattr(config, "sliding_window", None) or context_length
    total = 0.0
    for index in range(layer + 1):
        block = model.layers[index]
        linears = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]
        total += 2 * sum(linear.weight.numel() for linear in linears)
        reach = window if layer_types[index] == "sliding_attention" else context_length
        mean_keys = sum(min(t, reach) for t in range(1, context_length + 1)) / context_length
        total += 4 * config.num_attention_heads * head_dim * mean_keys
    return total


def timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def full_forward(model: LoadedModel, batch) -> None:
    """The plain transformers forward with every hidden state (and the unembedding)."""
    with torch.no_grad():
        model.model(
            input_ids=batch.input_ids_BT,
            attention_mask=batch.attention_mask_BT,
            output_hidden_states=True,
        )


def peer_figure(args: argparse.Namespace) -> dict | None:
    if args.peer_json:
        return json.loads(Path(args.peer_json).read_text())
    python, script = ROOT / ".peer-venv/bin/python", ROOT / "benchmarks/peers/tl_extract.py"
    if not (python.exists() and script.exists()):
        return None
    command = [
        str(python),
        str(script),
        "--layer",
        str(args.layer),
        "--batch",
        str(args.batch),
        "--ctx",
        str(args.ctx),
        "--n-batches",
        str(args.n_batches),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--layer", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--n-batches", type=int, default=4, help="timed batches (plus a warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peer-json", help="TransformerLens peer result, if not run here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    models = {dtype: load_model(args.model, "cpu", dtype) for dtype in ("float32", "bfloat16")}
    model = models["float32"]
    stream = token_batches(model.tokenizer, load_corpus(), args.ctx, args.batch)
    batches = [next(stream) for _ in range(args.n_batches + 1)]
    tokens = args.batch * args.ctx
    flops = flops_per_token(model, args.layer, args.ctx)
    d, f = model.d_model, model.model.config.get_text_config().intermediate_size
    shapes = [(tokens, d, f), (tokens, f, d), (2048, 2048, 2048)]

    def extract(dtype, batch):
        return activations(models[dtype], batch.input_ids_BT, batch.attention_mask_BT, args.layer)

    for dtype in models:  # warm-up: first-call allocations and kernel selection
        extract(dtype, batches[0])
    # The CPU may be shared, so every figure is taken per batch, interleaved, and the ratios are
    # medians of per-batch ratios: each compares measurements made seconds apart.
    rows, outputs = [], {"float32": [], "bfloat16": []}
    for batch in batches[1:]:
        row = {
            "peak_fp32": matmul_gflops(torch.float32, shapes),
            "peak_bf16": matmul_gflops(torch.bfloat16, shapes),
        }
        for dtype in models:
            row[dtype], acts_BTD = timed(extract, dtype, batch)
            outputs[dtype].append(acts_BTD)
        rows.append(row)
    full_seconds, _ = timed(full_forward, model, batches[1])
    fp32_after, _ = timed(extract, "float32", batches[1])

    reference = torch.cat([a.flatten() for a in outputs["float32"]])
    half = torch.cat([h.flatten() for h in outputs["bfloat16"]]).float()
    median = statistics.median
    ours_fp32 = median([tokens / r["float32"] for r in rows])
    ours_bf16 = median([tokens / r["bfloat16"] for r in rows])
    peer = peer_figure(args)
    result = {
        "model": f"{args.model} (4-bit GGUF, dequantized)",
        "layer": args.layer,
        "batch": args.batch,
        "ctx": args.ctx,
        "threads": args.threads,
        "timed_batches": args.n_batches,
        "mflop_per_token": flops / 1e6,
        "matmul_gflops_fp32": median([r["peak_fp32"] for r in rows]),
        "matmul_gflops_bf16": median([r["peak_bf16"] for r in rows]),
        "ours_fp32_tokens_per_s": ours_fp32,
        "ours_bf16_tokens_per_s": ours_bf16,
        "full_forward_fp32_tokens_per_s": tokens / full_seconds,
        # The full forward against our fp32 runs on the same batch just before and after it.
        "ratio_vs_full_forward": full_seconds / statistics.mean([rows[0]["float32"], fp32_after]),
        "fraction_of_fp32_roofline": median(
            [tokens * flops / r["float32"] / 1e9 / r["peak_fp32"] for r in rows]
        ),
        "fraction_of_bf16_roofline": median(
            [tokens * flops / r["bfloat16"] / 1e9 / r["peak_bf16"] for r in rows]
        ),
        "bf16_speedup": median([r["float32"] / r["bfloat16"] for r in rows]),
        "bf16_relative_error": float((half - reference).norm() / reference.norm()),
        "peer_tokens_per_s": peer and peer["tokens_per_s"],
        "ratio_vs_peer": peer and ours_fp32 / peer["tokens_per_s"],
    }
    for key, value in result.items():
        print(f"{key:32s} {value:.4g}" if isinstance(value, float) else f"{key:32s} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
