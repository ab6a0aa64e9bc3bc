"""`sae-hedging llm ...`: extract activations, train and evaluate SAEs on them, measure hedging.

Every command writes a run folder (config, metrics, tables, manifest with the activation cache's
hashes, the model name and its quantization). Defaults finish in minutes on a laptop CPU; the
flags scale them up on a GPU (device auto picks CUDA when present).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

# The embedded offline models are 4-bit checkpoints: every run says so.
MODEL_QUANTIZATION = {
    "gemma3-270m": "Q4_K_M (4-bit GGUF, dequantized)",
    "smollm2-135m": "Q4_1 (4-bit GGUF, dequantized)",
}
SAE_ARCHITECTURES = ("topk", "batchtopk", "relu-l1", "jumprelu")


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from error


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from error


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    llm = subparsers.add_parser(
        "llm",
        help="real language models: activations, SAE training, evaluation, hedging",
        description="Extract activations from a language model, train and evaluate SAEs on "
        "them, and measure hedging on real SAEs.",
    )
    commands = llm.add_subparsers(dest="llm_command", required=True, metavar="LLM_COMMAND")

    extract = commands.add_parser(
        "extract",
        help="cache one hook point's activations",
        description="Cache one hook point's activations "
        "(run folder with the cache in activations/).",
    )
    extract.add_argument(
        "--model",
        default="gemma3-270m",
        help="gemma3-270m | smollm2-135m | HF model id | local folder",
    )
    extract.add_argument("--layer", type=int, default=8)
    extract.add_argument(
        "--hook", default="resid_post", help="resid_pre | resid_post | attn_out | mlp_out"
    )
    extract.add_argument("--tokens", type=int, default=200_000)
    extract.add_argument(
        "--corpus",
        default="python-docs",
        help="python-docs (embedded) | text file or folder | HF dataset",
    )
    extract.add_argument("--out", default="runs/llm-activations")
    extract.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    extract.add_argument("--device", default="auto")
    extract.add_argument("--shard-tokens", type=int, default=16_384)
    extract.add_argument("--batch-size", type=int, default=32)
    extract.add_argument("--context-length", type=int, default=128)
    extract.set_defaults(handler=run_extract)

    train = commands.add_parser(
        "train",
        help="train one SAE on cached activations",
        description="Train one SAE on cached activations; resumes "
        "from the run folder's checkpoint.",
    )
    train.add_argument("--cache", required=True, help="activation cache or extract run folder")
    train.add_argument("--architecture", default="topk", choices=SAE_ARCHITECTURES)
    train.add_argument("--width", type=int, default=1024)
    train.add_argument("--k", type=int, default=32, help="topk / batchtopk: latents per token")
    train.add_argument(
        "--l1", type=float, default=2.0, help="relu-l1: L1 coefficient (normalised input units)"
    )
    train.add_argument("--l0-coefficient", type=float, default=1.0, help="jumprelu")
    train.add_argument("--tokens", type=int, default=200_000, help="training tokens")
    _training_flags(train)
    train.add_argument("--out", default="runs/llm-train")
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser(
        "eval",
        help="evaluate an SAE: held-out reconstruction, CE loss recovered, KL",
        description="Evaluate an SAE folder (ours, SAELens or Gemma Scope params.npz) on a "
        "cache's held-out activations and by splicing it into the model.",
    )
    evaluate.add_argument("--sae", required=True, help="SAE folder or params.npz")
    evaluate.add_argument("--cache", required=True, help="activation cache or extract run folder")
    evaluate.add_argument("--model", help="default: the cache's model")
    evaluate.add_argument("--corpus", help="default: the cache's corpus")
    evaluate.add_argument("--batches", type=int, default=4, help="text batches for CE / KL")
    evaluate.add_argument("--batch-size", type=int, default=4)
    evaluate.add_argument("--held-out-tokens", type=int, default=16_384)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--out", default="runs/llm-eval")
    evaluate.set_defaults(handler=run_eval)

    hedging = commands.add_parser(
        "hedging",
        help="hedging degree vs width (BatchTopK, L1) and vs matryoshka mu",
        description="The hedging-degree protocol on SAEs trained on cached activations.",
    )
    hedging.add_argument("--cache", required=True, help="activation cache or extract run folder")
    hedging.add_argument("--widths", type=_ints, default=[256, 512, 1024, 2048])
    hedging.add_argument("--architectures", type=_names, default=["batchtopk", "relu-l1"])
    hedging.add_argument("--n-new", type=int, default=64, help="latents added (N)")
    hedging.add_argument("--tokens", type=int, default=200_000, help="tokens per stage (T)")
    hedging.add_argument("--k", type=int, default=25, help="batchtopk / matryoshka k")
    hedging.add_argument("--l1", type=float, default=2.0, help="relu-l1 coefficient")
    hedging.add_argument(
        "--mus",
        type=_floats,
        default=[0.0, 0.25, 1.0],
        help="balance matryoshka mu values ('' to skip)",
    )
    hedging.add_argument("--seeds", type=int, default=1)
    _training_flags(hedging)
    hedging.add_argument("--out", default="runs/llm-hedging")
    hedging.set_defaults(handler=run_hedging)


def _training_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument(
        "--no-normalize",
        action="store_true",
        help="train on raw activations (default: scaled to mean norm "
        "sqrt(d_model), folded back on save)",
    )
    parser.add_argument("--held-out-tokens", type=int, default=16_384)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)


def _model_record(model_name: str) -> dict:
    return {"model": model_name, "model_quantization": MODEL_QUANTIZATION.get(model_name)}


def _record_cache(run: object, cache_dir: Path, manifest: dict) -> None:
    """The cache's identity in the run's manifest: its manifest's sha256 (which lists every
    shard's sha256), the corpus hash, the model and its quantization."""
    from toymodels.runs import sha256_file

    run.manifest.update(_model_record(manifest["model"]))
    run.record_data_hash("corpus", manifest["corpus"]["sha256"])
    run.record_data_hash("activation_cache_manifest", sha256_file(cache_dir / "manifest.json"))


