"""Tokens per second of the truncated activation extraction (llm.models.activations), against a
plain transformers forward with output_hidden_states=True, the machine's matmul roofline and the
TransformerLens peer, all measured in the same run on the same batches.

    .venv/bin/python benchmarks/bench_extract.py [--layer 8] [--batch 32] [--ctx 128]

Batches come from the embedded corpus (python-docs). The roofline is the best of a few float32
(and bfloat16) GEMMs of the model's own shapes; the FLOP count covers the layers actually run:
2 x (linear weights of blocks 0..L) per token plus attention (QK^T and AV over the keys each
query sees, causal and sliding-window aware). The TransformerLens peer runs
run_with_cache(stop_at_layer=L+1) from the benchmark-only venv .peer-venv when it exists
(benchmarks/peers/tl_extract.py, random token ids); else pass its JSON with --peer-json.
"""

import argparse
import json
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


def time_extraction(model: LoadedModel, batches: list, layer: int) -> tuple[float, list]:
    """Seconds for the truncated forward over `batches` (after a warm-up batch), and its outputs."""
    activations(model, batches[0].input_ids_BT, batches[0].attention_mask_BT, layer)
    start = time.perf_counter()
    outputs = [
        activations(model, b.input_ids_BT, b.attention_mask_BT, layer) for b in batches[1:]
    ]
    return time.perf_counter() - start, outputs


def peer_figure(args: argparse.Namespace) -> dict | None:
    if args.peer_json:
        return json.loads(Path(args.peer_json).read_text())
    python, script = ROOT / ".peer-venv/bin/python", ROOT / "benchmarks/peers/tl_extract.py"
    if not (python.exists() and script.exists()):
        return None
    command = [str(python), str(script), "--layer", str(args.layer), "--batch", str(args.batch),
               "--ctx", str(args.ctx), "--n-batches", str(args.n_batches),
               "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--layer", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--n-batches", type=int, default=3, help="timed batches (plus a warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peer-json", help="TransformerLens peer result, if not run here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model, device="cpu", dtype="float32")
    corpus = load_corpus()
    stream = token_batches(model.tokenizer, corpus, args.ctx, args.batch)
    batches = [next(stream) for _ in range(args.n_batches + 1)]
    n_tokens = args.n_batches * args.batch * args.ctx

    d, f = model.d_model, model.model.config.get_text_config().intermediate_size
    shapes = [(args.batch * args.ctx, d, f), (args.batch * args.ctx, f, d), (2048, 2048, 2048)]
    peak_fp32 = matmul_gflops(torch.float32, shapes)
    peak_bf16 = matmul_gflops(torch.bfloat16, shapes)
    flops = flops_per_token(model, args.layer, args.ctx)

    seconds_fp32, acts_fp32 = time_extraction(model, batches, args.layer)
    ours_fp32 = n_tokens / seconds_fp32

    full_batch = batches[1]
    start = time.perf_counter()
    with torch.no_grad():
        model.model(input_ids=full_batch.input_ids_BT, attention_mask=full_batch.attention_mask_BT,
                    output_hidden_states=True)
    full = args.batch * args.ctx / (time.perf_counter() - start)

    del model
    half = load_model(args.model, device="cpu", dtype="bfloat16")
    seconds_bf16, acts_bf16 = time_extraction(half, batches, args.layer)
    ours_bf16 = n_tokens / seconds_bf16
    reference = torch.cat([a.flatten() for a in acts_fp32])
    relative_error = float(
        (torch.cat([h.flatten() for h in acts_bf16]).float() - reference).norm() / reference.norm()
    )

    peer = peer_figure(args)
    result = {
        "model": f"{args.model} (4-bit GGUF, dequantized)", "layer": args.layer,
        "batch": args.batch, "ctx": args.ctx, "threads": args.threads, "timed_tokens": n_tokens,
        "matmul_gflops_fp32": peak_fp32, "matmul_gflops_bf16": peak_bf16,
        "mflop_per_token": flops / 1e6,
        "ours_fp32_tokens_per_s": ours_fp32, "ours_bf16_tokens_per_s": ours_bf16,
        "full_forward_fp32_tokens_per_s": full,
        "ratio_vs_full_forward": ours_fp32 / full,
        "fraction_of_fp32_roofline": ours_fp32 * flops / 1e9 / peak_fp32,
        "fraction_of_bf16_roofline": ours_bf16 * flops / 1e9 / peak_bf16,
        "bf16_speedup": ours_bf16 / ours_fp32,
        "bf16_relative_error": relative_error,
        "peer_tokens_per_s": peer and peer["tokens_per_s"],
        "ratio_vs_peer": peer and ours_fp32 / peer["tokens_per_s"],
    }
    for key, value in result.items():
        print(f"{key:32s} {value:.4g}" if isinstance(value, float) else f"{key:32s} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
