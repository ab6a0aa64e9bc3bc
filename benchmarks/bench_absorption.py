"""Cost of the first-letter absorption study (llm.absorption) on the embedded model:

(a) query activations on the shared prefix's key/value cache against whole prompts, side by side
    in the same run, on the same test words (and the largest difference between the two);
(b) run_absorption from scratch: per-hook setup (vocabulary sample, split, activations, probe,
    ICL check) plus one randomly initialised TopK SAE of the given width;
(c) each further SAE at the same hook, reusing the stored setup;
(d) optional (--trained-tokens N): a TopK SAE trained on N tokens of the embedded corpus at the
    same hook (extraction, training, then scoring on the stored setup), so the scores mean
    something.

    .venv/bin/python benchmarks/bench_absorption.py [--layer 3] [--n-words 16384] [--threads 1]

Prints one JSON object with the figures and the per-letter probe table. The SAEs are random
(timing only: their absorption scores mean nothing).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llm.absorption import AbsorptionConfig, run_absorption  # noqa: E402
from llm.absorption.extraction import full_prompt_activations, query_activations  # noqa: E402
from llm.absorption.prompts import build_prompts  # noqa: E402
from llm.absorption.vocabulary import (  # noqa: E402
    alphabetic_vocabulary,
    sample_vocabulary,
)
from llm.models import load_model  # noqa: E402
from llm.saefiles import saelens_hook_name, save_sae  # noqa: E402
from toymodels.sae import make_sae  # noqa: E402


def shared_versus_whole(model, layer: int, n_words: int, batch_size: int) -> dict:
    vocabulary = sample_vocabulary(alphabetic_vocabulary(model.tokenizer), n_words, seed=123)
    words = list(vocabulary.words)
    groups = build_prompts(model.tokenizer, words, words, n_examples=10, seed=0)
    warm_up = build_prompts(model.tokenizer, words[:8], words, n_examples=10, seed=0)
    query_activations(model, warm_up, 8, layer, batch_size=8)
    full_prompt_activations(model, warm_up, 8, layer, batch_size=8)
    started = time.perf_counter()
    shared_ND = query_activations(model, groups, len(words), layer, batch_size=batch_size)
    shared_s = time.perf_counter() - started
    started = time.perf_counter()
    whole_ND = full_prompt_activations(model, groups, len(words), layer, batch_size=batch_size)
    whole_s = time.perf_counter() - started
    n_tokens_whole = sum(len(g.prefix_ids) + len(s) for g in groups for s in g.suffix_ids)
    return {
        "n_prompts": len(words),
        "prompt_tokens_mean": n_tokens_whole / len(words),
        "shared_prefix_s": shared_s,
        "whole_prompts_s": whole_s,
        "speedup": whole_s / shared_s,
        "max_abs_difference": float((shared_ND - whole_ND).abs().max()),
        "max_abs_activation": float(whole_ND.abs().max()),
        "unshared_prompts": sum(len(g.unshared_queries) for g in groups),
    }


def random_topk_sae(folder: Path, d_model: int, width: int, k: int, layer: int, seed: int) -> str:
    generator = torch.Generator().manual_seed(seed)
    sae = make_sae("topk", d_in=d_model, n_latents=width, k=k, generator=generator)
    metadata = {"hook_name": saelens_hook_name(layer, "resid_post"), "model_name": "gemma3-270m"}
    return str(save_sae(sae, folder, metadata=metadata))


def trained_topk_sae(model, folder: Path, layer: int, args) -> tuple[str, dict]:
    """Extract args.trained_tokens activations, train a TopK SAE on them, save it."""
    from llm.cache import extract
    from llm.corpus import load_corpus
    from llm.evaluate import reconstruction_metrics
    from llm.saefiles import load_sae
    from llm.training import held_out_activations, split_cache, train_on_cache
    from toymodels.train import TrainConfig

    started = time.perf_counter()
    extract(model, load_corpus(), layer, n_tokens=args.trained_tokens, out_dir=folder / "acts")
    extracted = time.perf_counter()
    split = split_cache(folder / "acts", held_out_tokens=8192)
    sae = make_sae("topk", d_in=model.d_model, n_latents=args.trained_width, k=args.k)
    trained = train_on_cache(
        sae,
        split,
        TrainConfig(
            samples=split.n_rows(split.train_shards),
            batch_size=args.trained_batch,
            lr=args.trained_lr,
            device="cpu",
            progress=False,
        ),
    )
    metadata = {"hook_name": saelens_hook_name(layer, "resid_post"), "model_name": args.model}
    path = save_sae(trained.sae, folder / "sae", input_scale=trained.input_scale, metadata=metadata)
    held_out = reconstruction_metrics(load_sae(path).sae, held_out_activations(split))[0]
    return str(path), {
        "extract_s": extracted - started,
        "train_s": time.perf_counter() - extracted,
        "train_tokens": split.n_rows(split.train_shards),
        "held_out": held_out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--n-words", type=int, default=16384, help="0: the whole vocabulary")
    parser.add_argument("--n-compare", type=int, default=256, help="prompts timed in (a)")
    parser.add_argument("--width", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--further-saes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", default="", help="comma list of parts to skip: a,b,c")
    parser.add_argument("--trained-tokens", type=int, default=0, help="(d): 0 skips it")
    parser.add_argument("--trained-width", type=int, default=4096)
    parser.add_argument("--trained-batch", type=int, default=1024)
    parser.add_argument("--trained-lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    work = Path(tempfile.mkdtemp(prefix="bench_absorption."))
    report: dict = {
        "model": args.model,
        "layer": args.layer,
        "threads": args.threads,
        "load_average": os.getloadavg(),
    }
    try:
        model = load_model(args.model, device="cpu")
        if "a" not in skip:
            report["a_shared_prefix"] = shared_versus_whole(
                model, args.layer, args.n_compare, args.batch_size
            )
            print(json.dumps(report["a_shared_prefix"]), flush=True)
        saes = [
            random_topk_sae(work / f"sae{i}", model.d_model, args.width, args.k, args.layer, i)
            for i in range(1 + args.further_saes)
        ]
        config = AbsorptionConfig(
            model=args.model,
            layer=args.layer,
            n_words=args.n_words,  # 0: the whole vocabulary
            batch_size=args.batch_size,
            device="cpu",
            setup_dir=str(work / "setup"),
        )
        if "b" not in skip:
            started = time.perf_counter()
            run = run_absorption(
                AbsorptionConfig(**{**config.__dict__, "sae_paths": (saes[0],)}), work / "run_b"
            )
            total = time.perf_counter() - started
            metrics = json.loads((run.folder / "metrics.json").read_text())
            probe = pd.read_csv(run.folder / "tables" / "probe.csv")
            report["b_setup_plus_one_sae"] = {
                "total_s": total,
                "setup_s": metrics["setup_seconds"],
                "sae_s": metrics["sae_seconds"],
                "n_words": metrics["n_words"],
                "vocabulary_size": metrics["vocabulary_size"],
                "vocabulary_fraction": metrics["vocabulary_fraction"],
                "icl_accuracy": metrics["icl_accuracy"],
                "probe_letters_above_0.6": metrics["probe_letters_above_min_f1"],
                "probe_mean_f1": metrics["probe_mean_f1"],
                "failures": metrics["failures"],
                "probe": probe.round(3).to_dict(orient="list"),
            }
            print(json.dumps(report["b_setup_plus_one_sae"]), flush=True)
        if "c" not in skip and args.further_saes:
            started = time.perf_counter()
            run = run_absorption(
                AbsorptionConfig(**{**config.__dict__, "sae_paths": tuple(saes[1:])}),
                work / "run_c",
            )
            total = time.perf_counter() - started
            metrics = json.loads((run.folder / "metrics.json").read_text())
            report["c_further_saes"] = {
                "total_s": total,
                "setup_reload_s": metrics["setup_seconds"],
                "sae_s": metrics["sae_seconds"],
                "failures": metrics["failures"],
            }
            print(json.dumps(report["c_further_saes"]), flush=True)
        if args.trained_tokens:
            path, training = trained_topk_sae(model, work / "trained", args.layer, args)
            started = time.perf_counter()
            run = run_absorption(
                AbsorptionConfig(**{**config.__dict__, "sae_paths": (path,)}), work / "run_d"
            )
            metrics = json.loads((run.folder / "metrics.json").read_text())
            per_letter = pd.read_csv(run.folder / "tables" / "per_letter.csv")
            columns = [
                "letter",
                "num_split_features",
                "k_sparse_f1",
                "mean_absorption_fraction",
                "full_absorption_rate",
            ]
            report["d_trained_sae"] = {
                **training,
                "width": args.trained_width,
                "k": args.k,
                "score_s": time.perf_counter() - started,
                "aggregate": metrics["aggregate"],
                "failures": metrics["failures"],
                "per_letter": per_letter[columns].round(3).to_dict(orient="list"),
            }
            print(json.dumps(report["d_trained_sae"]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
