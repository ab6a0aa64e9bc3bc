"""Launch the real `sae-hedging` command line under torchrun: CPU processes, gloo, one thread
each, on a free port."""

import os
import socket
import subprocess
import sys
from pathlib import Path

TORCHRUN = Path(sys.executable).with_name("torchrun")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(argv: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    """`torchrun -m reports.cli ARGV` with `processes` ranks; asserts that it succeeded."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    command = [
        str(TORCHRUN),
        f"--nproc-per-node={processes}",
        f"--master-port={free_port()}",
        "-m",
        "reports.cli",
        *argv,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result
