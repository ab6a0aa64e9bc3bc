"""The absorption sweep: `run_absorption_sweep(config, out) -> Run` trains one TopK SAE per
(width, k) on an activation cache and measures first-letter absorption on all of them at the
cache's hook, so absorption can be read against width and sparsity (L0).

Run folder `out`:
- saes/w<width>_k<k>/: one `llm train` run per SAE (llm.jobs.run_train); a finished one
  (metrics.json and its SAE present, same config) is reused, an unfinished one resumes from its
  checkpoint;
- absorption/: one `llm absorption` run over every SAE that trained (one per-hook setup, the
  model loaded once); a finished one with the same SAEs is reused;
- tables/sweep.csv: one row per (width, k): status (ok, train failed, absorption failed), mean
  absorption fraction, full-absorption rate, split features, the mean over the scored letters
  of the main latents' precision, recall and F1 and of the best single latent's F1, held-out
  explained variance, L0 and dead fraction;
- tables/per_letter.csv: the absorption run's per-letter rows with width, k and, per letter,
  main_precision / main_recall / main_f1 (the main latents as a classifier: the letter is
  predicted when any main latent fires, code > 0, on a test-split word) and best_latent_f1 (the
  highest F1 of any single latent firing, over all latents);
- tables/probe.csv: the letter probe's per-letter precision, recall, F1 (the absorption run's);
- metrics.json: per SAE its training metrics, and every failure with its traceback. A failure
  of one SAE (training or absorption) is recorded and the others still run.
"""

from __future__ import annotations

import json
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse

from llm.absorption.hook_setup import HookSetup
from llm.absorption.job import AbsorptionConfig
from theory.config import (
    require_choice,
    require_nonnegative_int,
    require_number,
    require_positive_int,
    require_positive_ints,
)
from toymodels.runs import Run, check_run_folder, named_artefact
from toymodels.train import TrainConfig

SWEEP_COLUMNS = (
    "sae", "width", "k", "status", "mean_absorption_fraction", "full_absorption_rate",
    "mean_num_split_features", "main_precision", "main_recall", "main_f1", "best_latent_f1",
    "letters_scored", "explained_variance", "l0", "dead_fraction",
)  # fmt: skip


@dataclass(frozen=True)
class AbsorptionSweepConfig:
    """`llm absorption-sweep`: TopK SAEs of every width x k trained on one activation cache, then
    first-letter absorption of all of them at the cache's hook point."""

    cache: str
    """Activation cache, or the run folder of `llm extract` holding one (model, layer and hook
    are the cache's)."""
    widths: tuple[int, ...] = (512, 1024, 2048)
    """SAE widths (latents)."""
    ks: tuple[int, ...] = (8, 32)
    """TopK k values (latents per token, the L0)."""
    normalize: bool = True
    """Train on activations scaled to mean norm sqrt(d_model) (folded back on save)."""
    held_out_tokens: int = 16_384
    """Rows of the cache's last shards kept out of training, for explained variance and L0."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(samples=200_000, checkpoint_every=200, progress=False)
    )
    """Training of each SAE; train.device also runs the model for the absorption study."""
    n_words: int = 16384
    """Words sampled (seeded) from the alphabetic vocabulary; 0: the whole vocabulary."""
    test_fraction: float = 0.2
    """Share of each letter's words in the test split."""
    n_icl_examples: int = 10
    """Solved examples before the query in each prompt."""
    absorption_seed: int = 0
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
    prompt_batch_size: int = 64
    """Prompts per forward pass of the model."""
    dtype: str = "float32"
    """Model dtype: float32, bfloat16 or float16."""
    setup_dir: str | None = None
    """Folder of the per-hook setup; None: under the user cache, keyed by model, layer, hook and
    a hash of the setup settings."""

    def __post_init__(self) -> None:
        require_positive_ints("widths", self.widths, distinct=True)
        require_positive_ints("ks", self.ks, distinct=True)
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "ks", tuple(self.ks))
        too_large = [(w, k) for w in self.widths for k in self.ks if k > w]
        if too_large:
            raise ValueError(f"k exceeds width for (width, k) {too_large}; allowed: k <= width")
        require_positive_int("held_out_tokens", self.held_out_tokens)
        for name in ("probe_epochs", "k_max", "prompt_batch_size", "n_icl_examples"):
            require_positive_int(name, getattr(self, name))
        for name in ("min_letters", "n_icl_check", "n_words"):
            require_nonnegative_int(name, getattr(self, name))
        if self.n_words == 1:
            raise ValueError("n_words must be 0 (the whole vocabulary) or >= 2, got 1")
        if isinstance(self.absorption_seed, bool) or not isinstance(self.absorption_seed, int):
            raise ValueError(f"absorption_seed must be an integer, got {self.absorption_seed!r}")
        require_number("test_fraction", self.test_fraction, 0, 1, open_low=True)
        if self.test_fraction >= 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")
        require_number("tau", self.tau, 0)
        require_number("min_probe_f1", self.min_probe_f1, 0)
        from llm.models import DTYPES

        require_choice("dtype", self.dtype, DTYPES)

    def sae_configs(self) -> dict[str, object]:
        """Sub-run name -> the `llm train` config of each (width, k)."""
        from llm.jobs import SAETrainConfig

        return {
            sae_run_name(w, k): SAETrainConfig(
                cache=self.cache,
                architecture="topk",
                width=w,
                k=k,
                normalize=self.normalize,
                held_out_tokens=self.held_out_tokens,
                train=self.train,
            )
            for w in self.widths
            for k in self.ks
        }

    def absorption_config(
        self, model: str, layer: int, hook: str, sae_paths: tuple[str, ...]
    ) -> AbsorptionConfig:
        return AbsorptionConfig(
            model=model,
            layer=layer,
            hook=hook,
            sae_paths=sae_paths,
            n_words=self.n_words,
            test_fraction=self.test_fraction,
            n_icl_examples=self.n_icl_examples,
            seed=self.absorption_seed,
            probe_epochs=self.probe_epochs,
            k_max=self.k_max,
            tau=self.tau,
            min_probe_f1=self.min_probe_f1,
            min_letters=self.min_letters,
            n_icl_check=self.n_icl_check,
            batch_size=self.prompt_batch_size,
            device=self.train.device,
            dtype=self.dtype,
            setup_dir=self.setup_dir,
        )


