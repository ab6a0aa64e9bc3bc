"""Activation cache: extraction of one hook point's activations into verified safetensors shards,
resumable after an interruption, and a shuffled, bounded-memory stream over them for training.

A cache folder holds shard_00000.safetensors, ... (tensors `activations` (N, d_model) and
`token_ids` (N,)) and manifest.json (model, layer, hook, dtype, d_model, token count, per-shard
sha256, corpus hash, the full request). The manifest is rewritten atomically after each shard,
so an interrupted extraction resumes at the first unfinished shard and ends with the same
files and manifest as an uninterrupted one. One extraction at a time holds the folder's RunLock;
it removes the temporaries a killed one left. Shards are hash-checked whenever they are read.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from llm.corpus import Corpus, token_batches
from llm.models import DTYPES, HOOKS, LoadedModel, activations
from theory.config import require_choice, require_nonnegative_int, require_positive_int
from toymodels import distributed
from toymodels.resources import resolve_device
from toymodels.runs import RunLock, atomic_write_bytes, atomic_write_json, sha256_file

MANIFEST = "manifest.json"
FORMAT = "sae-hedging-activations/1"


def _shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


@dataclass(frozen=True)
class ExtractConfig:
    """`llm extract`: cache one hook point's activations of a language model on a corpus."""

    model: str = "gemma3-270m"
    """gemma3-270m | smollm2-135m (embedded, offline) | a Hugging Face model id | a folder."""
    layer: int = 8
    """Decoder block whose activations are cached (0-based)."""
    hook: str = "resid_post"
    """resid_pre | resid_post | attn_out | mlp_out."""
    tokens: int = 200_000
    """Activations to cache (fewer if the corpus runs out)."""
    corpus: str = "python-docs"
    """python-docs (embedded) | a text file or folder | a Hugging Face dataset."""
    dtype: str = "float32"
    """Precision of the stored activations: float32 | bfloat16 | float16."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N."""
    shard_tokens: int = 16_384
    """Activations per shard file."""
    batch_size: int = 32
    """Text windows per forward pass."""
    context_length: int = 128
    """Tokens per text window."""

    def __post_init__(self) -> None:
        require_choice("hook point", self.hook, HOOKS)
        require_choice("dtype", self.dtype, DTYPES)
        require_nonnegative_int("layer", self.layer)
        for name in ("tokens", "shard_tokens", "batch_size", "context_length"):
            require_positive_int(name, getattr(self, name))
        resolve_device(self.device)  # a device this machine lacks is refused here


def extract(model: LoadedModel, corpus: Corpus, config: ExtractConfig, out_dir: str | Path) -> dict:
    """Write config.tokens activations (fewer if the corpus runs out) and return the manifest.

    Only positions marked kept by token_batches (no BOS, separators, padding) are stored, in
    corpus order. Resumes an interrupted extraction in `out_dir`; refuses, without touching it, a
    folder whose manifest was written for a different request, and refuses a folder another
    extraction is writing (RunLock).
    """
    if not 0 <= config.layer < model.n_layers:
        raise ValueError(f"layer {config.layer} is out of range; allowed: 0..{model.n_layers - 1}")
    out_dir = Path(out_dir)
    request = {
        "model": model.name,
        "model_dtype": str(model.dtype).removeprefix("torch."),
        "layer": config.layer,
        "hook": config.hook,
        "dtype": config.dtype,
        "n_tokens": config.tokens,
        "shard_tokens": config.shard_tokens,
        "batch_size": config.batch_size,
        "context_length": config.context_length,
        "corpus": corpus.name,
        "corpus_sha256": corpus.sha256,
    }
    _check_request(out_dir, request)  # before the lock, which would add its files to the folder
    with distributed.session(model.device) as me:
        with RunLock(out_dir) if me.is_main else contextlib.nullcontext():
            if me.is_main:
                manifest = _resume_or_start(out_dir, request, model.d_model)
            distributed.barrier()  # the other ranks read what rank 0 resumed or started
            if not me.is_main:
                manifest = read_manifest(out_dir)
            if not manifest["complete"]:
                _extract_remaining(model, corpus, out_dir, manifest)
            distributed.barrier()
        return manifest if me.is_main else read_manifest(out_dir)


