"""Activation cache: exact round trip, resume after interruption (kills at random points),
verification naming every damaged shard, one writer at a time, shuffled stream; and one
end-to-end check on the real embedded Gemma model."""

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import llm.cache
from llm.cache import ActivationStream, ExtractConfig, extract, verify
from llm.corpus import load_corpus, token_batches
from llm.models import activations, load_model
from tests.llm.tiny_models import save_tiny_model, write_text_corpus
from toymodels.runs import RunLock

SETTINGS = dict(
    layer=1, hook="resid_post", tokens=1000, shard_tokens=300, batch_size=4, context_length=16
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """d_model is 32: extra threads only add synchronisation (and stall on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(str(save_tiny_model(tmp_path_factory.mktemp("gemma3"), "gemma3")), "cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return load_corpus(str(write_text_corpus(tmp_path_factory.mktemp("text"))))


def _extract(model, corpus, out_dir, **settings):
    return extract(model, corpus, ExtractConfig(model=model.name, **settings), out_dir)


def _shards(cache_dir):
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    tensors = [load_file(cache_dir / shard["file"]) for shard in manifest["shards"]]
    return (
        torch.cat([t["activations"] for t in tensors]),
        torch.cat([t["token_ids"] for t in tensors]),
    )


def _direct(model, corpus, tokens, layer, hook, batch_size, context_length, **_):
    """Kept-position activations computed batch by batch, without the cache."""
    acts, ids = [], []
    for batch in token_batches(model.tokenizer, corpus, context_length, batch_size):
        acts_BTD = activations(model, batch.input_ids_BT, batch.attention_mask_BT, layer, hook)
        acts.append(acts_BTD[batch.keep_BT])
        ids.append(batch.input_ids_BT[batch.keep_BT])
    return torch.cat(acts)[:tokens], torch.cat(ids)[:tokens]


def test_cache_round_trip_is_exact(tiny, corpus, tmp_path):
    manifest = _extract(tiny, corpus, tmp_path, **SETTINGS)
    acts_ND, ids_N = _shards(tmp_path)
    expected_acts_ND, expected_ids_N = _direct(tiny, corpus, **SETTINGS)
    assert torch.equal(acts_ND, expected_acts_ND) and torch.equal(ids_N.long(), expected_ids_N)
    assert [s["n_tokens"] for s in manifest["shards"]] == [300, 300, 300, 100]
    assert manifest["n_tokens"] == 1000 and manifest["complete"] and manifest["d_model"] == 32
    assert manifest["corpus"]["sha256"] == corpus.sha256
    assert (manifest["layer"], manifest["hook"], manifest["dtype"]) == (1, "resid_post", "float32")
    assert verify(tmp_path) == manifest


def test_bfloat16_storage_rounds_the_float32_activations(tiny, corpus, tmp_path):
    _extract(tiny, corpus, tmp_path, **{**SETTINGS, "hook": "mlp_out"}, dtype="bfloat16")
    acts_ND, _ = _shards(tmp_path)
    expected_ND, _ = _direct(tiny, corpus, **{**SETTINGS, "hook": "mlp_out"})
    assert acts_ND.dtype == torch.bfloat16
    assert torch.equal(acts_ND, expected_ND.to(torch.bfloat16))


def test_corpus_shorter_than_the_request_ends_with_a_short_shard(tiny, corpus, tmp_path):
    settings = {**SETTINGS, "tokens": 10**6, "shard_tokens": 350}
    manifest = _extract(tiny, corpus, tmp_path, **settings)
    acts_ND, _ = _shards(tmp_path)
    expected_ND, _ = _direct(tiny, corpus, **settings)
    assert manifest["n_tokens"] == len(expected_ND) == 1800 and manifest["complete"]
    assert [s["n_tokens"] for s in manifest["shards"]] == [350] * 5 + [50]
    assert torch.equal(acts_ND, expected_ND)


def test_resumed_extraction_equals_an_uninterrupted_one(tiny, corpus, tmp_path, monkeypatch):
    _extract(tiny, corpus, tmp_path / "whole", **SETTINGS)
    calls = []

    def interrupted_at_batch_12(*args, **kwargs):
        calls.append(1)
        if len(calls) == 12:
            raise KeyboardInterrupt
        return activations(*args, **kwargs)

    monkeypatch.setattr(llm.cache, "activations", interrupted_at_batch_12)
    with pytest.raises(KeyboardInterrupt):
        _extract(tiny, corpus, tmp_path / "resumed", **SETTINGS)
    partial = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert not partial["complete"] and len(partial["shards"]) == 2
    calls.clear()
    _extract(tiny, corpus, tmp_path / "resumed", **SETTINGS)
    # 60 kept tokens a batch: the two finished shards (600 tokens) were not recomputed.
    assert len(calls) == 17 - 10
    for name in ["manifest.json"] + [f"shard_0000{i}.safetensors" for i in range(4)]:
        resumed, whole = (tmp_path / run / name for run in ("resumed", "whole"))
        assert resumed.read_bytes() == whole.read_bytes(), name


def _damage(shard):
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))


def test_every_corrupt_or_missing_shard_is_named_and_none_is_used(tiny, corpus, tmp_path):
    _extract(tiny, corpus, tmp_path, **SETTINGS)
    _damage(tmp_path / "shard_00001.safetensors")
    (tmp_path / "shard_00003.safetensors").unlink()
    both = (
        f"activation cache {tmp_path} is damaged: shard_00001.safetensors is corrupt "
        "(sha256 differs), shard_00003.safetensors is missing; delete the folder and extract again"
    )
    with pytest.raises(ValueError) as refused:
        verify(tmp_path)
    assert str(refused.value) == both
    with pytest.raises(ValueError) as refused:
        _extract(tiny, corpus, tmp_path, **SETTINGS)  # even a finished cache is re-checked
    assert str(refused.value) == both
    stream = ActivationStream(tmp_path, batch_size=100, seed=0, buffer_shards=1, shards=[0, 1, 2])
    with pytest.raises(ValueError, match="shard_00001.safetensors is corrupt"):
        for _ in range(10):
            stream()


@pytest.mark.parametrize(
    "shards, problem",
    [
        ([0, 2], None),
        ([], None),
        ([2, 1], "shard_00001.safetensors is corrupt (sha256 differs); delete"),
        ([3, 1], "shard_00003.safetensors is missing, shard_00001.safetensors is corrupt"),
        ([0, 4], "shards [0, 4] are not all shards of {cache}; allowed: 0..3"),
        ([-1], "shards [-1] are not all shards"),
    ],
)
def test_a_subset_of_shards_is_verified_alone(tiny, corpus, tmp_path, shards, problem):
    manifest = _extract(tiny, corpus, tmp_path, **SETTINGS)
    _damage(tmp_path / "shard_00001.safetensors")
    (tmp_path / "shard_00003.safetensors").unlink()
    if problem is None:
        assert verify(tmp_path, shards=shards) == manifest
        return
    with pytest.raises(ValueError) as refused:
        verify(tmp_path, shards=shards)
    assert problem.format(cache=tmp_path) in str(refused.value)


def _folder_bytes(folder):
    """Every file under `folder`, hidden ones too, with its content's sha256."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(Path(folder).rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("lock_file_present", [True, False])
def test_a_different_request_is_refused_leaving_every_byte_as_it_was(
    tiny, corpus, tmp_path, lock_file_present
):
    _extract(tiny, corpus, tmp_path, **SETTINGS)
    if not lock_file_present:  # a cache made before folders were locked
        (tmp_path / ".lock").unlink()
    (tmp_path / ".shard_00004.safetensors.abcd1234.tmp").write_bytes(b"left by a killed job")
    before = _folder_bytes(tmp_path)
    with pytest.raises(ValueError, match="different request.*layer: cached 1, requested 0"):
        _extract(tiny, corpus, tmp_path, **{**SETTINGS, "layer": 0})
    with pytest.raises(ValueError, match="batch_size: cached 4, requested 8"):
        _extract(tiny, corpus, tmp_path, **{**SETTINGS, "batch_size": 8})
    assert _folder_bytes(tmp_path) == before


def test_an_extraction_in_progress_refuses_a_second_one(tiny, corpus, tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(ValueError, match=f"{tmp_path} is in use .*pid {os.getpid()}"):
            _extract(tiny, corpus, tmp_path, **SETTINGS)
    assert _extract(tiny, corpus, tmp_path, **SETTINGS)["complete"]


class Killed(BaseException):
    """The process dying: nothing catches it, and no cleanup that a real kill skips runs."""


class KillAt:
    """Wrappers for the extraction's forward passes and atomic writes that die at event `at`;
    a write dies half way, leaving its temporary file behind as a SIGKILL would."""

    def __init__(self, at):
        self.at, self.events = at, 0

    def _event(self):
        self.events += 1
        return self.events - 1 == self.at

    def activations(self, *args, **kwargs):
        if self._event():
            raise Killed
        return activations(*args, **kwargs)

    def write_bytes(self, path, data):
        if self._event():
            fd, _ = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.write(fd, data[: len(data) // 2])
            os.close(fd)
            raise Killed
        real_write_bytes(path, data)

    def write_json(self, path, obj):
        self.write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


real_write_bytes = llm.cache.atomic_write_bytes


@pytest.fixture(scope="module")
def uninterrupted(tiny, corpus, tmp_path_factory):
    """(folder bytes, number of kill points) of an extraction that runs to the end."""
    folder = tmp_path_factory.mktemp("whole")
    counter = KillAt(-1)
    with pytest.MonkeyPatch.context() as patch:
        _install(patch, counter)
        _extract(tiny, corpus, folder, **SETTINGS)
    return _folder_bytes(folder), counter.events


def _install(patch, killer):
    patch.setattr(llm.cache, "activations", killer.activations)
    patch.setattr(llm.cache, "atomic_write_bytes", killer.write_bytes)
    patch.setattr(llm.cache, "atomic_write_json", killer.write_json)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kills=st.lists(st.integers(0, 40), min_size=1, max_size=3))
def test_extraction_killed_anywhere_resumes_to_the_uninterrupted_files(
    tiny, corpus, uninterrupted, kills
):
    whole, n_events = uninterrupted
    assert n_events == 17 + 4 + 6  # forward passes, shard writes, manifest writes
    with tempfile.TemporaryDirectory() as folder:
        for at in kills:
            killer = KillAt(at % n_events)
            with pytest.MonkeyPatch.context() as patch:
                _install(patch, killer)
                try:
                    _extract(tiny, corpus, folder, **SETTINGS)
                except Killed:
                    pass
        assert _extract(tiny, corpus, folder, **SETTINGS)["complete"]
        assert _folder_bytes(folder) == whole  # the same files, and no temporary left behind


def test_stream_serves_every_row_once_per_epoch_within_a_bounded_buffer(
    tiny, corpus, tmp_path, monkeypatch
):
    _extract(tiny, corpus, tmp_path, **SETTINGS)
    acts_ND, _ = _shards(tmp_path)
    reads = []
    real_read = llm.cache._read_shard
    monkeypatch.setattr(llm.cache, "_read_shard", lambda d, s: reads.append(s) or real_read(d, s))
    stream = ActivationStream(tmp_path, batch_size=50, seed=3, buffer_shards=2)
    first = stream(1)
    assert len(reads) == 2  # a buffer of two shards, not the whole cache
    epochs = [torch.cat([first, stream(199)] + [stream() for _ in range(16)]) for _ in range(1)]
    epochs += [torch.cat([stream() for _ in range(20)]) for _ in range(2)]
    for epoch_ND in epochs:
        assert epoch_ND.shape == (1000, 32)
        assert torch.equal(_sorted_rows(epoch_ND), _sorted_rows(acts_ND))
    assert not torch.equal(epochs[0], acts_ND) and not torch.equal(epochs[0], epochs[1])
    same_seed = ActivationStream(tmp_path, batch_size=50, seed=3, buffer_shards=2)
    assert torch.equal(torch.cat([same_seed(200)] + [same_seed() for _ in range(16)]), epochs[0])
    other_seed = ActivationStream(tmp_path, batch_size=200, seed=4, buffer_shards=2)
    assert not torch.equal(other_seed(), epochs[0][:200])


def _sorted_rows(rows_ND):
    order = torch.argsort(rows_ND[:, 0] * 1e3 + rows_ND[:, 1])
    return rows_ND[order]


@pytest.mark.slow
def test_real_gemma_truncated_extraction_matches_its_full_forward(tmp_path):
    """Embedded Gemma 3 270M (built into the user cache on first use), layer 5, ~300 tokens."""
    gemma = load_model("gemma3-270m", device="cpu")
    assert (gemma.n_layers, gemma.d_model) == (18, 640)
    corpus = load_corpus()
    settings = dict(
        layer=5, hook="resid_post", tokens=300, shard_tokens=128, batch_size=2, context_length=80
    )
    manifest = _extract(gemma, corpus, tmp_path, **settings)
    assert [s["n_tokens"] for s in manifest["shards"]] == [128, 128, 44]
    acts_ND, ids_N = _shards(tmp_path)
    batches = token_batches(gemma.tokenizer, corpus, 80, 2)
    full_acts, full_ids = [], []
    for batch in [next(batches), next(batches)]:
        with torch.no_grad():  # all 18 layers, hidden states recorded by transformers itself
            hidden = gemma.model.base_model(
                input_ids=batch.input_ids_BT,
                attention_mask=batch.attention_mask_BT,
                output_hidden_states=True,
            ).hidden_states
        full_acts.append(hidden[6][batch.keep_BT])
        full_ids.append(batch.input_ids_BT[batch.keep_BT])
    assert torch.equal(ids_N.long(), torch.cat(full_ids)[:300])
    torch.testing.assert_close(acts_ND, torch.cat(full_acts)[:300], rtol=1e-4, atol=1e-3)


def test_stream_over_a_shard_subset_serves_only_those_rows(tiny, corpus, tmp_path):
    _extract(tiny, corpus, tmp_path, **SETTINGS)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    shard = manifest["shards"][1]
    stream = ActivationStream(tmp_path, seed=0, shards=[1])
    rows_ND = stream(shard["n_tokens"])
    expected_ND = load_file(tmp_path / shard["file"])["activations"]
    assert torch.equal(_sorted_rows(rows_ND), _sorted_rows(expected_ND))
    with pytest.raises(ValueError, match=r"shards \[7\]"):
        ActivationStream(tmp_path, shards=[7])
