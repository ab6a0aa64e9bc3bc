"""Data-parallel training (gloo, 2 CPU processes) equals one process on the same global batch,
its checkpoints resume at any world size, and the toy experiments run under torchrun."""

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from reports.cli import main
from tests.torchrun import TORCHRUN, free_port, torchrun
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
    # the k*B budget is the global batch's; two members with different k
    "batchtopk": ("batchtopk", {"k": [1, 3], "n_members": 2, "dead_after_samples": 64}),
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


def _rank_main(rank, world_size, port, jobs, folder):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    with distributed.session("cpu"):  # one process group for all the jobs
        for job, sae_name, crash_at in jobs:
            try:
                sae, log = run_training(sae_name, Path(folder) / job / "checkpoint.pt", crash_at)
            except Crash:  # every rank stops in the same step, before its collectives
                continue
            torch.save({"state": sae.state_dict(), "log": log}, Path(folder) / job / f"{rank}.pt")


def spawn(jobs, folder, world_size=2):
    """Run each (job, SAE, crash_at) in folder/<job> with world_size processes (one spawn for
    all: starting processes is the slow part); per finished job, what each rank ended with."""
    for job, _, _ in jobs:
        (folder / job).mkdir(parents=True, exist_ok=True)
    mp.spawn(_rank_main, args=(world_size, free_port(), jobs, str(folder)), nprocs=world_size)
    return {
        job: [torch.load(folder / job / f"{r}.pt", weights_only=False) for r in range(world_size)]
        for job, _, _ in jobs
        if (folder / job / "0.pt").exists()
    }


def assert_same_state(got: dict, want: dict, exact: bool = False) -> None:
    assert got.keys() == want.keys()
    for name in want:
        if exact:
            assert torch.equal(got[name], want[name]), name
        else:
            torch.testing.assert_close(got[name], want[name], rtol=RTOL, atol=ATOL, msg=name)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """(folder, results): each SAE trained by 2 processes; a 2-process run killed in step 13
    (checkpoint at step 8); a 1-process run killed in step 13 and finished by 2 processes."""
    folder = tmp_path_factory.mktemp("distributed")
    (folder / "finished_by_two").mkdir()
    with pytest.raises(Crash):
        run_training("topk", folder / "finished_by_two" / "checkpoint.pt", 13)
    jobs = [(name, name, None) for name in SAES]
    jobs += [("killed", "topk", 13), ("finished_by_two", "topk", None)]
    return folder, spawn(jobs, folder)


def test_outside_torchrun_the_world_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.world() == distributed.World(0, 1, 0)
    assert not distributed.is_distributed()
    with distributed.session("cpu") as me:
        assert me.is_main and not torch.distributed.is_initialized()


@pytest.mark.parametrize("name", list(SAES))
def test_two_processes_train_like_one_on_the_global_batch(two_processes, name):
    folder, results = two_processes
    single, single_log = run_training(name, None, None)
    ranks = results[name]
    assert_same_state(ranks[1]["state"], ranks[0]["state"], exact=True)  # same replicas
    assert_same_state(ranks[0]["state"], single.state_dict())
    assert ranks[0]["log"].steps == single_log.steps
    for got, want in zip(ranks[0]["log"].total, single_log.total, strict=True):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=RTOL, atol=ATOL)
    assert (folder / name / "checkpoint.pt").exists()


def test_a_killed_two_process_run_resumes_in_one_and_vice_versa(two_processes):
    folder, results = two_processes
    uninterrupted, _ = run_training("topk", None, None)
    assert "killed" not in results
    checkpoint = torch.load(folder / "killed" / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 8
    resumed, _ = run_training("topk", folder / "killed" / "checkpoint.pt", None)
    assert_same_state(resumed.state_dict(), uninterrupted.state_dict())
    assert_same_state(results["finished_by_two"][0]["state"], uninterrupted.state_dict())


SCENARIOS = [
    "toy",
    "scenarios",
    "--scenarios",
    "correlated",
    "hierarchical",
    "--l1-values",
    "0.01",
    "--widths",
    "1",
    "--restarts",
    "2",
    "--d-in",
    "8",
    "--samples",
    "32768",
    "--batch-size",
    "512",
    "--held-out-samples",
    "2048",
    "--device",
    "cpu",
]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="no torchrun next to python")
def test_a_toy_experiment_under_torchrun_equals_one_process(tmp_path):
    """Every training of the job runs data-parallel in one process group; rank 0 alone writes
    the run (world_size in its manifest) and prints it. Measured: the tables agree to about
    1e-7 (float32 half-batch sums over 64 steps per restart)."""
    assert main([*SCENARIOS, "--out", str(tmp_path / "one")]) == 0
    result = torchrun([*SCENARIOS, "--out", str(tmp_path / "two")])
    assert result.stdout.count("wrote ") == 1  # rank 0 only
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    manifests = [json.loads((run / "manifest.json").read_text()) for run in (one, two)]
    assert [m["world_size"] for m in manifests] == [1, 2]
    assert manifests[0]["files"].keys() == manifests[1]["files"].keys()
    for name in ("losses", "components", "restarts"):
        want = pd.read_csv(one / "tables" / f"{name}.csv")
        got = pd.read_csv(two / "tables" / f"{name}.csv")
        pd.testing.assert_frame_equal(got, want, rtol=1e-5, atol=1e-6)
