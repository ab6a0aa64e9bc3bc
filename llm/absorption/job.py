"""The absorption job: `run_absorption(config, out) -> Run` evaluates one or several SAE files at
one hook of one model on the shared, cached per-hook setup and writes a run folder.

Run folder: config.json, manifest.json, metrics.json (setup figures, aggregate per SAE, failures),
tables/probe.csv (per-letter probe precision, recall, F1), tables/per_letter.csv (one row per SAE
and letter), tables/aggregate.csv (one row per SAE), and results/<sae name>_absorption.json in
SAEBench's result layout (eval_type_id, eval_config, eval_id, datetime_epoch_millis,
eval_result_metrics, eval_result_details, sae_cfg_dict). SAE files are all checked (readable,
d_in = d_model, recorded hook = requested hook) before any work; a failure while evaluating one
SAE is recorded in metrics.json and the others still run.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from llm.absorption.causal import ANSWER_STYLES, CausalSettings, answer_ids
from llm.absorption.evaluate import SAEAbsorption, Scoring, evaluate_sae
from llm.absorption.hook_setup import (
    SetupConfig,
    absorption_prompts,
    default_folder,
    prepare_setup,
)
from llm.absorption.vocabulary import LETTERS
from llm.models import DTYPES, HOOKS, LoadedModel, cache_root, load_model, model_provenance
from llm.saefiles import SAEFile, load_sae, saelens_hook_name
from theory.config import (
    require_choice,
    require_nonnegative_int,
    require_number,
    require_positive_int,
)
from toymodels.runs import Run, check_run_folder

EVAL_TYPE_ID = "absorption_first_letter"


@dataclass(frozen=True)
class AbsorptionConfig:
    """First-letter absorption study of SAEs at one hook point of one model."""

    model: str = "gemma3-270m"
    """Offline name, HF id or local folder."""
    layer: int = 3
    """Decoder layer (0-based) whose hook point the SAEs read."""
    hook: str = "resid_post"
    """Hook point: resid_pre, attn_out, mlp_out or resid_post."""
    sae_paths: tuple[str, ...] = ()
    """SAE folders (ours or SAELens layout) or Gemma Scope params.npz files; empty: probe only."""
    n_words: int = 16384
    """Words sampled (seeded) from the alphabetic vocabulary; 0: the whole vocabulary."""
    test_fraction: float = 0.2
    """Share of each letter's words in the test split."""
    n_icl_examples: int = 10
    """Solved examples before the query in each prompt."""
    seed: int = 0
    """Seed of the vocabulary sample, split, ICL examples and probes."""
    probe_epochs: int = 50
    """Epochs of the letter probe and of the L1 probe on SAE codes."""
    k_max: int = 10
    """Largest k tried by k-sparse probing."""
    tau: float = 0.03
    """F1 improvement a further latent must exceed to join the main latents."""
    min_probe_f1: float = 0.6
    """Letters whose probe F1 is not above this are left out of the aggregate."""
    min_letters: int = 20
    """Fewest qualifying letters for an aggregate score."""
    n_icl_check: int = 256
    """Test prompts on which the model's own ICL answer is checked (0: skip)."""
    batch_size: int = 64
    """Prompts per forward pass."""
    device: str = "auto"
    """Torch device of the model: auto, cpu, cuda, ..."""
    dtype: str = "float32"
    """Model dtype: float32, bfloat16 or float16."""
    causal_metric: bool = False
    """Also compute the paper's integrated-gradients absorption rate (a full forward and backward
    per candidate token; slow on a CPU)."""
    causal_answers: str = "consistent"
    """Answer tokens of the causal metric: consistent (" A".." Z" for all) or paper (sae-spelling:
    lowercase letter as the correct answer)."""
    causal_max_per_letter: int = 200
    """Most candidate tokens per letter scored by the causal metric (sampled, seeded)."""
    setup_dir: str | None = None
    """Folder of the per-hook setup; None: under the user cache, keyed by model, layer, hook and
    a hash of the setup settings."""

    def __post_init__(self) -> None:
        for name in ("layer", "min_letters", "n_icl_check"):
            require_nonnegative_int(name, getattr(self, name))
        for name in ("n_icl_examples", "probe_epochs", "k_max", "batch_size",
                     "causal_max_per_letter"):  # fmt: skip
            require_positive_int(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.n_words != 0 and (
            isinstance(self.n_words, bool) or not isinstance(self.n_words, int) or self.n_words < 2
        ):
            raise ValueError(
                f"n_words must be 0 (the whole vocabulary) or an integer >= 2, got {self.n_words!r}"
            )
        require_choice("hook point", self.hook, HOOKS)
        require_choice("causal_answers", self.causal_answers, ANSWER_STYLES)
        require_choice("dtype", self.dtype, DTYPES)
        require_number("test_fraction", self.test_fraction, 0, 1, open_low=True)
        if self.test_fraction == 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")
        for name in ("tau", "min_probe_f1"):
            require_number(name, getattr(self, name), 0)
        if isinstance(self.sae_paths, str) or not all(
            isinstance(p, str | Path) for p in self.sae_paths
        ):
            raise ValueError(f"sae_paths must be a sequence of paths, got {self.sae_paths!r}")
        object.__setattr__(self, "sae_paths", tuple(str(p) for p in self.sae_paths))

    def scoring(self) -> Scoring:
        """How each SAE is scored on the setup."""
        return Scoring(
            k_max=self.k_max,
            tau=self.tau,
            min_probe_f1=self.min_probe_f1,
            min_letters=self.min_letters,
            seed=self.seed,
            l1_epochs=self.probe_epochs,
        )

    def setup_config(self) -> SetupConfig:
        return SetupConfig(
            model=self.model,
            layer=self.layer,
            hook=self.hook,
            n_words=self.n_words or None,  # 0: the whole vocabulary
            test_fraction=self.test_fraction,
            n_icl_examples=self.n_icl_examples,
            seed=self.seed,
            probe_epochs=self.probe_epochs,
            n_icl_check=self.n_icl_check,
            batch_size=self.batch_size,
        )


def check_sae_file(path: str, d_model: int, layer: int, hook: str) -> SAEFile:
    """Load an SAE file, refusing one that cannot be read or does not fit the hook."""
    try:
        loaded = load_sae(path)
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        raise ValueError(f"cannot read SAE {path}: {error}") from error
    if loaded.sae.d_in != d_model:
        raise ValueError(f"SAE {path} has d_in {loaded.sae.d_in}; the model's d_model is {d_model}")
    recorded = loaded.metadata.get("hook_name")
    expected = saelens_hook_name(layer, hook)
    if recorded is not None and recorded != expected:
        raise ValueError(f"SAE {path} was trained at {recorded}; this study reads {expected}")
    return loaded


def sae_name(path: str, taken: set[str]) -> str:
    """A file-system-safe, unique name for an SAE path."""
    base = Path(path).stem if path.endswith(".npz") else Path(path).name
    base = "".join(c if c.isalnum() or c in "-_." else "_" for c in base) or "sae"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def saebench_result(
    config: AbsorptionConfig, name: str, result: SAEAbsorption, sae_cfg: dict
) -> dict:
    """One SAE's result in SAEBench's JSON layout (metric names as SAEBench's absorption)."""
    summary = result.aggregate
    details = [
        {
            "first_letter": row.letter.lower(),
            "mean_absorption_fraction": _finite(row.mean_absorption_fraction),
            "full_absorption_rate": _finite(row.full_absorption_rate),
            "num_full_absorption": int(row.num_full_absorption),
            "num_probe_true_positives": int(row.num_probe_true_positives),
            "num_split_features": int(row.num_split_features),
        }
        for row in result.per_letter.itertuples()
    ]
    return {
        "eval_type_id": EVAL_TYPE_ID,
        "eval_config": {**asdict(config), "sae_paths": list(config.sae_paths)},
        "eval_id": f"{EVAL_TYPE_ID}-{name}-{config.setup_config().digest()[:12]}",
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": {
            "mean": {
                key: getattr(summary, key)
                for key in (
                    "mean_absorption_fraction_score",
                    "mean_full_absorption_score",
                    "mean_num_split_features",
                    "std_dev_absorption_fraction_score",
                    "std_dev_full_absorption_score",
                    "std_dev_num_split_features",
                )
            }
        },
        "eval_result_details": details,
        "eval_result_unstructured": {
            "letters_scored": list(summary.letters_scored),
            "letters_excluded": list(summary.letters_excluded),
            **_causal_summary(result, summary.letters_scored, config.causal_answers),
        },
        "sae_cfg_dict": sae_cfg,
    }


