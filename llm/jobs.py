"""The language-model jobs as library calls: extract activations, train one SAE, evaluate one.

Each job is `run_<job>(config, out) -> Run`: it writes a run folder (config.json from the typed
config, metrics, tables, manifest with the activation cache's hashes, the model and its
quantization) and names its artefacts (`cache`, `sae`) so callers never rebuild paths. The
command line and the end-to-end `run` call these same functions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llm.cache import ExtractConfig
from theory.config import require_choice, require_positive_int
from toymodels.resources import check_allocation, resolve_device
from toymodels.runs import Run, RunView, check_run_folder
from toymodels.train import TrainConfig, discard_checkpoint

if TYPE_CHECKING:
    from llm.training import CacheSplit, TrainedSAE

# The architectures `llm train` offers, with the config field holding each one's sparsity.
SPARSITY_FIELD = {"topk": "k", "batchtopk": "k", "relu-l1": "l1", "jumprelu": "l0_coefficient"}


@dataclass(frozen=True)
class SAETrainConfig:
    """`llm train`: one SAE trained on an activation cache, evaluated on its held-out shards."""

    cache: str
    """Activation cache, or the run folder of `llm extract` holding one."""
    architecture: str = "topk"
    """topk | batchtopk | relu-l1 | jumprelu."""
    width: int = 1024
    """Latents of the SAE."""
    k: int = 32
    """topk / batchtopk: latents per token."""
    l1: float = 2.0
    """relu-l1: L1 coefficient (in normalised input units)."""
    l0_coefficient: float = 1.0
    """jumprelu: L0 penalty coefficient."""
    normalize: bool = True
    """Train on activations scaled to mean norm sqrt(d_model) (folded back on save)."""
    held_out_tokens: int = 16_384
    """Rows of the cache's last shards kept out of training, for evaluation."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(samples=200_000, checkpoint_every=200, progress=False)
    )

    def __post_init__(self) -> None:
        require_choice("architecture", self.architecture, SPARSITY_FIELD)
        require_positive_int("width", self.width)
        require_positive_int("k", self.k)
        require_positive_int("held_out_tokens", self.held_out_tokens)
        if self.architecture in ("topk", "batchtopk") and self.k > self.width:
            raise ValueError(f"k = {self.k} exceeds width = {self.width}; allowed: k <= width")

    def sae_config(self, d_in: int) -> dict:
        """make_sae's arguments for this SAE on d_in-dimensional activations."""
        sparsity = SPARSITY_FIELD[self.architecture]
        return {
            "architecture": self.architecture,
            "d_in": d_in,
            "n_latents": self.width,
            sparsity: getattr(self, sparsity),
        }


@dataclass(frozen=True)
class EvalConfig:
    """`llm eval`: an SAE's held-out reconstruction and its cost spliced into the model."""

    sae: str
    """SAE folder (ours or SAELens layout) or a Gemma Scope params.npz."""
    cache: str
    """Activation cache (or `llm extract` run folder) whose held-out rows are used."""
    model: str | None = None
    """Model to splice into (default: the cache's)."""
    corpus: str | None = None
    """Text for CE / KL (default: the cache's)."""
    batches: int = 4
    """Text batches for CE / KL."""
    batch_size: int = 4
    """Text windows per batch."""
    held_out_tokens: int = 16_384
    """Held-out rows for the reconstruction metrics."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N."""

    def __post_init__(self) -> None:
        for name in ("batches", "batch_size", "held_out_tokens"):
            require_positive_int(name, getattr(self, name))
        resolve_device(self.device)  # a device this machine lacks is refused here


def check_sae_memory(width: int, d_in: int, device: str, n_members: int = 1) -> None:
    """Refuse, before allocating, an SAE stack that cannot train in this machine's memory:
    W_enc and W_dec, their gradients and Adam's two moments, float32."""
    check_allocation(
        n_members * 2 * width * d_in * 4 * 4,
        f"{n_members} SAE(s) of width {width} on d_in {d_in} with Adam",
        device,
    )


