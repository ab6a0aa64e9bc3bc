"""The end-to-end job: theory, toy models, the embedded LLM, then one PDF report.

Each stage is a typed config and the library job it feeds (`run_<job>(config, out) -> Run`);
every stage's config is built, and so validated, before the first stage starts. Each stage
writes its own run folder under the output folder; a stage whose run folder already holds
metrics.json is skipped, so an interrupted `sae-hedging run` resumes where it stopped. Later
stages name earlier ones by their run folders (a run folder names its artefacts: the cache, the
SAE). The report is rebuilt from the run folders alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from theory.config import (
    require_choice,
    require_nonnegative_int,
    require_numbers,
    require_positive_int,
)
from theory.derive import derive
from theory.features import PAPER_L1, SCENARIOS, scenario
from theory.predictions import catalogue
from theory.sae import SAESpec
from toymodels.runs import Run


@dataclass(frozen=True)
class TheorySummaryConfig:
    """Exact optima on the paper's two-feature scenarios and the catalogue of closed forms."""

    scenarios: tuple[str, ...] = tuple(SCENARIOS)
    """Scenarios (P(parent) = p_parent)."""
    l1_values: tuple[float, ...] = PAPER_L1
    """L1 coefficients of the width-1 optima."""
    width2_l1: float = 2e-2
    """The one L1 at which width-2 optima (absorption) are found: their search takes seconds."""
    p_parent: float = 0.25
    """P(parent) of every scenario."""

    def __post_init__(self) -> None:
        require_numbers("l1_values", self.l1_values, 0)
        if self.width2_l1 not in self.l1_values:
            raise ValueError(f"width2_l1 = {self.width2_l1} must be one of l1_values")


SCALES = ("demo", "study", "paper")
ALPHABETIC_VOCABULARY = 139_533  # Gemma 3's alphabetic tokens, the absorption study's n_words=0


@dataclass(frozen=True)
class PipelineConfig:
    """`run`: theory, toy experiments, activations of a language model, SAEs trained on them
    and the hedging protocol, then one PDF report."""

    model: str = "gemma3-270m"
    """Offline name, Hugging Face id or model folder."""
    layer: int = 6
    """Hooked layer (resid_post)."""
    tokens: int = 60_000
    """Activation tokens to cache."""
    llm: bool = True
    """Run the language-model stages (false: theory and toy models only)."""
    title: str = "Feature hedging and absorption: theory vs SAEs"
    """The report's title."""
    scale: str = "demo"
    """demo (minutes on a CPU: what `make demo` runs) | study (longer CPU runs: more restarts,
    seeds and tokens) | paper (the hedging paper's settings: its models, widths, seeds and 250M
    tokens per stage, for GPUs; model and layer are the paper's, tokens is ignored)."""
    dry_run: bool = False
    """Print every stage with its work, cache size and expected CPU time (and, for the language
    model's stages, GPU time on `gpus` GPUs), and run nothing."""
    gpus: int = 1
    """GPUs the dry run's GPU-time estimate divides the work over."""

    def __post_init__(self) -> None:
        require_nonnegative_int("layer", self.layer)
        require_positive_int("tokens", self.tokens)
        require_choice("scale", self.scale, SCALES)
        require_positive_int("gpus", self.gpus)


@dataclass(frozen=True)
class Stage:
    """One step of the job: its run folder's name, its typed config and the job filling it."""

    name: str
    config: Any
    job: Callable[[Any, Path], Run] = field(repr=False)


