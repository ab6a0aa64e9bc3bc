"""Training on an activation cache: held-out split, resumable data source, normalisation, and a
resumed training run ending exactly where an uninterrupted one does."""

import math

import pytest
import torch

import llm.training
from llm.evaluate import reconstruction_metrics
from llm.training import (
    CacheData,
    held_out_activations,
    held_out_batches,
    normalisation_scale,
    split_cache,
    train_on_cache,
)
from tests.llm.tiny_cache import tiny_setup
from toymodels.sae import make_sae
from toymodels.train import TrainConfig


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("tiny"))[2]


def _all_rows(cache_dir, shards):
    from safetensors.torch import load_file

    manifest = llm.training.read_manifest(cache_dir)
    return torch.cat(
        [load_file(cache_dir / manifest["shards"][i]["file"])["activations"] for i in shards]
    )


def _sorted_rows(rows_ND):
    return rows_ND[torch.argsort(rows_ND[:, 0] * 1e3 + rows_ND[:, 1])]


def test_split_holds_out_the_last_shards(cache, tmp_path):
    split = split_cache(cache, held_out_tokens=500)
    assert (split.train_shards, split.held_out_shards) == ((0, 1, 2), (3,))
    assert split_cache(cache, held_out_tokens=700).held_out_shards == (2, 3)
    assert split_cache(cache, held_out_tokens=1800).train_shards == (0,)
    with pytest.raises(ValueError, match="held_out_tokens = 1801 is more than .* up to 1800"):
        split_cache(cache, held_out_tokens=1801)  # refused, never silently capped
    held_out = held_out_activations(split)
    assert torch.equal(_sorted_rows(held_out), _sorted_rows(_all_rows(cache, (3,))))
    assert len(held_out_activations(split, 100)) == 100
    batches = list(held_out_batches(split, 450, batch_size=100, scale=2.0))
    assert [len(b) for b in batches] == [100, 100, 100, 100, 50]
    assert torch.equal(torch.cat(batches), 2.0 * held_out_activations(split, 450))
    with pytest.raises(ValueError, match="not an activation cache"):
        split_cache(tmp_path)


def test_data_source_serves_training_rows_replays_and_restarts(cache):
    split = split_cache(cache, held_out_tokens=500)
    data = CacheData(split, seed=3, scale=2.0)
    epoch = torch.cat([data(300) for _ in range(6)])  # exactly the 1800 training rows
    assert torch.equal(_sorted_rows(epoch), _sorted_rows(2.0 * _all_rows(cache, (0, 1, 2))))

    data = CacheData(split, seed=3)
    first = [data(128) for _ in range(5)]
    resumed = CacheData(split, seed=3)
    resumed.load_state_dict(data.state_dict())
    assert torch.equal(resumed(128), data(128))
    with pytest.raises(ValueError, match="cannot resume"):
        CacheData(split, seed=4).load_state_dict(data.state_dict())

    periodic = CacheData(split, seed=3, restart_every=256)
    assert torch.equal(torch.cat([periodic(128), periodic(128)]), torch.cat(first[:2]))
    assert torch.equal(periodic(128), first[0])  # the sequence starts again


def test_normalisation_scale_gives_mean_norm_sqrt_d():
    x = torch.randn(1000, 32) * 7 + 3
    scaled = x * normalisation_scale(x)
    assert math.isclose(float(scaled.norm(dim=-1).mean()), math.sqrt(32), rel_tol=1e-6)


def _topk(seed=0):
    return make_sae(
        "topk",
        d_in=32,
        n_latents=64,
        k=4,
        dead_after_samples=500,
        generator=torch.Generator().manual_seed(seed),
    )


