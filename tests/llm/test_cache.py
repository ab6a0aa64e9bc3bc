"""Activation cache: exact round trip, resume after interruption, verification, shuffled stream;
and one end-to-end check on the real embedded Gemma model."""

import json

import pytest
import torch
from safetensors.torch import load_file

import llm.cache
from llm.cache import ActivationStream, ExtractConfig, extract, verify
from llm.corpus import load_corpus, token_batches
from llm.models import activations, load_model
from tests.llm.tiny_models import save_tiny_model, write_text_corpus

SETTINGS = dict(
    layer=1, hook="resid_post", tokens=1000, shard_tokens=300, batch_size=4, context_length=16
)


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


def test_corrupt_or_missing_shards_are_named_and_never_used(tiny, corpus, tmp_path):
    _extract(tiny, corpus, tmp_path, **SETTINGS)
    shard = tmp_path / "shard_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="shard_00001.safetensors .* corrupt"):
        verify(tmp_path)
    with pytest.raises(ValueError, match="shard_00001.safetensors .* corrupt"):
        _extract(tiny, corpus, tmp_path, **SETTINGS)  # even a finished cache is re-checked
    stream = ActivationStream(tmp_path, batch_size=100, seed=0, buffer_shards=1)
    with pytest.raises(ValueError, match="shard_00001.safetensors .* corrupt"):
        for _ in range(10):
            stream()
    shard.unlink()
    with pytest.raises(ValueError, match="shard_00001.safetensors is missing"):
        verify(tmp_path)


def test_a_different_request_is_refused(tiny, corpus, tmp_path):
    _extract(tiny, corpus, tmp_path, **SETTINGS)
    with pytest.raises(ValueError, match="different request.*layer: cached 1, requested 0"):
        _extract(tiny, corpus, tmp_path, **{**SETTINGS, "layer": 0})
    with pytest.raises(ValueError, match="batch_size: cached 4, requested 8"):
        _extract(tiny, corpus, tmp_path, **{**SETTINGS, "batch_size": 8})


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