def _sae_config(args: argparse.Namespace, d_in: int) -> dict:
    sparsity = {
        "topk": {"k": args.k},
        "batchtopk": {"k": args.k},
        "relu-l1": {"l1": args.l1},
        "jumprelu": {"l0_coefficient": args.l0_coefficient},
    }[args.architecture]
    return {"architecture": args.architecture, "d_in": d_in, "n_latents": args.width, **sparsity}


def run_extract(args: argparse.Namespace) -> int:
    from llm.cache import extract
    from llm.corpus import load_corpus
    from llm.models import load_model
    from toymodels.runs import Run

    config = {"command": "llm extract", **vars(args), **_model_record(args.model)}
    config.pop("handler")
    run = Run(args.out, config, kind="llm-extract")
    model = load_model(args.model, device=args.device)
    corpus = load_corpus(args.corpus)
    start = time.perf_counter()
    manifest = extract(
        model,
        corpus,
        args.layer,
        args.hook,
        args.tokens,
        Path(args.out) / "activations",
        shard_tokens=args.shard_tokens,
        dtype=args.dtype,
        batch_size=args.batch_size,
        context_length=args.context_length,
    )
    seconds = time.perf_counter() - start
    _record_cache(run, Path(args.out) / "activations", manifest)
    run.write_metrics(
        {
            "n_tokens": manifest["n_tokens"],
            "n_shards": len(manifest["shards"]),
            "d_model": manifest["d_model"],
            "seconds": seconds,
            "tokens_per_s": manifest["n_tokens"] / seconds,
        }
    )
    print(
        f"cached {manifest['n_tokens']} activations of {args.model} layer {args.layer} "
        f"{args.hook} in {Path(args.out) / 'activations'}"
    )
    return 0