def _causal_summary(result: SAEAbsorption, letters: tuple[str, ...], answers: str) -> dict:
    """Mean causal (integrated-gradients) rate over the scored letters, when it was computed."""
    table = result.per_letter
    if "causal_absorption_rate" not in table:
        return {}
    rates = table.set_index("letter").loc[list(letters), "causal_absorption_rate"]
    return {
        "mean_causal_absorption_rate": float(rates.mean()) if len(rates) else None,
        "causal_answers": answers,
        "causal_absorption_rate_by_letter": dict(
            zip(table["letter"].str.lower(), table["causal_absorption_rate"], strict=True)
        ),
    }


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def run_absorption(
    config: AbsorptionConfig, out: str | Path, model: LoadedModel | None = None
) -> Run:
    """Evaluate every SAE of `config` and write the run folder `out` (module docstring).

    model: config.model already loaded (with config.dtype), to save loading it again."""
    check_run_folder(out, config)
    if model is None:
        model = load_model(config.model, device=config.device, dtype=config.dtype)
    elif model.name != config.model or model.dtype != DTYPES[config.dtype]:
        raise ValueError(
            f"the loaded model is {model.name!r} in {model.dtype}; the config asks for "
            f"{config.model!r} in {config.dtype}"
        )
    if config.layer >= model.n_layers:
        raise ValueError(f"layer {config.layer} is out of range; allowed: 0..{model.n_layers - 1}")
    saes = {}
    taken: set[str] = set()
    for path in config.sae_paths:
        saes[sae_name(path, taken)] = (
            path,
            check_sae_file(path, model.d_model, config.layer, config.hook),
        )
    setup_config = config.setup_config()
    folder = (
        Path(config.setup_dir)
        if config.setup_dir
        else default_folder(cache_root() / "absorption", setup_config)
    )
    run = Run(out, config, seeds={"seed": config.seed}, kind="absorption")
    run.record_provenance(**model_provenance(config.model))
    started = time.perf_counter()
    setup = prepare_setup(model, setup_config, folder)
    setup_seconds = time.perf_counter() - started
    run.record_data_hash("absorption_setup", setup_config.digest())
    scores = setup.probe_scores()
    probe_table = pd.DataFrame(
        {
            "letter": list(LETTERS),
            "precision": scores.precision_L,
            "recall": scores.recall_L,
            "f1": scores.f1_L,
            "test_words": scores.positives_L,
        }
    )
    run.write_table("probe", probe_table)
    causal = None
    if config.causal_metric:
        test_words = [setup.words[i] for i in setup.test_index]
        causal = CausalSettings(
            model=model,
            groups=absorption_prompts(model, setup_config, test_words),
            layer=config.layer,
            hook=config.hook,
            answers=answer_ids(model.tokenizer, config.causal_answers),
            max_per_letter=config.causal_max_per_letter,
        )
    per_letter, aggregates, failures, seconds = [], [], {}, {}
    for name, (path, loaded) in saes.items():
        started = time.perf_counter()
        try:
            result = evaluate_sae(setup, loaded.sae, config.scoring(), causal)
        except Exception as error:  # one SAE's failure must not stop the others
            failures[name] = {
                "path": path,
                "error": f"{error.__class__.__name__}: {error}",
                "traceback": traceback.format_exc(),
            }
            continue
        seconds[name] = time.perf_counter() - started
        per_letter.append(result.per_letter.assign(sae=name, sae_path=path))
        aggregates.append({"sae": name, "sae_path": path, **result.aggregate._asdict()})
        sae_cfg = {"path": path, "source_format": loaded.source_format, **loaded.metadata}
        result_json = saebench_result(config, name, result, sae_cfg)
        run.write_json(f"results/{name}_absorption.json", result_json)
    if per_letter:
        run.write_table("per_letter", pd.concat(per_letter, ignore_index=True))
    if aggregates:
        table = pd.DataFrame(aggregates)
        for column in ("letters_scored", "letters_excluded"):
            table[column] = table[column].map(" ".join)
        run.write_table("aggregate", table)
    run.write_metrics(
        {
            "setup_folder": str(folder),
            "setup_seconds": setup_seconds,
            "vocabulary_size": setup.vocabulary_size,
            "n_words": len(setup.words),
            "vocabulary_fraction": len(setup.words) / setup.vocabulary_size,
            "n_train": len(setup.train_index),
            "n_test": len(setup.test_index),
            "icl_accuracy": setup.icl_accuracy,
            "probe_letters_above_min_f1": int((scores.f1_L > config.min_probe_f1).sum()),
            "probe_mean_f1": float(scores.f1_L.mean()),
            "aggregate": {row["sae"]: row for row in aggregates},
            "sae_seconds": seconds,
            "failures": failures,
        }
    )
    return run