def _extract_remaining(model: LoadedModel, corpus: Corpus, out_dir: Path, manifest: dict) -> None:
    """Extract the shards the manifest's request still lacks, then mark the manifest complete.

    Under torchrun the corpus's batches are dealt round-robin: in each round of world_size
    batches rank r runs the forward pass of the r-th, and rank 0 gathers the rows in corpus order
    and alone writes the shards and the manifest, which are those of one process."""
    request = manifest["config"]
    layer, hook, dtype = request["layer"], request["hook"], request["dtype"]
    n_tokens, shard_tokens = request["n_tokens"], request["shard_tokens"]
    batch_size, context_length = request["batch_size"], request["context_length"]
    me = distributed.world() if distributed.is_distributed() else distributed.World(0, 1, 0)
    skip = sum(shard["n_tokens"] for shard in manifest["shards"])
    already_cached = skip
    seen = 0  # kept positions of the corpus passed so far
    pending_acts: list[torch.Tensor] = []
    pending_ids: list[torch.Tensor] = []
    batches = token_batches(model.tokenizer, corpus, context_length, batch_size)
    while seen < n_tokens and (dealt := list(itertools.islice(batches, me.world_size))):
        rows = None  # this rank's kept rows of its batch: (activations, token ids)
        for position, batch in enumerate(dealt):
            n_kept = int(batch.keep_BT.sum())
            # a batch inside finished shards needs no forward pass
            if position == me.rank and seen + n_kept > already_cached:
                acts_BTD = activations(
                    model, batch.input_ids_BT, batch.attention_mask_BT, layer, hook
                )
                keep_BT = batch.keep_BT.to(acts_BTD.device)
                drop = max(0, already_cached - seen)
                rows = (
                    acts_BTD[keep_BT][drop:].to("cpu", DTYPES[dtype]),
                    batch.input_ids_BT[batch.keep_BT][drop:].to(torch.int32),
                )
            seen += n_kept
        for gathered in distributed.gather_to_main(rows):
            if gathered is None:
                continue
            pending_acts.append(gathered[0])
            pending_ids.append(gathered[1])
            while _pending(pending_ids) >= min(shard_tokens, n_tokens - skip) > 0:
                size = min(shard_tokens, n_tokens - skip)
                skip += _write_shard(out_dir, manifest, pending_acts, pending_ids, size)
    if not me.is_main:
        return
    if _pending(pending_ids) and skip < n_tokens:  # the corpus ran out: a last, shorter shard
        _write_shard(out_dir, manifest, pending_acts, pending_ids, _pending(pending_ids))
    manifest["complete"] = True
    atomic_write_json(out_dir / MANIFEST, manifest)


def _pending(pending_ids: list[torch.Tensor]) -> int:
    return sum(len(ids) for ids in pending_ids)


def _write_shard(
    out_dir: Path, manifest: dict, pending_acts: list, pending_ids: list, size: int
) -> int:
    """Write the first `size` pending rows as the next shard, record it, keep the rest pending."""
    acts_ND, ids_N = torch.cat(pending_acts), torch.cat(pending_ids)
    data = save_safetensors(
        {"activations": acts_ND[:size].contiguous(), "token_ids": ids_N[:size].contiguous()}
    )
    name = _shard_name(len(manifest["shards"]))
    atomic_write_bytes(out_dir / name, data)
    manifest["shards"].append(
        {"file": name, "n_tokens": size, "sha256": hashlib.sha256(data).hexdigest()}
    )
    manifest["n_tokens"] += size
    atomic_write_json(out_dir / MANIFEST, manifest)
    pending_acts[:] = [acts_ND[size:]]
    pending_ids[:] = [ids_N[size:]]
    return size


def _resume_or_start(out_dir: Path, config: dict, d_model: int) -> dict:
    path = out_dir / MANIFEST
    if not path.exists():
        manifest = {
            "format": FORMAT,
            "model": config["model"],
            "layer": config["layer"],
            "hook": config["hook"],
            "dtype": config["dtype"],
            "d_model": d_model,
            "corpus": {"name": config["corpus"], "sha256": config["corpus_sha256"]},
            "n_tokens": 0,
            "n_shards_planned": math.ceil(config["n_tokens"] / config["shard_tokens"]),
            "shards": [],
            "complete": False,
            "config": config,
        }
        atomic_write_json(path, manifest)
        return manifest
    _check_request(out_dir, config)
    return verify(out_dir)


def _check_request(out_dir: Path, config: dict) -> None:
    """Refuse a folder holding a cache made for another request; read-only."""
    path = out_dir / MANIFEST
    if not path.exists():
        return
    cached = read_manifest(out_dir)["config"]
    differing = sorted(
        key for key in config.keys() | cached.keys() if config.get(key) != cached.get(key)
    )
    if differing:
        details = "; ".join(
            f"{key}: cached {cached.get(key)!r}, requested {config.get(key)!r}" for key in differing
        )
        raise ValueError(f"{out_dir} holds a cache made for a different request ({details})")