def test_resume_equals_uninterrupted_training(cache, tmp_path, monkeypatch):
    split = split_cache(cache, held_out_tokens=500)
    settings = TrainConfig(
        samples=64 * 30,
        batch_size=64,
        lr=1e-3,
        seed=1,
        device="cpu",
        checkpoint_every=5,
        progress=False,
    )
    reference = train_on_cache(_topk(), split, settings).sae

    real_call, calls = CacheData.__call__, {"n": 0}

    def interrupted(self, batch_size):
        calls["n"] += 1
        if calls["n"] > 17:
            raise KeyboardInterrupt
        return real_call(self, batch_size)

    monkeypatch.setattr(CacheData, "__call__", interrupted)
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        train_on_cache(_topk(), split, settings, checkpoint_path=checkpoint)
    monkeypatch.setattr(CacheData, "__call__", real_call)
    resumed = train_on_cache(_topk(), split, settings, checkpoint_path=checkpoint).sae
    for (name, value), expected in zip(
        resumed.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.equal(value, expected), name


def test_training_on_the_cache_learns_to_reconstruct(cache):
    split = split_cache(cache, held_out_tokens=500)
    held_out = held_out_activations(split)
    untrained = reconstruction_metrics(_topk(), held_out)[0]
    schedule = TrainConfig(samples=64 * 60, batch_size=64, lr=1e-2, device="cpu", progress=False)
    trained = train_on_cache(_topk(), split, schedule)
    quality = reconstruction_metrics(trained.sae, held_out * trained.input_scale)[0]
    assert quality["explained_variance"] > 0.6 > untrained["explained_variance"] + 0.3
    assert quality["l0"] == pytest.approx(4.0)


def test_bf16_training_on_the_cache_matches_fp32(cache):
    split = split_cache(cache, held_out_tokens=500)
    held_out = held_out_activations(split)
    schedule = TrainConfig(samples=64 * 60, batch_size=64, lr=1e-2, device="cpu", progress=False)
    quality = {}
    for precision in ("fp32", "bf16"):
        trained = train_on_cache(_topk(), split, schedule.replace(precision=precision))
        assert trained.sae.W_enc.dtype == torch.float32
        quality[precision] = reconstruction_metrics(trained.sae, held_out * trained.input_scale)[0]
    assert quality["fp32"]["explained_variance"] > 0.6
    assert quality["bf16"]["explained_variance"] == pytest.approx(
        quality["fp32"]["explained_variance"], abs=0.01
    )


@pytest.mark.parametrize("with_dead", [False, True])
def test_sparse_topk_loss_equals_the_generic_path(with_dead):
    """TopKSAE.loss on a shared batch (the path LLM training takes) against SAE.loss."""
    generator = torch.Generator().manual_seed(0)
    sae = make_sae(
        "topk",
        d_in=16,
        n_latents=40,
        n_members=3,
        widths=[40, 25, 40],
        k=[4, 6, 2],
        aux_k=5,
        aux_coefficient=0.5,
        dead_after_samples=10 if with_dead else 10**6,
        generator=generator,
    )
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(3, 40, generator=generator) * 0.1)
        sae.b_dec.copy_(torch.randn(3, 16, generator=generator) * 0.1)
        if with_dead:  # a zero decoder row scores 0: its pre-activation is not its score / norm
            sae.W_dec[1, 7] = 0
    x = torch.randn(128, 16, generator=generator)
    results = {}
    for name, loss in (("sparse", type(sae).loss), ("generic", type(sae).__mro__[1].loss)):
        copy = make_sae(**sae.full_config())
        copy.load_state_dict(sae.state_dict())
        losses = loss(copy, x)
        losses["total"].backward()
        results[name] = (
            losses,
            {n: p.grad for n, p in copy.named_parameters()},
            copy.samples_since_fired,
        )
    (sparse, sparse_grads, sparse_counts), (generic, generic_grads, generic_counts) = (
        results["sparse"],
        results["generic"],
    )
    assert bool((generic["aux"] > 0).any()) == with_dead
    for key in ("total", "mse", "aux", "per_member"):
        torch.testing.assert_close(sparse[key], generic[key], rtol=1e-5, atol=1e-6)
    for name, grad in generic_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, rtol=1e-4, atol=1e-6)
    assert torch.equal(sparse_counts, generic_counts)