def sae_run_name(width: int, k: int) -> str:
    return f"w{width}_k{k}"


def _finished(folder: Path, config: object) -> bool:
    """A run folder of this config whose job completed (metrics.json written last)."""
    if not (folder / "metrics.json").is_file():
        return False
    try:
        check_run_folder(folder, config)
    except ValueError:
        return False
    sae = named_artefact(folder, "sae")
    return sae is None or sae.is_dir()


def _failure(stage: str, error: Exception) -> dict:
    return {
        "stage": stage,
        "error": f"{error.__class__.__name__}: {error}",
        "traceback": traceback.format_exc(),
    }


def latent_classifier_scores(
    codes_NF: scipy.sparse.csr_matrix,
    letters_N: np.ndarray,
    main_latents_L: list[list[int]],
    n_letters: int = 26,
) -> pd.DataFrame:
    """Per letter: the main latents as a classifier (letter predicted when any fires, code > 0)
    - precision, recall, F1 - and the best F1 of any single latent firing. codes_NF: scipy
    sparse (N, F) codes; letters_N: each word's letter index."""
    fires_NF = scipy.sparse.csr_matrix(codes_NF > 0, dtype=np.float64)
    n = fires_NF.shape[0]
    onehot_NL = scipy.sparse.csr_matrix(
        (np.ones(n), (np.arange(n), letters_N)), shape=(n, n_letters)
    )
    true_FL = np.asarray((fires_NF.T @ onehot_NL).todense())
    fired_F = np.asarray(fires_NF.sum(0)).ravel()
    positives_L = np.bincount(letters_N, minlength=n_letters).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_FL = 2 * true_FL / (fired_F[:, None] + positives_L[None])
    best_L = np.nanmax(np.where(np.isfinite(f1_FL), f1_FL, -np.inf), axis=0)
    rows = []
    for letter in range(n_letters):
        latents = main_latents_L[letter]
        is_letter = letters_N == letter
        if latents:
            predicted = np.asarray(fires_NF[:, latents].sum(1) > 0).ravel()
        else:
            predicted = np.zeros(n, bool)
        tp = float((predicted & is_letter).sum())
        n_predicted, n_letter = float(predicted.sum()), float(is_letter.sum())
        precision = tp / n_predicted if n_predicted else np.nan
        recall = tp / n_letter if n_letter else np.nan
        f1 = 2 * tp / (n_predicted + n_letter) if n_predicted + n_letter else np.nan
        rows.append(
            {
                "main_precision": precision,
                "main_recall": recall,
                "main_f1": f1,
                "best_latent_f1": best_L[letter] if np.isfinite(best_L[letter]) else np.nan,
            }
        )
    return pd.DataFrame(rows)


def _latent_scores(setup: HookSetup, sae_path: str, per_letter: pd.DataFrame) -> pd.DataFrame:
    """latent_classifier_scores of one SAE on the setup's test split (codes of the folded SAE,
    as the absorption scores use)."""
    from llm.absorption.evaluate import folded_copy
    from llm.absorption.main_latents import sparse_codes
    from llm.saefiles import load_sae

    sae = folded_copy(load_sae(sae_path).sae)
    codes_NF = sparse_codes(sae, setup.test_acts_ND)
    mains = [
        [] if pd.isna(text) else [int(float(j)) for j in str(text).split()]
        for text in per_letter["main_latents"]
    ]
    return latent_classifier_scores(codes_NF, setup.letters_test_N.numpy(), mains)


