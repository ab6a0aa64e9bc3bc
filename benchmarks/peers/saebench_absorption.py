"""Peer figure: SAEBench 0.6's first-letter absorption eval of one SAE on a given vocabulary.

Runs sae_bench.evals.absorption.main.run_eval unchanged on the embedded Gemma 3 270M (4-bit
Q4_K_M GGUF dequantized to float32, loaded by TransformerLens from the offline cache that
benchmarks/peer_env.sh builds), float32 on the CPU, with these interventions only:

- vocabulary: the probe's word list (sae_bench.evals.absorption.common.get_alpha_tokens) is
  replaced by --words, so both tools see the same words; the ICL pool of the absorption prompts
  (feature_absorption.get_alpha_tokens) stays the whole alphabetic vocabulary, as in the toolkit;
- seeds: Python's `random` (SAEBench's split and ICL sampling; its random_seed option is never
  read) and torch's generator (probe initialisation, DataLoader shuffling) are seeded by --seed;
- output folders: SAEBench's probe and result caches (module defaults under site-packages) are
  redirected to --out, so no run reuses an earlier run's probe;
- --forward truncated (default) passes stop_at_layer = layer + 1 to SAEBench's
  model.run_with_cache calls: the activations are identical, but the unembedding over Gemma's
  262k-token vocabulary, which SAEBench computes and discards for every prompt, is skipped. The
  cost of SAEBench's own full forward is measured on --calibrate prompts and reported with a
  projection of the unpatched run time; --forward full runs it as published.
- an SAE whose decoder rows are not unit norm has them folded into the encoder first (SAEBench
  does this for SAELens releases, not for SAE objects it is handed; the toolkit's files already
  have unit rows, and SAELens refuses to fold a TopK SAE that ranks raw pre-activations).

Timed stages: probe activations, probe training, k-sparse probe training, k-sparse evaluation
(with its per-batch times), absorption, and run_eval in total. Also counted: probe prompts whose
fixed position -6 is read off a right-padded row (shorter than the longest prompt of their batch),
and SAEBench's vocabulary size. Prints one JSON object.

    .peer-venv/bin/python benchmarks/peers/saebench_absorption.py --sae DIR --words FILE.json \
        --out DIR [--layer 3] [--threads 1]
"""

import argparse
import json
import os
import random
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from common import report, use_offline_model_cache

MODEL = "google/gemma-3-270m"


class Clock:
    """Seconds spent in wrapped functions, by stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, name, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                self.seconds[name] = self.seconds.get(name, 0.0) + elapsed

        return timed


def padded_rows(tokenizer, prompts: list[str], batch_size: int) -> int:
    """Prompts shorter than the longest of their batch: TransformerLens pads them on the right,
    so SAEBench's fixed position -6 reads a padding or template token instead of the word."""
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    count = 0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start : start + batch_size]
        count += sum(length < max(batch) for length in batch)
    return count


