"""Bad requests and faults across the commands: exit status 2, one line naming the value, and a
refused request leaves every byte of the folders it names as they were."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from reports.cli import main
from tests.llm.tiny_models import save_tiny_model, write_text_corpus

EXTRACT = ["--layer", "1", "--tokens", "2400", "--shard-tokens", "600", "--batch-size", "8",
           "--context-length", "16", "--device", "cpu"]  # fmt: skip
TRAIN = ["--architecture", "topk", "--width", "32", "-k", "4", "--samples", "1280",
         "--batch-size", "64", "--held-out-tokens", "500", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A finished extract run, a finished train run, a plain file and a toy run folder."""
    root = tmp_path_factory.mktemp("refusals")
    model = save_tiny_model(root / "model", "gemma3")
    text = write_text_corpus(root / "text", n_files=12)
    extract = root / "extract"
    base = ["llm", "extract", "--model", str(model), "--corpus", str(text), *EXTRACT]
    assert main([*base, "--out", str(extract)]) == 0
    train = root / "train"
    assert main(["llm", "train", "--cache", str(extract), *TRAIN, "--out", str(train)]) == 0
    a_file = root / "a_file.txt"
    a_file.write_text("not a folder\n")
    listed = root / "bad_metrics"
    listed.mkdir()
    (listed / "manifest.json").write_text(json.dumps({"kind": "test"}))
    (listed / "metrics.json").write_text("[1, 2, 3]")
    return {"root": root, "model": model, "text": text, "extract": extract, "train": train,
            "file": a_file, "listed": listed, "extract_argv": base}  # fmt: skip


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


CASES = [
    # (name, argv template, words the one-line error must contain)
    ("extract-other-dtype", "{extract_argv} --dtype bfloat16 --out {extract}", "differs in dtype"),
    ("train-other-width",
     "llm train --cache {extract} " + " ".join(TRAIN).replace("--width 32", "--width 48")
     + " --out {train}", "differs in width"),
    ("extract-out-is-a-file", "{extract_argv} --out {file}", "is a file"),
    ("train-out-is-a-file", "llm train --cache {extract} " + " ".join(TRAIN) + " --out {file}",
     "is a file"),
    ("toy-out-is-a-file", "toy matryoshka --samples 2048 --seeds 1 --out {file}", "is a file"),
    ("run-out-is-a-file", "run --llm false --out {file}", "is a file"),
    ("report-out-is-a-folder", "report {train} --out {root}", "is a folder"),
    ("report-out-parent-missing", "report {train} --out {root}/no/such/report.pdf",
     "does not exist"),
    ("device-cuda-missing", "{extract_argv} --device cuda --out {root}/x", "allowed here"),
    ("device-unknown", "{extract_argv} --device foo --out {root}/x", "'foo'"),
    ("k-above-width",
     "llm train --cache {extract} --width 256 -k 300 --out {root}/x", "k = 300 exceeds"),
    ("metrics-is-a-list", "report {listed} --out {root}/r.pdf", "must hold a JSON object"),
    ("huge-context", "{extract_argv} --context-length 100000000 --out {root}/x", "needs about"),
    ("huge-width",
     "llm train --cache {extract} --width 50000000 -k 4 --held-out-tokens 500 --out {root}/x",
     "needs about"),
    ("derive-huge-width", "derive --scenario correlated --width 1000000",
     "width 1000000 exceeds the 4 states"),
    ("run-layer-out-of-range", "run --layer 99 --out {root}/x", "layer 99 is out of range"),
    ("run-unknown-model", "run --model nosuch --out {root}/x", "cannot load model 'nosuch'"),
    ("held-out-beyond-cache",
     "llm train --cache {extract} --held-out-tokens 10000000 --out {root}/x",
     "held_out_tokens = 10000000"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "template", "needle"), CASES, ids=[c[0] for c in CASES])
def test_refused_with_one_line_and_nothing_changed(folders, capsys, name, template, needle):
    values = {k: " ".join(v) if isinstance(v, list) else str(v) for k, v in folders.items()}
    argv = template.format(**values).split()
    before = _snapshot(folders["root"])
    assert main(argv) == 2, name
    error = capsys.readouterr().err.strip()
    assert needle in error and "\n" not in error, error
    assert _snapshot(folders["root"]) == before  # every byte as it was
    assert not (folders["root"] / "x").exists()


def test_a_truncated_checkpoint_is_named_and_restart_recovers(folders, capsys, tmp_path):
    out = tmp_path / "train"
    argv = ["llm", "train", "--cache", str(folders["extract"]), *TRAIN, "--out", str(out)]
    assert main(argv) == 0
    first = json.loads((out / "metrics.json").read_text())
    checkpoint = out / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert f"checkpoint {checkpoint} is corrupt or truncated" in error and "--restart" in error
    assert main([*argv, "--restart"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["explained_variance"] == first["explained_variance"]


def test_files_get_the_permissions_the_umask_gives(folders):
    for path in (folders["train"] / "metrics.json", folders["train"] / "sae" / "cfg.json",
                 folders["extract"] / "activations" / "shard_00000.safetensors"):  # fmt: skip
        assert path.stat().st_mode & 0o777 == 0o666 & ~_umask(), path


def _umask() -> int:
    from toymodels.runs import process_umask

    return process_umask()
