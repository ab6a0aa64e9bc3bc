"""`llm extract` and `llm train` under torchrun (2 CPU processes, gloo) make the cache and the SAE
one process makes with the same flags, and rank 0 alone writes each run."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from reports.cli import main
from tests.llm.tiny_models import save_tiny_model, write_text_corpus
from tests.torchrun import TORCHRUN, torchrun


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


def extract_flags(model: Path, text: Path, out: Path) -> list[str]:
    return [
        "llm",
        "extract",
        "--model",
        str(model),
        "--layer",
        "1",
        "--tokens",
        "1800",
        "--corpus",
        str(text),
        "--out",
        str(out),
        "--shard-tokens",
        "600",
        "--batch-size",
        "4",
        "--context-length",
        "16",
        "--device",
        "cpu",
    ]


pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="no torchrun next to python")


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """The same extraction by one process and by two: (folder, cache of one, cache of two)."""
    folder = tmp_path_factory.mktemp("distributed")
    model = save_tiny_model(folder / "model", "gemma3")
    text = write_text_corpus(folder / "text", n_files=12)
    assert main(extract_flags(model, text, folder / "one")) == 0
    torchrun(extract_flags(model, text, folder / "two"))
    return folder, folder / "one" / "activations", folder / "two" / "activations"


def test_llm_extract_under_torchrun_writes_the_cache_of_one_process(extracted):
    folder, one, two = extracted
    manifests = [json.loads((cache / "manifest.json").read_text()) for cache in (one, two)]
    assert manifests[1]["complete"] and manifests[1]["n_tokens"] == 1800
    assert [s["n_tokens"] for s in manifests[1]["shards"]] == [600, 600, 600]
    assert manifests[0]["config"] == manifests[1]["config"]
    for shard in manifests[0]["shards"]:
        want, got = load_file(one / shard["file"]), load_file(two / shard["file"])
        assert torch.equal(got["token_ids"], want["token_ids"])
        # other thread counts may reorder a float sum in the forward pass
        torch.testing.assert_close(got["activations"], want["activations"])
    run_manifest = json.loads((folder / "two" / "manifest.json").read_text())
    assert run_manifest["world_size"] == 2 and run_manifest["artefacts"]["cache"] == "activations"


def test_two_processes_finish_an_interrupted_extraction(extracted, tmp_path):
    folder, one, two = extracted
    resumed = tmp_path / "resumed"
    shutil.copytree(folder / "one", resumed)
    manifest = json.loads((resumed / "activations" / "manifest.json").read_text())
    for shard in manifest["shards"][1:]:  # as if killed after the first shard
        (resumed / "activations" / shard["file"]).unlink()
    manifest.update(shards=manifest["shards"][:1], n_tokens=600, complete=False)
    (resumed / "activations" / "manifest.json").write_text(json.dumps(manifest))
    torchrun(extract_flags(folder / "model", folder / "text", resumed))
    finished = json.loads((resumed / "activations" / "manifest.json").read_text())
    first = json.loads((one / "manifest.json").read_text())["shards"][:1]
    rest = json.loads((two / "manifest.json").read_text())["shards"][1:]
    assert finished["complete"] and finished["shards"] == first + rest


def test_llm_train_under_torchrun_equals_one_process(extracted, tmp_path):
    _, cache, _ = extracted
    assert main(train_flags(cache, tmp_path / "one")) == 0
    result = torchrun(train_flags(cache, tmp_path / "two"))
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


def test_llm_hedging_under_torchrun_equals_one_process(extracted, tmp_path):
    """Both architectures' stacks and the protocol's stages train data-parallel in one process
    group; rank 0 alone writes the run and prints it."""
    _, cache, _ = extracted
    flags = ["llm", "hedging", "--cache", str(cache), "--widths", "8", "16", "--n-new", "4"]
    flags += ["--samples", "640", "--batch-size", "64", "--k", "3", "--l1", "0.5"]
    flags += ["--held-out-tokens", "500", "--device", "cpu", "--out"]
    assert main([*flags, str(tmp_path / "one")]) == 0
    result = torchrun([*flags, str(tmp_path / "two")])
    assert result.stdout.count("hedging tables in") == 1
    one, two = (
        pd.read_csv(tmp_path / name / "tables" / "hedging_vs_width.csv") for name in ("one", "two")
    )
    pd.testing.assert_frame_equal(two, one, rtol=1e-4, atol=1e-6)
    manifests = [json.loads((tmp_path / n / "manifest.json").read_text()) for n in ("one", "two")]
    assert [m["world_size"] for m in manifests] == [1, 2]