def measure(args: argparse.Namespace) -> dict:
    use_offline_model_cache()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # run_eval writes artifacts/absorption/... relative to the working folder

    from sae_bench.evals.absorption import common, k_sparse_probing, main
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
    from sae_bench.evals.absorption.vocab import get_alpha_tokens
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    words = json.loads(Path(args.words).read_text())
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    clock = Clock()
    probe_batch = 64  # common.train_and_save_probes' batch_size default, not configurable
    padding = {}

    common.get_alpha_tokens = lambda tokenizer: list(words)
    gen_and_save = common.gen_and_save_df_acts_probing

    def activations_with_padding_count(model, train_dataset, test_dataset, **kwargs):
        result = clock.wrap("probe_activations", gen_and_save)(
            model, train_dataset, test_dataset, **kwargs
        )
        for name, dataset in (("train", train_dataset), ("test", test_dataset)):
            prompts = [prompt.base for prompt, _ in dataset]
            padding[name] = padded_rows(model.tokenizer, prompts, probe_batch)
            padding[f"{name}_prompts"] = len(prompts)
        return result

    common.gen_and_save_df_acts_probing = activations_with_padding_count
    common.train_linear_probe_for_task = clock.wrap(
        "probe_training", common.train_linear_probe_for_task
    )
    k_sparse_probing.train_k_sparse_probes = clock.wrap(
        "k_sparse_training", k_sparse_probing.train_k_sparse_probes
    )
    k_sparse_probing.eval_probe_and_sae_k_sparse_raw_scores = clock.wrap(
        "k_sparse_evaluation", k_sparse_probing.eval_probe_and_sae_k_sparse_raw_scores
    )
    batch_ends: list[float] = []
    batch_indices = k_sparse_probing.batchify_indices

    def timed_batch_indices(*a, **kw):  # used only by the k-sparse evaluation loop
        batch_ends.append(time.perf_counter())
        for item in batch_indices(*a, **kw):
            yield item
            batch_ends.append(time.perf_counter())

    k_sparse_probing.batchify_indices = timed_batch_indices

    captured = {}

    def capture(name, function):
        def wrapper(*a, **kw):
            captured[name] = function(*a, **kw)
            return captured[name]

        return wrapper

    stages = out / "saebench-artifacts"
    main.run_k_sparse_probing_experiment = capture(
        "k_sparse",
        partial(
            main.run_k_sparse_probing_experiment,
            experiment_dir=stages / "k_sparse_probing",
            probes_dir=stages / "probes",
        ),
    )
    main.run_feature_absortion_experiment = capture(
        "absorption",
        clock.wrap(
            "absorption",
            partial(
                main.run_feature_absortion_experiment,
                experiment_dir=stages / "feature_absorption",
                sparse_probing_experiment_dir=stages / "k_sparse_probing",
                probes_dir=stages / "probes",
            ),
        ),
    )

    # The model: loaded here once (timed apart), handed to run_eval through its own loader call.
    started = time.perf_counter()
    model = HookedTransformer.from_pretrained_no_processing(
        MODEL, device="cpu", dtype=torch.float32
    )
    model_load_s = time.perf_counter() - started
    hook = f"blocks.{args.layer}.hook_resid_post"
    full_forward = model.run_with_cache
    forward = {"seconds": 0.0, "prompts": 0}

    def run_with_cache(inputs, *a, **kw):
        if args.forward == "truncated":
            kw["stop_at_layer"] = args.layer + 1
        started = time.perf_counter()
        result = full_forward(inputs, *a, **kw)
        forward["seconds"] += time.perf_counter() - started
        forward["prompts"] += len(inputs)
        return result

    calibration = calibrate(model, full_forward, words, args, hook)
    model.run_with_cache = run_with_cache
    main.HookedTransformer = type(
        "PreloadedModel", (), {"from_pretrained_no_processing": staticmethod(lambda *a, **k: model)}
    )

    sae = SAE.load_from_disk(args.sae, device="cpu")
    norms = sae.W_dec.norm(dim=-1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-5):
        sae.fold_W_dec_norm()
    config = AbsorptionEvalConfig(
        model_name=MODEL,
        random_seed=args.seed,
        llm_batch_size=args.llm_batch_size,
        llm_dtype="float32",
        min_feats_for_eval=args.min_letters,
    )
    (out / "results").mkdir(exist_ok=True)
    started = time.perf_counter()
    results = main.run_eval(
        config, [("toolkit", sae)], "cpu", str(out / "results"), force_rerun=True
    )
    total = time.perf_counter() - started

    metrics = captured["k_sparse"]
    per_letter = []
    absorption = captured.get("absorption")
    aggregated = (
        main._aggregate_results_df(absorption).set_index("letter")
        if absorption is not None
        else None
    )
    for row in metrics.itertuples():
        entry = {
            "letter": row.letter.upper(),
            "probe_f1": float(row.f1_probe),
            "probe_precision": float(row.precision_probe),
            "probe_recall": float(row.recall_probe),
            "num_split_features": len(row.split_feats),
        }
        if aggregated is not None and row.letter in aggregated.index:
            agg = aggregated.loc[row.letter]
            entry["mean_absorption_fraction"] = float(agg["mean_absorption_fraction"])
            entry["full_absorption_rate"] = float(agg["full_absorption_rate"])
            entry["num_probe_true_positives"] = int(agg["num_probe_true_positives"])
        per_letter.append(entry)

    gaps = np.diff(batch_ends)
    full_over_truncated = calibration["full_s"] / calibration["truncated_s"]
    projected = total
    if args.forward == "truncated":
        projected = total + forward["seconds"] * (full_over_truncated - 1)
    result = next(iter(results.values()), None)
    return {
        "peer": "sae_bench 0.6 evals.absorption.main.run_eval",
        "model": f"{MODEL} (embedded Q4_K_M GGUF, dequantized), float32, cpu",
        "layer": args.layer,
        "forward": args.forward,
        "threads": args.threads,
        "seed": args.seed,
        "n_words": len(words),
        "saebench_vocabulary_size": len(get_alpha_tokens(model.tokenizer)),
        "saebench_vocabulary_distinct": len(set(get_alpha_tokens(model.tokenizer))),
        "model_load_s": model_load_s,
        "total_s": total,
        "stages_s": clock.seconds,
        "forward_s": forward["seconds"],
        "forward_prompts": forward["prompts"],
        "calibration": {**calibration, "full_over_truncated": full_over_truncated},
        "projected_total_full_forward_s": projected,
        "k_sparse_eval_batch_size": config.eval_k_sparse_probe_batch_size,
        "k_sparse_eval_batches": len(gaps),
        "k_sparse_eval_batch_s_median": float(np.median(gaps)) if len(gaps) else None,
        "k_sparse_eval_batch_s_max": float(gaps.max()) if len(gaps) else None,
        "k_sparse_eval_words": padding.get("test_prompts"),
        "padded_probe_rows": padding,
        "aggregate": result and result["eval_result_metrics"]["mean"],
        "letters_scored": result
        and [d["first_letter"].upper() for d in result["eval_result_details"]],
        "per_letter": per_letter,
    }


