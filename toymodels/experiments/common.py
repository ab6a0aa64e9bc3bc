"""What every toy experiment shares: embedded feature worlds as data, latent matching, run setup.

Experiments train many SAEs as ONE stack. When members see different worlds, each member gets
its own batch, drawn from its world and embedded with the same orthonormal directions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from theory.features import FeatureModel, NumericFeatureModel
from theory.sae import unit_rows
from toymodels.sae import SAE
from toymodels.sampling import orthonormal_directions, sample_activations

P = ParamSpec("P")
R = TypeVar("R")


def one_torch_thread(job: Callable[P, R]) -> Callable[P, R]:
    """Run a toy job on one torch thread (restored afterwards): toy tensors are tiny, and more
    threads only add synchronisation stalls, 10-50x on a busy 2-core machine."""

    @functools.wraps(job)
    def pinned(*args: P.args, **kwargs: P.kwargs) -> R:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return job(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return pinned


class EmbeddedWorlds:
    """Data source for a stack whose member m trains on worlds[member_world[m]].

    Calling it with a batch size returns (B, d_in) when there is one world (a shared batch, the
    stack's fast path) and (M, B, d_in) otherwise. Samples come from the global torch RNG, so
    a TrainConfig's seed makes them reproducible."""

    def __init__(
        self,
        worlds: Sequence[FeatureModel | NumericFeatureModel],
        member_world: Sequence[int],
        d_in: int,
        seed: int = 0,
    ) -> None:
        self.worlds = [w.numeric() if isinstance(w, FeatureModel) else w for w in worlds]
        dims = {w.dim for w in self.worlds}
        if len(dims) != 1:
            raise ValueError(
                f"worlds of one stack need the same state dimension, got {sorted(dims)}"
            )
        self.member_world = torch.as_tensor(list(member_world), dtype=torch.long)
        if self.member_world.min() < 0 or self.member_world.max() >= len(self.worlds):
            raise ValueError(
                f"member_world entries must be in [0, {len(self.worlds)}), got "
                f"{self.member_world.tolist()}"
            )
        self.directions_ND = orthonormal_directions(
            dims.pop(), d_in, torch.Generator().manual_seed(seed)
        )

    def __call__(self, batch_size: int) -> torch.Tensor:
        batches_WBD = [sample_activations(w, self.directions_ND, batch_size) for w in self.worlds]
        if len(batches_WBD) == 1:
            return batches_WBD[0]
        return torch.stack(batches_WBD)[self.member_world]


def match_latents(trained_KN: np.ndarray, reference_KN: np.ndarray) -> np.ndarray:
    """Permutation `order` with trained_KN[order[i]] the latent matching reference latent i
    (decoder rows in the feature basis; maximal summed cosine, one to one)."""
    cosine = unit_rows(reference_KN) @ unit_rows(trained_KN).T
    rows, cols = linear_sum_assignment(cosine, maximize=True)
    return cols[np.argsort(rows)]


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cos(a, b); 1 when either vector is zero."""
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(1 - a @ b / norms) if norms > 0 else 1.0


@torch.no_grad()
def held_out_loss(
    sae: SAE, data: EmbeddedWorlds, n_samples: int, seed: int, chunk: int = 2048
) -> np.ndarray:
    """Each member's loss on n_samples fresh samples (the same samples for members that share a
    world, so restarts are compared on common data): (M,)."""
    was_training = sae.training
    sae.eval()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        total = torch.zeros(sae.n_members, dtype=torch.float64)
        for start in range(0, n_samples, chunk):
            size = min(chunk, n_samples - start)
            total += sae.loss(data(size))["per_member"].double() * size
    sae.train(was_training)
    return (total / n_samples).numpy()


def best_of_restarts(losses: np.ndarray, n_configs: int) -> np.ndarray:
    """Member index of the lowest-loss restart of each config; members are restart-major
    (member = restart * n_configs + config)."""
    per_restart = losses.reshape(-1, n_configs)
    return per_restart.argmin(axis=0) * n_configs + np.arange(n_configs)