def run_theory_summary(config: TheorySummaryConfig, out: Path) -> Run:
    """Exact optima of width-1 SAEs (and width-2 at one L1) on the scenarios, and the
    catalogue of named closed forms evaluated at the correlated scenario's values."""
    run = Run(out, config, kind="theory")
    rows = []
    for name in config.scenarios:
        model = scenario(name, config.p_parent)
        for l1 in config.l1_values:
            for width in (1, 2) if l1 == config.width2_l1 else (1,):
                record = derive(model, SAESpec(width, l1))
                for latent, (enc, dec) in enumerate(
                    zip(record["encoder"], record["decoder"], strict=True)
                ):
                    rows.append(
                        {
                            "scenario": name,
                            "l1": l1,
                            "width": width,
                            "latent": latent,
                            "decoder_parent": dec[0],
                            "decoder_child": dec[1],
                            "encoder_parent": enc[0],
                            "encoder_child": enc[1],
                            "fires_on": " ".join(record["fires_on"][latent]) or "-",
                            "expected_loss": record["expected_loss"],
                        }
                    )
    run.write_table("theory_optima", pd.DataFrame(rows))
    predictions = catalogue()
    defaults = {
        "p": 0.25,
        "a": 0.2,
        "b": 0.1,
        "lambda": 0.02,
        "P_10": 0.2,
        "P_11": 0.05,
        "P_01": 0.075,
        # beyond constant orthonormal features: the values at which each reduces to the above
        "mu_p": 1.0,
        "mu_c": 1.0,
        "sigma_p": 0.0,
        "sigma_c": 0.0,
        "rho": 0.0,
        "c": 0.0,
        "v_p": 0.0,
        "v_c": 0.0,
    }
    run.write_table(
        "predictions",
        pd.DataFrame(
            [
                {
                    "name": p.name,
                    "description": p.description,
                    "value_at_correlated_defaults": float(
                        p(*(defaults[str(s)] for s in p.symbols))
                    ),
                }
                for p in predictions
            ]
        ),
    )
    optima = pd.DataFrame(rows)
    width1 = optima[(optima.width == 1) & (optima.l1 == config.width2_l1)]
    run.write_metrics(
        {
            "formulas": {p.name: p.latex for p in predictions},
            "hedging_child_component_width1": {
                name: float(width1[width1.scenario == name].decoder_child.iloc[0])
                for name in config.scenarios
            },
        }
    )
    return run


def demo_stages(config: PipelineConfig, out: Path) -> list[Stage]:
    """The job's stages at config.scale: theory, the four toy experiments and, with an LLM,
    extraction, one SAE trained and evaluated, and the hedging protocol across widths on real
    activations (paper scale: the paper's extraction and one hedging run per width)."""
    from toymodels.experiments.absorption import ToyAbsorptionConfig, run_absorption
    from toymodels.experiments.hedging_width import HedgingWidthConfig, run_hedging_width
    from toymodels.experiments.matryoshka import ToyMatryoshkaConfig, run_matryoshka
    from toymodels.experiments.scenarios import FitConfig, ScenariosConfig, run_scenarios
    from toymodels.train import TrainConfig

    if config.scale == "demo":
        # The two features live in 8 dimensions instead of the library's 50: theory does not
        # depend on the embedding and a restart costs 7x less. Its landing rate is lower: with
        # 32 restarts per width-1 configuration the study measured 7/32 (anticorrelated, L1
        # 0.001) to 25/32, so a configuration misses with probability <= (25/32)^32 = 4e-4 and
        # one of the 12 about 0.5% of the time (16 restarts: about 5%).
        toy = [
            Stage(
                "toy-scenarios",
                ScenariosConfig(fit=FitConfig(d_in=8, restarts=32)),
                run_scenarios,
            ),
            Stage("toy-hedging-width", HedgingWidthConfig(), run_hedging_width),
            Stage("toy-absorption", ToyAbsorptionConfig(), run_absorption),
            Stage("toy-matryoshka", ToyMatryoshkaConfig(), run_matryoshka),
        ]
    elif config.scale == "study":  # more seeds and longer stages, the toolkit's protocol
        long_stage = TrainConfig(
            samples=500 * 1024, batch_size=1024, lr=2e-3, device="cpu", progress=False
        )
        toy = [
            Stage(
                "toy-scenarios",
                ScenariosConfig(fit=FitConfig(d_in=8, restarts=32)),
                run_scenarios,
            ),
            Stage(
                "toy-hedging-width",
                HedgingWidthConfig(seeds=4, train=long_stage),
                run_hedging_width,
            ),
            Stage("toy-absorption", ToyAbsorptionConfig(seeds=4), run_absorption),
            Stage("toy-matryoshka", ToyMatryoshkaConfig(seeds=4), run_matryoshka),
        ]
    else:  # paper: stages long enough for the paper protocol's 1,000-step dead-latent window
        long_stage = TrainConfig(
            samples=2_000 * 1024, batch_size=1024, lr=2e-3, device="cpu", progress=False
        )
        toy = [
            Stage("toy-scenarios", ScenariosConfig(), run_scenarios),
            Stage(
                "toy-hedging-width",
                HedgingWidthConfig(seeds=4, protocol="paper", train=long_stage),
                run_hedging_width,
            ),
            Stage("toy-absorption", ToyAbsorptionConfig(seeds=4), run_absorption),
            Stage("toy-matryoshka", ToyMatryoshkaConfig(seeds=4, protocol="paper"), run_matryoshka),
        ]
    stages = [Stage("theory", TheorySummaryConfig(), run_theory_summary), *toy]
    if not config.llm:
        return stages
    return stages + _llm_stages(config, out)