def calibrate(model, full_forward, words, args, hook) -> dict:
    """Seconds of SAEBench's forward call on --calibrate prompts of the real shape, in full (as
    published) and truncated at the hook's layer, plus the largest activation difference."""
    from sae_bench.evals.absorption.prompting import create_icl_prompt, first_letter_formatter

    state = random.getstate()  # keep the eval's own random stream as without calibration
    prompts = [
        create_icl_prompt(
            word,
            examples=list(words),
            base_template="{word} has the first letter:",
            answer_formatter=first_letter_formatter(),
            max_icl_examples=10,
            prepend_separator_to_first_example=True,
        ).base
        for word in words[: args.calibrate]
    ]
    random.setstate(state)
    timings = {}
    with torch.inference_mode():
        full_forward(prompts[:1], names_filter=[hook], stop_at_layer=args.layer + 1)  # warm-up
        for name, extra in (
            ("truncated_s", {"stop_at_layer": args.layer + 1}),
            ("full_s", {}),
        ):
            started = time.perf_counter()
            _, cache = full_forward(prompts, names_filter=[hook], **extra)
            timings[name] = time.perf_counter() - started
            timings[name.replace("_s", "_acts")] = cache[hook]
    difference = (timings.pop("full_acts") - timings.pop("truncated_acts")).abs().max()
    return {"prompts": len(prompts), **timings, "max_abs_difference": float(difference)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", required=True, help="SAE folder in SAELens layout")
    parser.add_argument("--words", required=True, help="JSON list of the vocabulary to probe")
    parser.add_argument("--out", required=True, help="working folder (artifacts, results)")
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--forward", choices=("truncated", "full"), default="truncated")
    parser.add_argument("--calibrate", type=int, default=4, help="prompts timed both ways")
    parser.add_argument("--llm-batch-size", type=int, default=64)
    parser.add_argument("--min-letters", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    report(lambda: measure(arguments), arguments.threads)