def record_cache(run: Run, cache_dir: Path, manifest: dict) -> None:
    """The cache's identity in the run's manifest: its manifest's sha256 (which lists every
    shard's sha256), the corpus hash, the model and its quantization."""
    from llm.models import model_provenance
    from toymodels.runs import sha256_file

    run.record_provenance(**model_provenance(manifest["model"]))
    run.record_data_hash("corpus", manifest["corpus"]["sha256"])
    run.record_data_hash("activation_cache_manifest", sha256_file(cache_dir / "manifest.json"))


def run_extract(config: ExtractConfig, out: str | Path) -> Run | RunView:
    """Cache the activations in out/activations (resumable).

    Under torchrun the ranks share the forward passes (llm.cache.extract) and rank 0 alone
    writes the run and the one cache; the other ranks return a read-only view of it."""
    from llm.cache import extract
    from llm.corpus import load_corpus
    from llm.models import load_model
    from toymodels import distributed

    check_run_folder(out, config)
    device = distributed.process_device(config.device)
    with distributed.session(device) as me:
        model = load_model(config.model, device=str(device))
        if not config.layer < model.n_layers:
            raise ValueError(
                f"layer {config.layer} is out of range for {config.model}; "
                f"allowed: 0..{model.n_layers - 1}"
            )
        check_allocation(
            4 * config.batch_size * config.context_length * model.d_model * 8,
            f"a forward pass of {config.batch_size} x {config.context_length} tokens",
            config.device,
        )
        corpus = load_corpus(config.corpus)
        run = Run(out, config, kind="llm-extract") if me.is_main else None
        distributed.barrier()  # rank 0 has made the folder
        cache_dir = Path(out) / "activations"
        start = time.perf_counter()
        manifest = extract(model, corpus, config, cache_dir)
        seconds = time.perf_counter() - start
        if run is not None:
            record_cache(run, cache_dir, manifest)
            run.record_artefact("cache", cache_dir)
            run.write_metrics(
                {
                    "n_tokens": manifest["n_tokens"],
                    "n_shards": len(manifest["shards"]),
                    "d_model": manifest["d_model"],
                    "seconds": seconds,
                    "tokens_per_s": manifest["n_tokens"] / seconds,
                }
            )
        distributed.barrier()  # the other ranks return once the run is written
    return run if run is not None else RunView(Path(out))


def run_train(config: SAETrainConfig, out: str | Path, restart: bool = False) -> Run | RunView:
    """Train the SAE (resuming from the run's checkpoint, or from step 0 with `restart`),
    evaluate it on the held-out rows and save it in the SAELens layout (artefact "sae").

    Under torchrun every process trains its share of each global batch (toymodels.distributed)
    and rank 0 alone writes the run folder, recording world_size in the manifest; the other
    ranks wait for it and return a read-only view of the same folder."""
    import torch

    from llm.training import split_cache, train_on_cache
    from toymodels import distributed
    from toymodels.sae import make_sae

    check_run_folder(out, config)
    split = split_cache(config.cache, config.held_out_tokens)
    check_sae_memory(config.width, split.d_model, config.train.device)
    device = distributed.process_device(config.train.device)
    with distributed.session(device) as me:
        sae = make_sae(
            **config.sae_config(split.d_model),
            generator=torch.Generator().manual_seed(config.train.seed),
        )
        seed = config.train.seed
        run = None
        if me.is_main:
            run = Run(out, config, seeds={"sae_init": seed, "training": seed}, kind="llm-train")
            if restart:
                discard_checkpoint(run.folder / "checkpoint.pt")
            record_cache(run, split.cache_dir, split.manifest)
        start = time.perf_counter()
        trained = train_on_cache(
            sae,
            split,
            config.train,
            normalize=config.normalize,
            checkpoint_path=Path(out) / "checkpoint.pt",
        )
        seconds = time.perf_counter() - start
        if run is not None:
            _record_trained(run, config, split, trained, seconds)
        distributed.barrier()  # the other ranks return once the run is written
    return run if run is not None else RunView(Path(out))