def verify(cache_dir: str | Path, shards: Sequence[int] | None = None) -> dict:
    """The manifest, after checking the recorded shards (all, or the indices in `shards`)
    against their sha256; one error names every missing or corrupt one."""
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    recorded = manifest["shards"]
    indices = range(len(recorded)) if shards is None else list(shards)
    if any(not 0 <= i < len(recorded) for i in indices):
        raise ValueError(
            f"shards {list(indices)} are not all shards of {cache_dir}; "
            f"allowed: 0..{len(recorded) - 1}"
        )
    problems = []
    for shard in (recorded[i] for i in indices):
        path = cache_dir / shard["file"]
        if not path.exists():
            problems.append(f"{shard['file']} is missing")
        elif sha256_file(path) != shard["sha256"]:
            problems.append(f"{shard['file']} is corrupt (sha256 differs)")
    if problems:
        raise _damaged(cache_dir, problems)
    return manifest


def _damaged(cache_dir: Path, problems: list[str]) -> ValueError:
    return ValueError(
        f"activation cache {cache_dir} is damaged: {', '.join(problems)}; "
        "delete the folder and extract again"
    )


def read_manifest(cache_dir: str | Path) -> dict:
    path = Path(cache_dir) / MANIFEST
    if not path.exists():
        raise ValueError(f"{cache_dir} is not an activation cache (no {MANIFEST})")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')!r}; expected {FORMAT!r}")
    return manifest


def _read_shard(cache_dir: Path, shard: dict) -> dict[str, torch.Tensor]:
    path = cache_dir / shard["file"]
    if not path.exists():
        raise _damaged(cache_dir, [f"{shard['file']} is missing"])
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != shard["sha256"]:
        raise _damaged(cache_dir, [f"{shard['file']} is corrupt (sha256 differs)"])
    return load_safetensors(data)


class ActivationStream:
    """Infinite, shuffled batches of cached activations: `stream(batch_size) -> (B, d_model)`.

    Each epoch visits the shards in a fresh random order; rows are mixed within a pool of at most
    `buffer_shards` shards, so memory stays bounded however large the cache is. Every row is
    served exactly once per epoch, and the sequence is fixed by `seed`. Each shard is checked
    against its sha256 when read. `shards` restricts the stream to those shard indices (e.g. the
    training split).
    """

    def __init__(
        self,
        cache_dir: str | Path,
        batch_size: int = 4096,
        seed: int = 0,
        buffer_shards: int = 4,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        shards: Sequence[int] | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(self.cache_dir)
        if not self.manifest["complete"]:
            raise ValueError(f"activation cache {cache_dir} is incomplete; rerun the extraction")
        require_positive_int("buffer_shards", buffer_shards)
        all_shards = self.manifest["shards"]
        indices = range(len(all_shards)) if shards is None else list(shards)
        if not indices or any(not 0 <= i < len(all_shards) for i in indices):
            raise ValueError(
                f"shards {list(indices)} must be a non-empty subset of 0..{len(all_shards) - 1}"
            )
        self._shards = [all_shards[i] for i in indices]
        self.batch_size = batch_size
        self.d_model = self.manifest["d_model"]
        self.dtype, self.device = dtype, torch.device(device)
        self._buffer_shards = buffer_shards
        self._generator = torch.Generator().manual_seed(seed)
        self._chunks = self._shuffled_chunks()
        self._queue_ND = torch.empty(0, self.d_model, dtype=dtype)

    def __call__(self, batch_size: int | None = None) -> torch.Tensor:
        batch_size = self.batch_size if batch_size is None else batch_size
        parts = [self._queue_ND]
        available = len(self._queue_ND)
        while available < batch_size:
            parts.append(next(self._chunks))
            available += len(parts[-1])
        queue_ND = torch.cat(parts) if len(parts) > 1 else self._queue_ND
        self._queue_ND = queue_ND[batch_size:]
        return queue_ND[:batch_size].to(self.device)

    def _shuffled_chunks(self) -> Iterator[torch.Tensor]:
        shards = self._shards
        keep_rows = (self._buffer_shards - 1) * self.manifest["config"]["shard_tokens"]
        for _ in itertools.count():
            pool_ND = torch.empty(0, self.d_model, dtype=self.dtype)
            for index in torch.randperm(len(shards), generator=self._generator).tolist():
                rows_ND = _read_shard(self.cache_dir, shards[index])["activations"].to(self.dtype)
                pool_ND = torch.cat([pool_ND, rows_ND])
                pool_ND = pool_ND[torch.randperm(len(pool_ND), generator=self._generator)]
                if len(pool_ND) > keep_rows:
                    yield pool_ND[: len(pool_ND) - keep_rows]
                    pool_ND = pool_ND[len(pool_ND) - keep_rows :]
            if len(pool_ND):
                yield pool_ND
