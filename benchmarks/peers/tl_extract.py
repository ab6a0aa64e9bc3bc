"""Peer figure: tokens per second of TransformerLens extracting one residual stream layer.

Loads the embedded Gemma 3 270M (4-bit Q4_K_M GGUF, dequantized; converted into an offline
Hugging Face cache by benchmarks/peer_env.sh) with
HookedTransformer.from_pretrained_no_processing("google/gemma-3-270m") and times
run_with_cache(tokens, stop_at_layer=L+1, names_filter="blocks.L.hook_resid_post") on batches of
random valid token ids (a BOS token first), after one untimed warm-up batch. Prints
{"tokens_per_s", "layer", ...}; --save FILE also writes the activations as a safetensors tensor
"acts" of shape (tokens, d_model), the input format of saelens_train.py.
"""

import argparse

import torch
from common import report, stopwatch, use_offline_model_cache

MODEL = "google/gemma-3-270m"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def measure(args: argparse.Namespace) -> dict:
    use_offline_model_cache()
    from transformer_lens import HookedTransformer

    model = HookedTransformer.from_pretrained_no_processing(
        MODEL, device="cpu", dtype=DTYPES[args.dtype]
    )
    if not 0 <= args.layer < model.cfg.n_layers:
        raise ValueError(f"--layer {args.layer} is outside 0..{model.cfg.n_layers - 1}")
    hook = f"blocks.{args.layer}.hook_resid_post"
    generator = torch.Generator().manual_seed(args.seed)

    def batch_tokens():
        tokens_BT = torch.randint(0, model.cfg.d_vocab, (args.batch, args.ctx), generator=generator)
        tokens_BT[:, 0] = model.tokenizer.bos_token_id
        return tokens_BT

    def resid(tokens_BT):
        with torch.inference_mode():
            _, cache = model.run_with_cache(
                tokens_BT, stop_at_layer=args.layer + 1, names_filter=hook
            )
        return cache[hook]

    resid(batch_tokens())  # warm-up: first-call allocations and kernel selection
    batches = [batch_tokens() for _ in range(args.n_batches)]
    acts = []
    with stopwatch() as timing:
        for tokens_BT in batches:
            acts.append(resid(tokens_BT))
    if args.save:
        from safetensors.torch import save_file

        acts_ND = torch.cat(acts).reshape(-1, model.cfg.d_model).float().contiguous()
        save_file({"acts": acts_ND}, args.save)
    n_tokens = args.n_batches * args.batch * args.ctx
    return {
        "peer": "transformer_lens.HookedTransformer.run_with_cache",
        "tokens_per_s": n_tokens / timing["seconds"],
        "layer": args.layer,
        "tokens": n_tokens,
        "seconds": timing["seconds"],
        "batch": args.batch,
        "ctx": args.ctx,
        "dtype": args.dtype,
        "model": f"{MODEL} (embedded Q4_K_M GGUF, dequantized)",
        "threads": args.threads,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--n-batches", type=int, default=4)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--save", help="write the activations here (safetensors, tensor 'acts')")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    report(lambda: measure(arguments), arguments.threads)