def _llm_stages(config: PipelineConfig, out: Path) -> list[Stage]:
    from llm.absorption.sweep import AbsorptionSweepConfig, run_absorption_sweep
    from llm.cache import ExtractConfig
    from llm.hedging import LLMHedgingConfig, run_llm_hedging
    from llm.jobs import EvalConfig, SAETrainConfig, run_eval, run_extract, run_train
    from toymodels.train import TrainConfig

    cache, trained = str(out / "llm-activations"), str(out / "llm-train")
    if config.scale == "paper":
        from llm.paper import PAPER_MODELS, paper_scale

        model = config.model if config.model in PAPER_MODELS else next(iter(PAPER_MODELS))
        sweep = paper_scale(model, cache)
        return [Stage("llm-activations", sweep.extract, run_extract)] + [
            Stage(f"llm-hedging-w{hedging.widths[0]}", hedging, run_llm_hedging)
            for hedging in sweep.hedging
        ]
    study = config.scale == "study"
    # The embedded corpus holds ~377k tokens: the study caches 360k and leaves the rest as the
    # evaluation's held-out text (llm-eval reads the text after the cache's).
    tokens = max(config.tokens, 360_000) if study else config.tokens

    def batches(samples: int, batch_size: int = 512) -> TrainConfig:
        return TrainConfig(
            samples=samples, batch_size=batch_size, checkpoint_every=200, progress=False
        )

    return [
        Stage(
            "llm-activations",
            ExtractConfig(model=config.model, layer=config.layer, tokens=tokens),
            run_extract,
        ),
        Stage(
            "llm-train",
            SAETrainConfig(
                cache=cache, architecture="topk", width=2048 if study else 1024, k=32,
                train=batches(2 * tokens, 1024 if study else 512),
            ),
            run_train,
        ),
        Stage("llm-eval", EvalConfig(sae=trained, cache=cache, batches=8 if study else 2),
              run_eval),
        Stage(
            "llm-hedging",
            LLMHedgingConfig(
                cache=cache, widths=(128, 256, 512),
                n_new=32, seeds=3 if study else 1,
                train=batches(100_000 if study else tokens // 2, 1024 if study else 512),
            ),
            run_llm_hedging,
        ),
        # First-letter absorption of TopK SAEs of widths x k on the same cache: the study
        # trains three widths x three k (three levels per trend), each on one pass over its
        # tokens, and samples 16,384 words (11.7% of Gemma 3's alphabetic vocabulary); the demo
        # two x two on a quarter of both.
        Stage(
            "llm-absorption",
            AbsorptionSweepConfig(
                cache=cache,
                widths=(1024, 2048, 4096) if study else (256, 1024),
                ks=(8, 16, 32) if study else (8, 32),
                train=batches(tokens, 1024 if study else 512),
                n_words=16_384 if study else 4_096, n_icl_check=256 if study else 64,
            ),
            run_absorption_sweep,
        ),
    ]  # fmt: skip


# Rates measured on this project's 2-core CPU (benchmarks/RESULTS.md; the demo's own runs), used
# to estimate a stage's CPU time in the dry run and the progress lines. Nothing is known for GPUs:
# none was lent yet.
CPU_EXTRACT_TOKENS_PER_S = {"gemma3-270m": 1_284.0}  # fp32, layer 8, quiet machine
# TopK, batch 512: the demo's llm-train (1024 latents, d_model 640); the cost scales with
# latents x d_model
CPU_SAE_LATENT_TOKENS_PER_S = 7.9e6
# The hedging protocol's stacks (BatchTopK, ReLU-L1) with their folding and held-out evaluation
# between stages: the demo's stage took 2.3x the training rate above.
HEDGING_OVERHEAD = 2.3
RATE_D_MODEL = 640
KNOWN_D_MODEL = {"gemma3-270m": 640, "smollm2-135m": 576, "google/gemma-2-2b": 2304,
                 "meta-llama/Llama-3.2-1B": 2048}  # fmt: skip
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# GPU time is estimated from floating-point work, not measured (no GPU was lent yet): a forward
# pass costs 2 FLOPs per non-embedding parameter per token, through the hooked layer only; an SAE
# training step 12 d_model x width per token (encoder and decoder, forward and backward). The
# sustained rate is an assumption: about a third of an H100's dense bf16 peak.
ASSUMED_GPU_FLOPS = 1e14
KNOWN_BODY_PARAMS = {  # (non-embedding parameters, decoder layers)
    "gemma3-270m": (1.0e8, 18), "smollm2-135m": (1.07e8, 30),
    "google/gemma-2-2b": (2.0e9, 26), "meta-llama/Llama-3.2-1B": (9.7e8, 16),
}  # fmt: skip
# The absorption study per word of its vocabulary sample (Gemma 3 270M, d_model 640): the per-hook
# setup (prompts through the truncated model: per layer it runs, measured at layer 3) and each
# SAE's codes, k-sparse probing and scores (benchmarks/bench_absorption.py).
CPU_ABSORPTION_SETUP_S_PER_WORD_LAYER = 66.0 / 16_384 / 4  # the demo: 44 s for the stage
CPU_ABSORPTION_SAE_S_PER_WORD = 23.0 / 16_384
# Toy stages: samples x stack members per second, per experiment (the demo's own runs; the
# scenarios' at 50 dimensions).
CPU_TOY_MEMBER_SAMPLES_PER_S = {
    "ScenariosConfig": 1.1e6,
    "HedgingWidthConfig": 2.1e5,
    "ToyAbsorptionConfig": 6.7e5,
    "ToyMatryoshkaConfig": 2.4e6,
}
CPU_FIXED_SECONDS = {"TheorySummaryConfig": 3.0, "EvalConfig": 55.0}  # the demo's stages


class StagePlan(NamedTuple):
    """What one stage will do, for the dry run and the progress lines."""

    name: str
    work: str
    disk_bytes: int | None
    cpu_seconds: float | None
    flops: float | None = None
    """Floating-point work of the language model's stages (None: not estimated)."""


def _sae_seconds(latent_tokens: float, d_model: int | None) -> float | None:
    if d_model is None:
        return None
    return latent_tokens * d_model / RATE_D_MODEL / CPU_SAE_LATENT_TOKENS_PER_S


def _sae_flops(latent_tokens: float, d_model: int | None) -> float | None:
    return None if d_model is None else 12.0 * latent_tokens * d_model


def _toy_work(job: Any) -> tuple[str, float] | None:
    """What a toy experiment trains and its member-samples (stack members x samples each; the
    scenarios' in 50-dimensional units: their cost scales with the embedding dimension)."""
    name = type(job).__name__
    if name == "ScenariosConfig":
        configs = len(job.scenarios) * len(job.l1_values) * len(job.widths)
        return (
            f"{configs} configurations x {job.fit.restarts} restarts in {job.fit.d_in} dimensions",
            configs * job.fit.restarts * job.fit.train.samples * job.fit.d_in / 50,
        )
    if name == "HedgingWidthConfig":
        members = len(job.widths) * job.seeds
        return (
            f"{members} SAEs x 3 stages ({job.protocol} protocol)",
            3 * members * job.train.samples,
        )
    if name == "ToyAbsorptionConfig":
        members = len(job.leaks) * job.seeds
        return f"{len(job.leaks)} leaks x {job.seeds} seeds", members * job.train.samples
    if name == "ToyMatryoshkaConfig":
        members = len(job.mu_values) * job.seeds
        return f"{len(job.mu_values)} mu x {job.seeds} seeds", members * job.train.samples
    return None


def plan_pipeline(config: PipelineConfig, out: str | Path) -> list[StagePlan]:
    """Every stage with its work, the cache's size on disk and an expected CPU time where this
    machine has measured the rate (None otherwise)."""
    from llm.absorption.sweep import AbsorptionSweepConfig
    from llm.cache import ExtractConfig
    from llm.hedging import LLMHedgingConfig
    from llm.jobs import SAETrainConfig

    plans, d_model, layer = [], None, 0  # the cache's, once its extraction is planned
    for stage in demo_stages(config, Path(out)):
        job, disk, seconds = stage.config, None, None
        kind = type(job).__name__
        flops = None
        if isinstance(job, ExtractConfig):
            d_model, layer = KNOWN_D_MODEL.get(job.model), job.layer
            if job.model in KNOWN_BODY_PARAMS:
                params, n_layers = KNOWN_BODY_PARAMS[job.model]
                flops = 2 * params * (job.layer + 1) / n_layers * job.tokens
            if d_model is not None:
                disk = job.tokens * d_model * DTYPE_BYTES[job.dtype]
            rate = CPU_EXTRACT_TOKENS_PER_S.get(job.model)
            seconds = None if rate is None else job.tokens / rate
            work = f"{job.tokens:,} tokens of {job.model} layer {job.layer}"
        elif isinstance(job, SAETrainConfig):
            seconds = _sae_seconds(job.train.samples * job.width, d_model)
            flops = _sae_flops(job.train.samples * job.width, d_model)
            work = f"{job.architecture} width {job.width} on {job.train.samples:,} tokens"
        elif isinstance(job, LLMHedgingConfig):
            n_stacks = len(job.architectures) + (1 if job.mus else 0)
            members = job.seeds * len(job.widths)
            per_stage = job.train.samples * members * max(job.widths)
            seconds = _sae_seconds(3 * n_stacks * per_stage, d_model)
            seconds = None if seconds is None else seconds * HEDGING_OVERHEAD
            flops = _sae_flops(3 * n_stacks * per_stage, d_model)
            work = (
                f"{n_stacks} stacks x {members} SAEs (widths {list(job.widths)}), "
                f"3 stages of {job.train.samples:,} tokens"
            )
        elif isinstance(job, AbsorptionSweepConfig):
            saes = len(job.widths) * len(job.ks)
            train = _sae_seconds(job.train.samples * sum(job.widths) * len(job.ks), d_model)
            words = job.n_words or ALPHABETIC_VOCABULARY
            per_word = (
                CPU_ABSORPTION_SETUP_S_PER_WORD_LAYER * (layer + 1)
                + saes * CPU_ABSORPTION_SAE_S_PER_WORD
            )
            if train is not None and d_model == KNOWN_D_MODEL["gemma3-270m"]:
                seconds = train + words * per_word
            work = (
                f"{saes} TopK SAEs (widths {list(job.widths)} x k {list(job.ks)}) on "
                f"{job.train.samples:,} tokens each, absorption on {words:,} words"
            )
        elif (toy := _toy_work(job)) is not None:
            work, member_samples = toy
            seconds = member_samples / CPU_TOY_MEMBER_SAMPLES_PER_S[kind]
        else:
            work, seconds = kind, CPU_FIXED_SECONDS.get(kind)
        plans.append(StagePlan(stage.name, work, disk, seconds, flops))
    return plans


def run_pipeline(config: PipelineConfig, out: str | Path) -> Path:
    """Run the demo stages that have not finished yet, then rebuild the report from every run.
    Every stage's config is built (and so checked) first, and the model and layer are checked
    against the model's own config, so a bad request fails before the first stage."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; the job needs a folder (choose another --out)")
    stages = demo_stages(config, out)
    if config.llm and config.scale != "paper":  # the paper's models and layers are fixed
        from llm.models import count_layers

        n_layers = count_layers(config.model)
        if config.layer >= n_layers:
            raise ValueError(
                f"layer {config.layer} is out of range for {config.model}; "
                f"allowed: 0..{n_layers - 1}"
            )
    return run_stages(stages, out, config.title, plan_pipeline(config, out))


def run_stages(
    stages: list[Stage], out: Path, title: str, plans: list[StagePlan] | None = None
) -> Path:
    """Run the stages that have not finished yet, then rebuild the report from every run.
    One line as each stage starts (its work and expected CPU time, where `plans` has them) and
    one as it ends (its time, the time so far and the expected time left)."""
    from reports.pdf import build_report

    out.mkdir(parents=True, exist_ok=True)
    expected = {plan.name: plan for plan in plans or []}
    folders, started = [], time.monotonic()
    for number, stage in enumerate(stages, 1):
        folder = out / stage.name
        tag = f"[run {number}/{len(stages)}] {stage.name}"
        plan = expected.get(stage.name)
        if (folder / "metrics.json").is_file():
            print(f"{tag}: already done ({folder})", flush=True)
        else:
            what = "" if plan is None else f": {plan.work}"
            print(f"{tag}{what}{_minutes(plan and plan.cpu_seconds, ' (expected ~{})')} ...",
                  flush=True)  # fmt: skip
            begun = time.monotonic()
            stage.job(stage.config, folder).close()
            left = sum(
                expected[s.name].cpu_seconds or 0.0
                for s in stages[number:]
                if s.name in expected and not (out / s.name / "metrics.json").is_file()
            )
            print(
                f"{tag}: done in {_minutes(time.monotonic() - begun)}; "
                f"{_minutes(time.monotonic() - started)} so far"
                + _minutes(left or None, ", ~{} expected for the rest"),
                flush=True,
            )
        folders.append(folder)
    print(f"[run] report from {len(folders)} run folders ...", flush=True)
    return build_report(folders, out / "report.pdf", title=title)


def _minutes(seconds: float | None, template: str = "{}") -> str:
    """'42 s' or '3.1 min' in `template`; '' when the time is unknown."""
    if seconds is None:
        return ""
    text = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
    return template.format(text)
