"""Training the SAE family on an activation cache: the held-out split of the cache's shards, the
resumable shuffled data source, activation normalisation and b_dec initialisation.

The SAEs and the optimiser loop are toymodels' (make_sae, train): this module only feeds them.
Normalisation follows SAELens's expected_average_only_in: inputs are multiplied by one scale
s = sqrt(d_model) / mean ||x|| estimated on training rows, so their mean norm is sqrt(d_model);
llm.saefiles.save_sae(input_scale=s) folds s back into the weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from llm.cache import ActivationStream, read_manifest
from theory.config import require_choice, require_positive_int
from toymodels.runs import named_artefact
from toymodels.sae import SAE
from toymodels.train import TrainConfig, TrainLog, train

B_DEC_INITS = ("geometric_median", "mean", "zero")


@dataclass(frozen=True)
class CacheSplit:
    """A complete activation cache with its shards divided into training and held-out ones."""

    cache_dir: Path
    manifest: dict
    train_shards: tuple[int, ...]
    held_out_shards: tuple[int, ...]

    @property
    def d_model(self) -> int:
        return self.manifest["d_model"]

    def n_rows(self, shards: tuple[int, ...]) -> int:
        return sum(self.manifest["shards"][i]["n_tokens"] for i in shards)


def find_cache(path: str | Path) -> Path:
    """An activation cache folder, or a run folder whose artefact "cache" is one."""
    path = Path(path)
    artefact = named_artefact(path, "cache")
    if artefact is not None:
        return artefact
    read_manifest(path)  # a clear error when path is not a cache
    return path


def split_cache(cache_dir: str | Path, held_out_tokens: int = 16_384) -> CacheSplit:
    """Hold out the last shards, as many as it takes to reach held_out_tokens rows (at least
    one), and train on the others (at least one)."""
    cache_dir = find_cache(cache_dir)
    manifest = read_manifest(cache_dir)
    if not manifest["complete"]:
        raise ValueError(f"activation cache {cache_dir} is incomplete; rerun the extraction")
    require_positive_int("held_out_tokens", held_out_tokens)
    n_shards = len(manifest["shards"])
    held_out, rows = [], 0
    for index in range(n_shards - 1, 0, -1):
        held_out.insert(0, index)
        rows += manifest["shards"][index]["n_tokens"]
        if rows >= held_out_tokens:
            break
    if not held_out:
        raise ValueError(
            f"activation cache {cache_dir} has {n_shards} shard; training and "
            "held-out evaluation need at least 2 (extract more tokens or use a "
            "smaller shard size)"
        )
    if rows < held_out_tokens:
        raise ValueError(
            f"held_out_tokens = {held_out_tokens} is more than cache {cache_dir} can hold out "
            f"({rows} rows in all its shards but the first, which training needs); "
            f"allowed: up to {rows}"
        )
    train_shards = tuple(range(held_out[0]))
    return CacheSplit(cache_dir, manifest, train_shards, tuple(held_out))


def shard_stream(
    split: CacheSplit, shards: tuple[int, ...], seed: int, buffer_shards: int = 4
) -> ActivationStream:
    """An ActivationStream over the given shards only."""
    return ActivationStream(split.cache_dir, seed=seed, buffer_shards=buffer_shards, shards=shards)


def held_out_activations(split: CacheSplit, n_tokens: int | None = None) -> Tensor:
    """Up to n_tokens held-out rows (all of them by default), float32 (N, d_model)."""
    available = split.n_rows(split.held_out_shards)
    n_tokens = available if n_tokens is None else min(n_tokens, available)
    return shard_stream(split, split.held_out_shards, seed=0)(n_tokens)


def held_out_batches(
    split: CacheSplit, n_tokens: int | None = None, batch_size: int = 4096, scale: float = 1.0
) -> Iterator[Tensor]:
    """held_out_activations' rows, in the same order, as (B, d_model) batches times `scale`,
    streamed from the shards: memory stays that of the stream's pool however many rows."""
    require_positive_int("batch_size", batch_size)
    available = split.n_rows(split.held_out_shards)
    n_tokens = available if n_tokens is None else min(n_tokens, available)
    stream = shard_stream(split, split.held_out_shards, seed=0)
    for start in range(0, n_tokens, batch_size):
        batch_BD = stream(min(batch_size, n_tokens - start))
        yield batch_BD * scale if scale != 1.0 else batch_BD