def run_train(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    from llm.evaluate import reconstruction_metrics
    from llm.saefiles import saelens_hook_name, save_sae
    from llm.training import held_out_activations, split_cache, train_on_cache
    from toymodels.runs import Run
    from toymodels.sae import make_sae

    split = split_cache(args.cache, args.held_out_tokens)
    manifest = split.manifest
    sae_config = _sae_config(args, split.d_model)
    sae = make_sae(**sae_config, generator=torch.Generator().manual_seed(args.seed))
    config = {
        "command": "llm train",
        "cache": str(split.cache_dir),
        "sae": sae_config,
        "tokens": args.tokens,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "normalize": not args.no_normalize,
        "held_out_tokens": args.held_out_tokens,
        "layer": manifest["layer"],
        "hook": manifest["hook"],
        **_model_record(manifest["model"]),
    }
    run = Run(
        args.out, config, seeds={"sae_init": args.seed, "training": args.seed}, kind="llm-train"
    )
    _record_cache(run, split.cache_dir, manifest)
    start = time.perf_counter()
    trained = train_on_cache(
        sae,
        split,
        args.tokens,
        batch_size=args.batch_size,
        lr=args.lr,
        normalize=not args.no_normalize,
        seed=args.seed,
        device=args.device,
        checkpoint_path=run.path("checkpoint.pt"),
    )
    seconds = time.perf_counter() - start
    held_out_ND = held_out_activations(split, args.held_out_tokens)
    quality = reconstruction_metrics(trained.sae, held_out_ND * trained.input_scale)[0]
    folder = save_sae(
        trained.sae,
        run.path("sae"),
        input_scale=trained.input_scale,
        metadata={
            "model_name": manifest["model"],
            "hook_name": saelens_hook_name(manifest["layer"], manifest["hook"]),
            "hook_layer": manifest["layer"],
            "context_size": manifest["config"]["context_length"],
            "prepend_bos": True,
            "dataset_path": manifest["corpus"]["name"],
            "model_quantization": MODEL_QUANTIZATION.get(manifest["model"]),
        },
    )
    for name in ("cfg.json", "sae_weights.safetensors"):
        run.record_file(folder / name)
    log = trained.log.as_arrays()
    run.write_table(
        "training_log",
        pd.DataFrame(
            {
                "step": log["steps"],
                **{name: log[name][:, 0] for name in ("total", "mse", "sparsity", "aux")},
            }
        ),
    )
    run.write_metrics(
        {
            **quality,
            "input_scale": trained.input_scale,
            "seconds": seconds,
            "tokens_per_s": args.tokens / seconds,
            "held_out_tokens": len(held_out_ND),
        }
    )
    print(
        f"{args.architecture} SAE width {args.width}: held-out explained variance "
        f"{quality['explained_variance']:.4f}, L0 {quality['l0']:.1f}, dead "
        f"{quality['dead_fraction']:.3f}; saved to {folder}"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from llm.corpus import load_corpus
    from llm.evaluate import reconstruction_metrics, splice_metrics
    from llm.models import load_model
    from llm.saefiles import load_sae, saelens_hook_name
    from llm.training import held_out_activations, split_cache
    from toymodels.runs import Run

    split = split_cache(args.cache, args.held_out_tokens)
    manifest = split.manifest
    loaded = load_sae(args.sae)
    if loaded.sae.d_in != split.d_model:
        raise ValueError(
            f"the SAE takes d_in = {loaded.sae.d_in} but the cache holds "
            f"d_model = {split.d_model} activations"
        )
    hook_name = saelens_hook_name(manifest["layer"], manifest["hook"])
    if loaded.metadata.get("hook_name") not in (None, hook_name):
        raise ValueError(
            f"the SAE was trained on {loaded.metadata['hook_name']} but the cache holds {hook_name}"
        )
    model_name = args.model or manifest["model"]
    corpus_spec = args.corpus or _corpus_spec(manifest["corpus"]["name"])
    config = {
        "command": "llm eval",
        "sae": str(args.sae),
        "cache": str(split.cache_dir),
        "corpus": corpus_spec,
        "batches": args.batches,
        "batch_size": args.batch_size,
        "held_out_tokens": args.held_out_tokens,
        "layer": manifest["layer"],
        "hook": manifest["hook"],
        **_model_record(model_name),
    }
    run = Run(args.out, config, kind="llm-eval")
    _record_cache(run, split.cache_dir, manifest)
    run.manifest.update(_model_record(model_name))
    corpus = load_corpus(corpus_spec)
    if corpus.sha256 != manifest["corpus"]["sha256"]:
        raise ValueError(
            f"corpus {corpus_spec!r} is not the text the cache was extracted from "
            "(sha256 differs); pass --corpus"
        )
    quality = reconstruction_metrics(loaded.sae, held_out_activations(split, args.held_out_tokens))[
        0
    ]
    model = load_model(model_name, device=args.device)
    downstream = splice_metrics(
        model,
        loaded.sae,
        corpus,
        manifest["layer"],
        manifest["hook"],
        n_batches=args.batches,
        batch_size=args.batch_size,
        context_length=manifest["config"]["context_length"],
        skip_tokens=manifest["n_tokens"],
    )
    run.write_metrics({**quality, **downstream, "sae_source_format": loaded.source_format})
    print(
        f"explained variance {quality['explained_variance']:.4f}, L0 {quality['l0']:.1f}, "
        f"CE loss recovered {downstream['ce_loss_recovered']:.4f}, KL {downstream['kl']:.4f}"
    )
    return 0


def _corpus_spec(name: str) -> str:
    """The load_corpus spec of a cached corpus name (the embedded one carries its version)."""
    from llm.corpus import EMBEDDED

    return EMBEDDED if name.startswith(f"{EMBEDDED}-") else name


def run_hedging(args: argparse.Namespace) -> int:
    from llm.hedging import run_llm_hedging
    from llm.training import find_cache, split_cache

    split = split_cache(args.cache, args.held_out_tokens)
    run = run_llm_hedging(
        find_cache(args.cache),
        args.out,
        widths=args.widths,
        architectures=args.architectures,
        n_new=args.n_new,
        tokens_per_stage=args.tokens,
        k=args.k,
        l1=args.l1,
        mus=args.mus,
        n_seeds=args.seeds,
        batch_size=args.batch_size,
        lr=args.lr,
        normalize=not args.no_normalize,
        held_out_tokens=args.held_out_tokens,
        device=args.device,
        seed=args.seed,
        run_metadata=_model_record(split.manifest["model"]),
    )
    _record_cache(run, split.cache_dir, split.manifest)
    metrics = run.folder / "metrics.json"
    print(f"hedging tables in {run.folder / 'tables'}; metrics in {metrics}")
    return 0
