"""What every peer script shares: threads, a stopwatch, the offline model cache, one JSON line."""

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch


def report(measure: Callable[[], dict], threads: int) -> None:
    """Run measure() on `threads` torch threads, with anything the peer libraries print sent to
    stderr, then print measure()'s result as the single JSON object on stdout."""
    torch.set_num_threads(threads)
    with contextlib.redirect_stdout(sys.stderr):
        result = measure()
    print(json.dumps(result))


@contextlib.contextmanager
def stopwatch() -> Iterator[dict]:
    """Wall-clock seconds of the with-block, read from the yielded dict's "seconds" afterwards."""
    timing = {}
    start = time.perf_counter()
    yield timing
    timing["seconds"] = time.perf_counter() - start


def use_offline_model_cache() -> None:
    """Point Hugging Face at the converted Gemma cache that peer_env.sh builds (unless HF_HOME is
    already set) and forbid hub access. Call before importing transformer_lens or transformers."""
    venv = Path(__file__).resolve().parents[2] / ".peer-venv"
    os.environ.setdefault("HF_HOME", str(venv / "hf-home"))
    os.environ["HF_HUB_OFFLINE"] = "1"
