"""Evaluation: reconstruction metrics against a direct computation, and splicing an SAE into the
model (identity SAE recovers the clean loss, a zero SAE equals zero ablation)."""

import numpy as np
import pytest
import torch

from llm.corpus import token_batches
from llm.evaluate import reconstruction_metrics, splice_metrics
from tests.llm.tiny_cache import CONTEXT, LAYER, tiny_setup
from toymodels.sae import make_sae

D = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, corpus, _ = tiny_setup(tmp_path_factory.mktemp("tiny"), n_tokens=50, shard_tokens=50)
    return model, corpus


def test_reconstruction_metrics_match_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    sae = make_sae(
        "relu-l1", d_in=8, n_latents=6, n_members=2, widths=[4, 6], l1=0.1, generator=generator
    )
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(2, 6, generator=generator) - 0.5)
        sae.W_enc[1, :, 5] = -10  # latent 5 of member 1 never fires on these inputs
        sae.b_enc[1, 5] = -100
    x = torch.randn(300, 8, generator=generator).double().numpy()
    results = reconstruction_metrics(sae, torch.from_numpy(x).float(), batch_size=37)
    for m, result in enumerate(results):
        W_enc, b_enc = sae.W_enc[m].detach().double().numpy(), sae.b_enc[m].detach().numpy()
        W_dec, b_dec = sae.W_dec[m].detach().double().numpy(), sae.b_dec[m].detach().numpy()
        width = [4, 6][m]
        codes = np.maximum((x - b_dec) @ W_enc[:, :width] + b_enc[:width], 0)
        x_hat = codes @ W_dec[:width] + b_dec
        error = ((x - x_hat) ** 2).sum()
        assert result["explained_variance"] == pytest.approx(
            1 - error / ((x - x.mean(0)) ** 2).sum(), rel=1e-5
        )
        assert result["mse"] == pytest.approx(error / len(x), rel=1e-5)
        assert result["l0"] == pytest.approx((codes > 0).sum(1).mean())
        assert result["dead_fraction"] == pytest.approx(1 - (codes > 0).any(0).mean())
    assert results[1]["dead_fraction"] > 0


def test_streamed_batches_give_the_metrics_of_the_whole_rows():
    """Batches of any size, far from the origin (activations with a large mean): the running
    sums reproduce the metrics computed on all rows at once in float64."""
    generator = torch.Generator().manual_seed(1)
    sae = make_sae(
        "topk",
        d_in=8,
        n_latents=12,
        n_members=2,
        k=[2, 3],
        decoder_init_norm=1.0,
        generator=generator,
    )
    x = torch.randn(500, 8, generator=generator) * 0.5 + 300
    with torch.no_grad():
        sae.b_dec.fill_(300)
        x_hat = sae.eval()(x).double()
    whole = reconstruction_metrics(sae, x)
    streamed = reconstruction_metrics(sae, iter(x.split(61)))
    x = x.double()
    for m in range(2):
        error = (x - x_hat[m]).square().sum()
        expected = 1 - error / (x - x.mean(0)).square().sum()
        assert whole[m]["explained_variance"] == pytest.approx(float(expected), rel=1e-9)
        assert streamed[m] == pytest.approx(whole[m], rel=1e-9)
    assert 0.05 < whole[0]["explained_variance"] < 0.99  # neither trivial nor exact


def _identity_sae():
    """relu(x) - relu(-x) = x: latents +e_i and -e_i."""
    sae = make_sae("relu-l1", d_in=D, n_latents=2 * D)
    eye = torch.eye(D)
    with torch.no_grad():
        sae.W_enc[0] = torch.cat([eye, -eye], dim=1)
        sae.W_dec[0] = torch.cat([eye, -eye], dim=0)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def _clean_cross_entropy(model, corpus, n_batches, batch_size):
    losses = []
    for i, batch in enumerate(token_batches(model.tokenizer, corpus, CONTEXT, batch_size)):
        if i == n_batches:
            break
        with torch.no_grad():
            logits = model.model(
                input_ids=batch.input_ids_BT, attention_mask=batch.attention_mask_BT
            ).logits
        counted = batch.keep_BT[:, 1:]
        losses.append(
            torch.nn.functional.cross_entropy(
                logits[:, :-1][counted], batch.input_ids_BT[:, 1:][counted], reduction="none"
            )
        )
    return float(torch.cat(losses).mean())


@pytest.mark.parametrize("hook", ["resid_post", "resid_pre", "mlp_out"])
def test_identity_sae_recovers_the_clean_loss_and_zero_sae_the_ablation(tiny, hook):
    model, corpus = tiny
    identity = splice_metrics(
        model,
        _identity_sae(),
        corpus,
        LAYER,
        hook,
        n_batches=2,
        batch_size=3,
        context_length=CONTEXT,
    )
    assert identity["ce_clean"] == pytest.approx(
        _clean_cross_entropy(model, corpus, 2, 3), rel=1e-5
    )
    assert identity["ce_sae"] == pytest.approx(identity["ce_clean"], rel=1e-5)
    assert identity["kl"] == pytest.approx(0, abs=1e-5)
    assert identity["ce_loss_recovered"] == pytest.approx(1, abs=1e-3)
    assert abs(identity["ce_zero"] - identity["ce_clean"]) > 1e-3  # the ablation matters

    zero = _identity_sae()
    with torch.no_grad():
        zero.W_dec.zero_()
    ablated = splice_metrics(
        model, zero, corpus, LAYER, hook, n_batches=2, batch_size=3, context_length=CONTEXT
    )
    assert ablated["ce_sae"] == pytest.approx(ablated["ce_zero"], rel=1e-6)
    assert ablated["ce_loss_recovered"] == pytest.approx(0, abs=1e-4)
    assert ablated["kl"] > 1e-4


def test_evaluation_text_skips_the_cached_tokens(tiny):
    model, corpus = tiny
    everything = splice_metrics(
        model, _identity_sae(), corpus, LAYER, n_batches=1, batch_size=2, context_length=CONTEXT
    )
    after = splice_metrics(
        model,
        _identity_sae(),
        corpus,
        LAYER,
        n_batches=1,
        batch_size=2,
        context_length=CONTEXT,
        skip_tokens=1,
    )
    assert everything["ce_clean"] != after["ce_clean"]
    with pytest.raises(ValueError, match="no evaluation text"):
        splice_metrics(
            model, _identity_sae(), corpus, LAYER, skip_tokens=10**9, context_length=CONTEXT
        )
