"""`llm train` under torchrun (2 CPU processes, gloo) trains the SAE one process trains with the
same flags, and rank 0 alone writes the run."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reports.cli import main
from tests.llm.tiny_cache import tiny_setup

TORCHRUN = Path(sys.executable).with_name("torchrun")


def train_flags(cache: Path, out: Path) -> list[str]:
    return [
        "llm",
        "train",
        "--cache",
        str(cache),
        "--architecture",
        "topk",
        "--width",
        "48",
        "--k",
        "4",
        "--samples",
        "1280",
        "--batch-size",
        "64",
        "--held-out-tokens",
        "500",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to python")
def test_llm_train_under_torchrun_equals_one_process(tmp_path):
    _, _, cache = tiny_setup(tmp_path, n_tokens=1800, shard_tokens=600)
    assert main(train_flags(cache, tmp_path / "one")) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    command = [
        str(TORCHRUN),
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
        "-m",
        "reports.cli",
        *train_flags(cache, tmp_path / "two"),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (
        load_file(tmp_path / name / "sae" / "sae_weights.safetensors") for name in ("one", "two")
    )
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
    manifests = [json.loads((tmp_path / n / "manifest.json").read_text()) for n in ("one", "two")]
    assert [m["world_size"] for m in manifests] == [1, 2]
    assert result.stdout.count("saved to") == 2  # every rank reports the one run

    # The 2-process checkpoint finishes a 1-process run of the same config.
    shutil.copytree(tmp_path / "two", tmp_path / "resumed", ignore=shutil.ignore_patterns("sae"))
    assert main(train_flags(cache, tmp_path / "resumed")) == 0
    resumed = load_file(tmp_path / "resumed" / "sae" / "sae_weights.safetensors")
    for name in two:
        assert torch.equal(resumed[name], two[name]), name
