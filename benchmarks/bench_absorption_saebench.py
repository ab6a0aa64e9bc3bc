"""The first-letter absorption study side by side with SAEBench 0.6's absorption eval: one SAE,
the same model, layer, hook and vocabulary, timed and scored by each.

Ours: llm.absorption.run_absorption from scratch (vocabulary sample of --n-words words, split,
activations, probe, ICL check, then the SAE). SAEBench: benchmarks/peers/saebench_absorption.py
in .peer-venv (built by benchmarks/peer_env.sh), run afterwards on the same words (our sample,
written to words.json), the same SAE folder (SAELens layout) and the same layer; see that
script's docstring for what it changes in SAEBench (seeds, output folders, optionally the
discarded unembedding). Reported: seconds per SAE for each (model loading apart), SAEBench's stage
times and per-batch k-sparse evaluation time, mean absorption fraction, full-absorption rate and
split count from each, and the per-letter figures side by side with their agreement over the
letters both score (probe F1 > 0.6 on both sides).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_absorption_saebench.py --sae DIR \
        [--n-words 2000] [--layer 3] [--threads 1] [--out DIR]

Prints one JSON object (also written to OUT/comparison.json) and the per-letter table.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llm.absorption import AbsorptionConfig, run_absorption  # noqa: E402
from llm.models import load_model  # noqa: E402

PEER_PYTHON = ROOT / ".peer-venv" / "bin" / "python"
PEER_SCRIPT = ROOT / "benchmarks" / "peers" / "saebench_absorption.py"
FIGURES = ("probe_f1", "num_split_features", "mean_absorption_fraction", "full_absorption_rate")


def ours(args: argparse.Namespace, out: Path) -> tuple[dict, pd.DataFrame, list[str]]:
    started = time.perf_counter()
    model = load_model(args.model, device="cpu")
    model_load = time.perf_counter() - started
    config = AbsorptionConfig(
        model=args.model,
        layer=args.layer,
        sae_paths=(args.sae,),
        n_words=args.n_words,
        seed=args.seed,
        batch_size=args.batch_size,
        min_letters=args.min_letters,
        device="cpu",
        setup_dir=str(out / "ours-setup"),
    )
    started = time.perf_counter()
    run = run_absorption(config, out / "ours-run", model=model)
    total = time.perf_counter() - started
    metrics = json.loads((run.folder / "metrics.json").read_text())
    if metrics["failures"]:
        raise RuntimeError(f"our evaluation failed: {metrics['failures']}")
    per_letter = pd.read_csv(run.folder / "tables" / "per_letter.csv", keep_default_na=False)
    words = json.loads((out / "ours-setup" / "vocabulary.json").read_text())["words"]
    (aggregate,) = metrics["aggregate"].values()
    summary = {
        "model_load_s": model_load,
        "total_s": total,
        "setup_s": metrics["setup_seconds"],
        "sae_s": next(iter(metrics["sae_seconds"].values())),
        "n_words": metrics["n_words"],
        "n_train": metrics["n_train"],
        "n_test": metrics["n_test"],
        "vocabulary_size": metrics["vocabulary_size"],
        "icl_accuracy": metrics["icl_accuracy"],
        "aggregate": {key: aggregate[key] for key in aggregate if key not in ("sae", "sae_path")},
    }
    return summary, per_letter.set_index("letter"), words


def saebench(args: argparse.Namespace, out: Path, words_file: Path) -> dict:
    if args.peer_json:
        return json.loads(Path(args.peer_json).read_text())
    if not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON} is missing: run bash benchmarks/peer_env.sh first")
    command = [
        str(PEER_PYTHON),
        str(PEER_SCRIPT),
        "--sae",
        args.sae,
        "--words",
        str(words_file),
        "--out",
        str(out / "saebench"),
        "--layer",
        str(args.layer),
        "--forward",
        args.forward,
        "--calibrate",
        str(args.calibrate),
        "--llm-batch-size",
        str(args.batch_size),
        "--min-letters",
        str(args.min_letters),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ]
    with open(out / "saebench.log", "w") as log:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True)
    if done.returncode:
        raise SystemExit(f"SAEBench failed (exit {done.returncode}); see {out / 'saebench.log'}")
    (out / "saebench.json").write_text(done.stdout)
    return json.loads(done.stdout.strip().splitlines()[-1])


def side_by_side(ours_L: pd.DataFrame, theirs: dict, min_f1: float) -> tuple[pd.DataFrame, dict]:
    """Per-letter figures of both (columns <figure>_ours, <figure>_saebench) and, over the letters
    both score, each side's mean, the mean absolute difference and the correlation."""
    theirs_L = pd.DataFrame(theirs["per_letter"]).set_index("letter")
    table = pd.DataFrame(index=ours_L.index)
    for figure in (*FIGURES, "num_probe_true_positives"):
        table[f"{figure}_ours"] = ours_L[figure]
        table[f"{figure}_saebench"] = theirs_L.get(figure)
    both = table[(table["probe_f1_ours"] > min_f1) & (table["probe_f1_saebench"] > min_f1)]
    agreement = {"letters_both_score": list(both.index)}
    for figure in FIGURES:
        a, b = both[f"{figure}_ours"].astype(float), both[f"{figure}_saebench"].astype(float)
        agreement[figure] = {
            "mean_ours": float(a.mean()),
            "mean_saebench": float(b.mean()),
            "mean_abs_difference": float((a - b).abs().mean()),
            "correlation": float(np.corrcoef(a, b)[0, 1])
            if len(both) > 2 and a.std() > 0 and b.std() > 0
            else None,
        }
    return table, agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", required=True, help="SAE folder (SAELens layout) at the layer")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--n-words", type=int, default=2000, help="SAEBench: ~8 min here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per forward, both")
    parser.add_argument(
        "--min-letters",
        type=int,
        default=1,
        help="fewest letters with probe F1 > 0.6 for a score, both tools (their default 20 voids "
        "small vocabularies)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--forward",
        choices=("truncated", "full"),
        default="truncated",
        help="SAEBench's forward: stopped after the layer, or as published",
    )
    parser.add_argument("--calibrate", type=int, default=4, help="prompts SAEBench times both ways")
    parser.add_argument("--peer-json", help="SAEBench's result, if already run")
    parser.add_argument("--out", help="working folder, kept (default: a new temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_absorption_saebench."))
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    our_summary, ours_L, words = ours(args, out)
    words_file = out / "words.json"
    words_file.write_text(json.dumps(words))
    print(json.dumps({"ours": our_summary}), flush=True)
    theirs = saebench(args, out, words_file)
    table, agreement = side_by_side(ours_L, theirs, min_f1=0.6)
    table.to_csv(out / "per_letter.csv")
    our_seconds = our_summary["total_s"]
    report = {
        "model": f"{args.model} (embedded Q4_K_M GGUF, dequantized), float32, cpu",
        "layer": args.layer,
        "sae": args.sae,
        "n_words": len(words),
        "threads": args.threads,
        "load_average_start": load,
        "load_average_end": os.getloadavg(),
        "ours": our_summary,
        "saebench": {key: value for key, value in theirs.items() if key != "per_letter"},
        "saebench_over_ours_s": theirs["total_s"] / our_seconds,
        "saebench_full_forward_over_ours_s": theirs["projected_total_full_forward_s"] / our_seconds,
        "agreement": agreement,
        "per_letter": table.round(4).reset_index().to_dict(orient="list"),
        "out": str(out),
    }
    (out / "comparison.json").write_text(json.dumps(report, indent=1))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(3).to_string(), file=sys.stderr)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