def _record_trained(
    run: Run, config: SAETrainConfig, split: CacheSplit, trained: TrainedSAE, seconds: float
) -> None:
    """Held-out quality, the SAE in the SAELens layout, the training log and the metrics."""
    import pandas as pd

    from llm.evaluate import reconstruction_metrics
    from llm.models import model_provenance
    from llm.saefiles import saelens_hook_name, save_sae
    from llm.training import held_out_batches

    manifest = split.manifest
    held_out = held_out_batches(split, config.held_out_tokens, scale=trained.input_scale)
    quality = reconstruction_metrics(trained.sae, held_out)[0]
    hook_name = saelens_hook_name(manifest["layer"], manifest["hook"])
    folder = save_sae(
        trained.sae,
        run.path("sae"),
        input_scale=trained.input_scale,
        metadata={
            "model_name": manifest["model"],
            "hook_name": hook_name,
            "hook_layer": manifest["layer"],
            "context_size": manifest["config"]["context_length"],
            "prepend_bos": True,
            "dataset_path": manifest["corpus"]["name"],
            "model_quantization": model_provenance(manifest["model"])["model_quantization"],
        },
    )
    for name in ("cfg.json", "sae_weights.safetensors"):
        run.record_file(folder / name)
    run.record_artefact("sae", folder)
    log = trained.log.as_arrays()
    columns = ("total", "mse", "sparsity", "aux")
    run.write_table(
        "training_log",
        pd.DataFrame({"step": log["steps"], **{name: log[name][:, 0] for name in columns}}),
    )
    run.write_metrics(
        {
            **quality,
            "input_scale": trained.input_scale,
            "seconds": seconds,
            "tokens_per_s": config.train.samples / seconds,
            "held_out_tokens": config.held_out_tokens,  # split_cache holds out at least this
        }
    )


def run_eval(config: EvalConfig, out: str | Path) -> Run:
    """Reconstruction on the cache's held-out rows, then CE loss recovered and KL with the SAE
    spliced into the model, on text after the cached tokens."""
    from llm.cache import verify
    from llm.corpus import load_corpus
    from llm.evaluate import reconstruction_metrics, splice_metrics
    from llm.models import load_model, model_provenance
    from llm.saefiles import load_sae, saelens_hook_name
    from llm.training import held_out_batches, split_cache

    check_run_folder(out, config)
    split = split_cache(config.cache, config.held_out_tokens)
    manifest = verify(split.cache_dir, shards=split.held_out_shards)
    loaded = load_sae(config.sae)
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
    model_name = config.model or manifest["model"]
    corpus_spec = config.corpus or _corpus_spec(manifest["corpus"]["name"])
    corpus = load_corpus(corpus_spec)
    if corpus.sha256 != manifest["corpus"]["sha256"]:
        raise ValueError(
            f"corpus {corpus_spec!r} is not the text the cache was extracted from "
            "(sha256 differs); pass --corpus"
        )
    run = Run(out, config, kind="llm-eval")
    record_cache(run, split.cache_dir, manifest)
    run.record_provenance(**model_provenance(model_name))
    held_out = held_out_batches(split, config.held_out_tokens)
    quality = reconstruction_metrics(loaded.sae, held_out)[0]
    model = load_model(model_name, device=config.device)
    downstream = splice_metrics(
        model,
        loaded.sae,
        corpus,
        manifest["layer"],
        manifest["hook"],
        n_batches=config.batches,
        batch_size=config.batch_size,
        context_length=manifest["config"]["context_length"],
        skip_tokens=manifest["n_tokens"],
    )
    run.write_metrics({**quality, **downstream, "sae_source_format": loaded.source_format})
    return run


def _corpus_spec(name: str) -> str:
    """The load_corpus spec of a cached corpus name (the embedded one carries its version)."""
    from llm.corpus import EMBEDDED

    return EMBEDDED if name.startswith(f"{EMBEDDED}-") else name
