"""Data-parallel training (gloo, 2 CPU processes) equals one process on the same global batch,
and its checkpoints resume at any world size."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from toymodels import distributed
from toymodels.sae import make_sae
from toymodels.train import TrainConfig, train

# float32 sums of two half-batch means differ from one full-batch mean in the last bits; after
# 24 Adam steps the parameters agree to this relative tolerance (measured: about 1e-6).
RTOL, ATOL = 1e-5, 1e-6

CONFIG = TrainConfig(
    samples=32 * 24,
    batch_size=32,
    lr=1e-2,
    warmup_steps=3,
    decay_fraction=0.3,
    seed=3,
    checkpoint_every=8,
    log_every=5,
    progress=False,
    device="cpu",
)


class Crash(RuntimeError):
    pass


class Data:
    """Non-negative sparse-ish rows from the global RNG; raises on call `crash_at` (a kill)."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.calls, self.crash_at = 0, crash_at

    def __call__(self, batch: int) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.crash_at:
            raise Crash(f"killed at call {self.calls}")
        return torch.rand(batch, 6) * (torch.rand(batch, 6) < 0.4)


SAES = {
    "topk": ("topk", {"k": 2}),
    # latents die within the run, so the aux-k loss and the dead-latent counters are exercised
    "topk-aux": ("topk", {"k": 1, "dead_after_samples": 64}),
    "relu-l1": ("relu-l1", {"l1": [0.01, 0.05], "n_members": 2}),
}


def build(name: str) -> torch.nn.Module:
    architecture, options = SAES[name]
    return make_sae(
        architecture,
        d_in=6,
        n_latents=8,
        generator=torch.Generator().manual_seed(1),
        **options,
    )


def run_training(architecture: str, checkpoint: Path | None, crash_at: int | None):
    sae = build(architecture)
    log = train(sae, Data(crash_at), CONFIG, checkpoint_path=checkpoint)
    return sae, log


def _rank_main(rank, world_size, port, architectures, folder, crash_at):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    for architecture in architectures:
        folder_of = Path(folder) / architecture
        sae, log = run_training(architecture, folder_of / "checkpoint.pt", crash_at)
        torch.save({"state": sae.state_dict(), "log": log}, folder_of / f"rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(architectures, folder, crash_at=None, world_size=2):
    """Train each architecture in folder/<architecture> with world_size processes; per
    architecture, what each rank ended with."""
    for architecture in architectures:
        (folder / architecture).mkdir(parents=True, exist_ok=True)
    mp.spawn(
        _rank_main,
        args=(world_size, free_port(), architectures, str(folder), crash_at),
        nprocs=world_size,
    )
    return {
        architecture: [
            torch.load(folder / architecture / f"rank{r}.pt", weights_only=False)
            for r in range(world_size)
        ]
        for architecture in architectures
    }


def assert_same_state(got: dict, want: dict, exact: bool = False) -> None:
    assert got.keys() == want.keys()
    for name in want:
        if exact:
            assert torch.equal(got[name], want[name]), name
        else:
            torch.testing.assert_close(got[name], want[name], rtol=RTOL, atol=ATOL, msg=name)


def test_outside_torchrun_the_world_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.world() == distributed.World(0, 1, 0)
    assert not distributed.is_distributed()
    with distributed.session("cpu") as me:
        assert me.is_main and not torch.distributed.is_initialized()


def test_two_processes_train_like_one_on_the_global_batch(tmp_path):
    architectures = list(SAES)
    spawned = spawn(architectures, tmp_path)
    for architecture in architectures:
        single, single_log = run_training(architecture, None, None)
        ranks = spawned[architecture]
        assert_same_state(ranks[1]["state"], ranks[0]["state"], exact=True)  # same replicas
        assert_same_state(ranks[0]["state"], single.state_dict())
        assert ranks[0]["log"].steps == single_log.steps
        for got, want in zip(ranks[0]["log"].total, single_log.total, strict=True):
            torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=RTOL, atol=ATOL)
        assert (tmp_path / architecture / "checkpoint.pt").exists()


def test_a_killed_two_process_run_resumes_in_one_and_vice_versa(tmp_path):
    uninterrupted, _ = run_training("topk", None, None)
    # 2 processes killed in step 13 (checkpoint at step 8), finished by 1 process.
    with pytest.raises(Exception, match="Crash|killed"):
        spawn(["topk"], tmp_path / "two", crash_at=13)
    assert not (tmp_path / "two" / "topk" / "rank0.pt").exists()
    resumed, _ = run_training("topk", tmp_path / "two" / "topk" / "checkpoint.pt", None)
    assert_same_state(resumed.state_dict(), uninterrupted.state_dict())
    # 1 process killed in step 13, finished by 2 processes.
    one = tmp_path / "one" / "topk"
    one.mkdir(parents=True)
    with pytest.raises(Crash):
        run_training("topk", one / "checkpoint.pt", 13)
    ranks = spawn(["topk"], tmp_path / "one")["topk"]
    assert_same_state(ranks[0]["state"], uninterrupted.state_dict())