def run_absorption_sweep(config: AbsorptionSweepConfig, out: str | Path) -> Run:
    """Train every (width, k) SAE, measure absorption on all of them, write `out` (module
    docstring)."""
    from llm.absorption.hook_setup import prepare_setup
    from llm.absorption.job import run_absorption
    from llm.cache import read_manifest
    from llm.jobs import run_train
    from llm.models import load_model
    from llm.training import find_cache

    check_run_folder(out, config)
    cache_dir = find_cache(config.cache)
    manifest = read_manifest(cache_dir)
    run = Run(out, config, seeds={"training": config.train.seed,
                                  "absorption": config.absorption_seed},
              kind="llm-absorption-sweep")  # fmt: skip
    from llm.jobs import record_cache

    record_cache(run, cache_dir, manifest)
    failures: dict[str, dict] = {}
    trained: dict[str, dict] = {}
    shape = {sae_run_name(w, k): (w, k) for w in config.widths for k in config.ks}
    for name, train_config in config.sae_configs().items():
        folder = run.path("saes", name)
        try:
            if not _finished(folder, train_config):
                run_train(train_config, folder).close()
            metrics = json.loads((folder / "metrics.json").read_text())
            sae = named_artefact(folder, "sae")
            if sae is None:
                raise ValueError(f"{folder} names no SAE artefact")
        except Exception as error:  # one SAE's failure must not stop the others
            failures[name] = _failure("train", error)
            continue
        trained[name] = {"path": str(sae), "metrics": metrics}

    model = load_model(manifest["model"], device=config.train.device, dtype=config.dtype)
    absorption = config.absorption_config(
        manifest["model"],
        manifest["layer"],
        manifest["hook"],
        tuple(entry["path"] for entry in trained.values()),
    )
    absorption_folder = run.path("absorption")
    if not _finished(absorption_folder, absorption) and absorption_folder.exists():
        shutil.rmtree(absorption_folder)  # another set of SAEs, or unfinished: recompute
    if not _finished(absorption_folder, absorption):
        run_absorption(absorption, absorption_folder, model=model).close()
    tables = {p.stem: pd.read_csv(p) for p in (absorption_folder / "tables").glob("*.csv")}
    absorption_metrics = json.loads((absorption_folder / "metrics.json").read_text())
    by_path = {entry["path"]: name for name, entry in trained.items()}
    for failure in (absorption_metrics.get("failures") or {}).values():
        failures[by_path[failure["path"]]] = {"stage": "absorption", **failure}
    setup = prepare_setup(model, absorption.setup_config(), absorption_metrics["setup_folder"])

    per_letter_parts, rows = [], []
    aggregate = tables.get("aggregate", pd.DataFrame(columns=["sae_path"])).set_index("sae_path")
    letters = tables.get("per_letter", pd.DataFrame(columns=["sae_path"]))
    for name, (width, k) in shape.items():
        row = {"sae": name, "width": width, "k": k}
        if name in trained:
            metrics = trained[name]["metrics"]
            row.update({key: metrics.get(key) for key in ("explained_variance", "l0",
                                                          "dead_fraction")})  # fmt: skip
        if name in failures:
            rows.append({**row, "status": f"{failures[name]['stage']} failed"})
            continue
        path = trained[name]["path"]
        ours = letters[letters.sae_path == path].reset_index(drop=True)
        ours["sae"] = name  # the absorption run names SAEs by folder ("sae", "sae_2", ...)
        try:
            scores = _latent_scores(setup, path, ours)
        except Exception as error:
            failures[name] = _failure("latent scores", error)
            rows.append({**row, "status": "latent scores failed"})
            continue
        ours = pd.concat([ours, scores], axis=1)
        ours.insert(1, "width", width)
        ours.insert(2, "k", k)
        per_letter_parts.append(ours)
        summary = aggregate.loc[path]
        scored = str(summary.get("letters_scored", "") or "").split()
        scored_rows = ours[ours.letter.isin(scored)] if scored else ours
        rows.append(
            {
                **row,
                "status": "ok",
                "mean_absorption_fraction": summary["mean_absorption_fraction_score"],
                "full_absorption_rate": summary["mean_full_absorption_score"],
                "mean_num_split_features": summary["mean_num_split_features"],
                "main_precision": scored_rows.main_precision.mean(),
                "main_recall": scored_rows.main_recall.mean(),
                "main_f1": scored_rows.main_f1.mean(),
                "best_latent_f1": scored_rows.best_latent_f1.mean(),
                "letters_scored": len(scored),
            }
        )
    run.write_table("sweep", pd.DataFrame(rows).reindex(columns=list(SWEEP_COLUMNS)))
    if per_letter_parts:
        run.write_table("per_letter", pd.concat(per_letter_parts, ignore_index=True))
    if "probe" in tables:
        run.write_table("probe", tables["probe"])
    run.write_metrics(
        {
            "model": manifest["model"],
            "layer": manifest["layer"],
            "hook": manifest["hook"],
            "absorption_run": str(absorption_folder),
            "setup_folder": absorption_metrics["setup_folder"],
            "probe_mean_f1": absorption_metrics.get("probe_mean_f1"),
            "icl_accuracy": absorption_metrics.get("icl_accuracy"),
            "saes": {name: entry["metrics"] for name, entry in trained.items()},
            "failures": failures,
        }
    )
    return run