class CacheData:
    """The trainer's data source: shuffled training rows times `scale`, `data(batch) -> (B, D)`.

    restart_every (rows): serve the same sequence again from the start after that many rows, so
    successive trainings (the hedging protocol's control and extended stages) see identical
    batches. Resumable: state_dict() records how many rows were served; load_state_dict()
    rebuilds the stream from its seed and replays them, so a resumed run sees the same batches
    as an uninterrupted one.
    """

    def __init__(
        self,
        split: CacheSplit,
        seed: int = 0,
        scale: float = 1.0,
        buffer_shards: int = 4,
        restart_every: int | None = None,
    ) -> None:
        if restart_every is not None:
            require_positive_int("restart_every (rows)", restart_every)
        self.split, self.seed, self.scale = split, seed, scale
        self.buffer_shards, self.restart_every = buffer_shards, restart_every
        self.rows_served = 0
        self._restart()

    def _restart(self) -> None:
        self._stream = shard_stream(
            self.split, self.split.train_shards, self.seed, self.buffer_shards
        )

    def __call__(self, batch_size: int) -> Tensor:
        if self.restart_every and self.rows_served and self.rows_served % self.restart_every == 0:
            self._restart()
        batch_BD = self._stream(batch_size)
        self.rows_served += batch_size
        return batch_BD * self.scale if self.scale != 1.0 else batch_BD

    def state_dict(self) -> dict[str, Any]:
        return {
            "rows_served": self.rows_served,
            "seed": self.seed,
            "scale": self.scale,
            "restart_every": self.restart_every,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = (self.seed, self.scale, self.restart_every)
        theirs = (state["seed"], state["scale"], state["restart_every"])
        if mine != theirs:
            raise ValueError(
                f"data state for (seed, scale, restart_every) = {theirs} cannot "
                f"resume a source with {mine}"
            )
        self.rows_served = state["rows_served"]
        remaining = self.rows_served % (self.restart_every or self.rows_served + 1)
        self._restart()
        while remaining > 0:  # the row sequence does not depend on how it is cut into batches
            chunk = min(remaining, 1 << 16)
            self._stream(chunk)
            remaining -= chunk


def input_sample(split: CacheSplit, n_rows: int, seed: int) -> Tensor:
    """n_rows training rows (fewer if the training shards hold fewer), drawn apart from the
    training stream, for the scale estimate and the b_dec initialisation."""
    n_rows = min(n_rows, split.n_rows(split.train_shards))
    return shard_stream(split, split.train_shards, seed=seed + 1_000_003)(n_rows)


def normalisation_scale(sample_ND: Tensor) -> float:
    """s = sqrt(d_model) / mean ||x||: scaled inputs have mean norm sqrt(d_model)."""
    mean_norm = float(sample_ND.double().norm(dim=-1).mean())
    if not math.isfinite(mean_norm) or mean_norm <= 0:
        raise ValueError(f"cannot normalise activations with mean norm {mean_norm}")
    return math.sqrt(sample_ND.shape[-1]) / mean_norm


@dataclass
class TrainedSAE:
    """A trained SAE stack, the input scale it was trained with, and the trainer's log."""

    sae: SAE
    input_scale: float
    log: TrainLog


def train_on_cache(
    sae: SAE,
    split: CacheSplit,
    train_config: TrainConfig,
    *,
    normalize: bool = True,
    b_dec_init: str = "geometric_median",
    init_rows: int = 16_384,
    checkpoint_path: str | Path | None = None,
    buffer_shards: int = 4,
) -> TrainedSAE:
    """Train every member of `sae` on train_config.samples shuffled training rows of the cache
    (in place).

    b_dec starts at the geometric median (or mean, or zero) of init_rows training rows, in the
    scaled units. With checkpoint_path the trainer checkpoints and resumes: a resumed run ends
    with exactly the parameters of an uninterrupted one. buffer_shards: shards the stream mixes
    rows across (its memory; the cache's size does not matter).
    """
    require_choice("b_dec init", b_dec_init, B_DEC_INITS)
    if sae.d_in != split.d_model:
        raise ValueError(
            f"the SAE takes d_in = {sae.d_in} but the cache holds d_model = "
            f"{split.d_model} activations"
        )
    seed = train_config.seed
    sample_ND = input_sample(split, init_rows, seed)
    scale = normalisation_scale(sample_ND) if normalize else 1.0
    sae.init_b_dec(sample_ND * scale, method=b_dec_init)
    data = CacheData(split, seed=seed, scale=scale, buffer_shards=buffer_shards)
    log = train(sae, data, train_config, checkpoint_path=checkpoint_path)
    return TrainedSAE(sae, scale, log)
