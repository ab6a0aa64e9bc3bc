"""The SAE family: folding, TopK budgets, matryoshka, masks, growing, aux loss, registry."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.features import from_table
from theory.sae import codes as theory_codes
from theory.sae import expected_loss
from toymodels import sae as sae_module
from toymodels.sae import make_sae
from toymodels.train import to_feature_basis

ARCHITECTURES = {
    "relu-l1": {"l1": [0.01, 0.1, 1.0]},
    "topk": {"k": [1, 2, 3]},
    "batchtopk": {"k": [1, 2, 3]},
    "jumprelu": {"l0_coefficient": 0.1, "threshold_init": 0.05},
    "matryoshka": {"levels": [2, 6], "mu": [0.0, 0.5, 1.0], "k": 2},
}


def exact_directions(n_features, d_in, seed):
    """Orthonormal rows exact to float64 precision."""
    gaussian = torch.randn(
        d_in, n_features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return torch.linalg.qr(gaussian)[0].T


def random_sae(name, seed, d_in=7, n_latents=6, n_members=3, **extra):
    """An SAE with every parameter random (not the tied init), float64."""
    g = torch.Generator().manual_seed(seed)
    config = {
        key: value[:n_members] if isinstance(value, list) else value
        for key, value in {**ARCHITECTURES[name], **extra}.items()
    }
    sae = make_sae(
        name, d_in=d_in, n_latents=n_latents, n_members=n_members, generator=g, **config
    ).double()
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.7)
    return sae


@settings(max_examples=15, deadline=None)
@given(
    name=st.sampled_from(sorted(ARCHITECTURES)),
    seed=st.integers(0, 10_000),
    training=st.booleans(),
    narrow=st.booleans(),
)
def test_folding_decoder_norms_changes_no_reconstruction(name, seed, training, narrow):
    widths = [2, 6, 4] if narrow else None
    sae = random_sae(name, seed, widths=widths).train(training)
    if name == "batchtopk":
        sae.contribution_threshold.fill_(0.3)
    x = torch.randn(3, 16, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    before = sae(x[0]), sae(x), sae.loss(x)["mse"]
    sae.fold_decoder_norms()
    norms = sae.decoder_norms()
    assert torch.allclose(norms, torch.ones_like(norms))
    after = sae(x[0]), sae(x), sae.loss(x)["mse"]
    for b, a in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("n_latents", [6, 9])  # the expanded-square path and the direct one
def test_a_shared_batch_gives_what_the_same_batch_per_member_gives(name, n_latents):
    extra = {"levels": [2, n_latents]} if name == "matryoshka" else {}
    sae = random_sae(name, 13, n_latents=n_latents, widths=[1, n_latents, 4], **extra)
    x = torch.randn(20, 7, dtype=torch.float64)
    shared, per_member = sae.loss(x), sae.loss(x.expand(3, -1, -1))
    for key in ("total", "mse", "sparsity"):
        torch.testing.assert_close(shared[key], per_member[key], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(shared["total"], sae.W_dec)[0],
        torch.autograd.grad(per_member["total"], sae.W_dec)[0],
    )


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n_latents=st.integers(1, 7), narrow=st.booleans())
def test_fused_relu_l1_loss_has_the_generic_paths_values_and_gradients(seed, n_latents, narrow):
    g = torch.Generator().manual_seed(seed)
    widths = [1, n_latents, max(n_latents - 1, 1)] if narrow else None
    sae = random_sae("relu-l1", seed, n_latents=n_latents, widths=widths).train()
    with torch.no_grad():
        sae.W_dec[1, 0] = 0.0  # a zero decoder row: its norm's gradient is 0
    x = torch.randn(40, 7, generator=g, dtype=torch.float64)
    weights = {key: torch.rand(3, generator=g, dtype=torch.float64) for key in ("mse", "sparsity")}
    results = []
    for batch in (x, x.expand(3, -1, -1)):  # shared: the fused path; per member: the generic one
        sae.samples_since_fired.fill_(5)
        losses = sae.loss(batch)
        weighted = sum((weights[key] * losses[key]).sum() for key in weights)
        results.append(
            (
                losses,
                torch.autograd.grad(weighted, list(sae.parameters())),
                sae.samples_since_fired.clone(),
            )
        )
    (fused, fused_grads, fused_counts), (generic, generic_grads, generic_counts) = results
    assert type(fused["mse"].grad_fn).__name__ == "SharedBatchReLUL1LossBackward"
    for key in ("mse", "sparsity", "total"):
        torch.testing.assert_close(fused[key], generic[key], rtol=1e-10, atol=1e-12)
    for a, b in zip(fused_grads, generic_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.equal(fused_counts, generic_counts)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 6))
def test_topk_keeps_the_k_largest_contributions_per_sample(seed, k):
    sae = random_sae("topk", seed, k=k, n_members=1)
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive, so exactly k survive
    x = torch.randn(32, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    codes = sae.encode(x)[0]
    assert ((codes > 0).sum(-1) == k).all()
    contributions = codes * sae.decoder_norms()[0]
    all_contributions = sae.pre_activations(x)[0] * sae.decoder_norms()[0]
    kth_largest = all_contributions.topk(k, dim=-1).values[:, -1:]
    assert (contributions[codes > 0].view(32, k) >= kth_largest - 1e-12).all()


def test_topk_widths_and_k_differ_per_member():
    sae = random_sae("topk", 0, k=[1, 2, 3], widths=[1, 6, 2])
    with torch.no_grad():
        sae.b_enc.fill_(100.0)
    fired = (sae.encode(torch.randn(20, 7, dtype=torch.float64)) > 0).sum(-1)
    assert fired.tolist() == [[1] * 20, [2] * 20, [2] * 20]  # member 2 has only 2 latents


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 5), batch=st.integers(1, 40))
def test_batchtopk_keeps_k_times_batch_in_the_batch(seed, k, batch):
    sae = random_sae("batchtopk", seed, k=[k, k + 1, 1])
    with torch.no_grad():
        sae.b_enc.fill_(100.0)
    x = torch.randn(batch, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    fired = (sae.train().encode(x) > 0).sum(dim=(1, 2))
    assert fired.tolist() == [k * batch, (k + 1) * batch, batch]


def test_batchtopk_threshold_tracks_the_smallest_kept_contribution_and_serves_inference():
    sae = random_sae("batchtopk", 1, k=2, n_members=1, threshold_lr=1.0)
    x = torch.randn(500, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    train_codes = sae.train().encode(x)
    kept = (train_codes * sae.decoder_norms()[:, None])[train_codes > 0]
    assert sae.contribution_threshold.item() == pytest.approx(kept.min().item())
    # At inference every sample is coded alone, and on average about k latents fire.
    eval_codes = sae.eval().encode(x)
    assert abs((eval_codes > 0).sum(-1).float().mean().item() - 2) < 0.1


@pytest.mark.parametrize(
    "inner, plain, extra",
    [
        ("batchtopk", "batchtopk", {"k": [1, 2, 3]}),
        ("relu-l1", "relu-l1", {"l1": [0.01, 0.1, 1.0]}),
    ],
)
def test_matryoshka_with_mu_zero_equals_its_plain_sae(inner, plain, extra):
    g = torch.Generator().manual_seed(3)
    kwargs = {"d_in": 7, "n_latents": 6, "n_members": 3, "widths": [6, 3, 5], **extra}
    nested = make_sae("matryoshka", inner=inner, levels=[1, 3, 6], mu=0.0, generator=g, **kwargs)
    flat = make_sae(plain, **kwargs)
    flat.load_state_dict({k: v for k, v in nested.state_dict().items() if k != "level_weights"})
    nested.double(), flat.double()
    x = torch.randn(40, 7, generator=g, dtype=torch.float64)
    losses = [sae.loss(x) for sae in (nested, flat)]
    torch.testing.assert_close(losses[0]["per_member"], losses[1]["per_member"])
    for loss in losses:
        loss["total"].backward()
    for name, p in flat.named_parameters():
        torch.testing.assert_close(dict(nested.named_parameters())[name].grad, p.grad)


def test_matryoshka_levels_weights_and_detached_gradients():
    g = torch.Generator().manual_seed(4)
    sae = make_sae(
        "matryoshka",
        inner="relu-l1",
        d_in=5,
        n_latents=4,
        levels=[1, 4],
        mu=0.25,
        l1=0.0,
        generator=g,
    ).double()
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    codes = sae.encode(x)
    inner = (
        (x - sae.decode(codes * torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)))
        .square()
        .sum(-1)
        .mean()
    )
    outer = (x - sae.decode(codes)).square().sum(-1).mean()
    torch.testing.assert_close(sae.loss(x)["mse"][0], 0.25 * inner + outer)
    # Detached: the outer level's error does not train the inner latent's decoder row.
    detached = make_sae(
        "matryoshka",
        inner="relu-l1",
        d_in=5,
        n_latents=4,
        levels=[1, 4],
        mu=0.0,
        detached=True,
        l1=0.0,
    ).double()
    detached.load_state_dict(sae.state_dict() | {"level_weights": detached.level_weights})
    detached.loss(x)["total"].backward()
    assert detached.W_dec.grad[0, 0].abs().max() == 0
    assert detached.W_dec.grad[0, 1:].abs().max() > 0


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_masked_latents_never_fire_and_get_no_gradient(name):
    sae = random_sae(name, 5, widths=[1, 6, 3], aux_coefficient=1.0)
    sae.samples_since_fired.fill_(10**9)  # all dead: the aux loss reaches every latent it may
    x = torch.randn(25, 7, dtype=torch.float64)
    assert (sae.encode(x)[~sae.latent_mask[:, None].expand(-1, 25, -1)] == 0).all()
    sae.loss(x)["total"].backward()
    masked = ~sae.latent_mask
    for grad in (
        sae.W_dec.grad[masked],
        sae.W_enc.grad.transpose(1, 2)[masked],
        sae.b_enc.grad[masked],
    ):
        assert (grad == 0).all()
    assert (sae.W_dec.grad[sae.latent_mask].abs().sum(-1) > 0).any()


def test_aux_loss_trains_only_dead_latents_on_the_residual():
    sae = random_sae("topk", 6, k=1, n_members=2, n_latents=5)
    x = torch.randn(50, 7, dtype=torch.float64)
    assert (sae.loss(x)["aux"] == 0).all()  # nothing is dead yet
    sae.samples_since_fired[0, 3] = 10**9
    loss = sae.eval().loss(x)  # eval: the dead-latent counters stay as set
    assert loss["aux"][0] > 0 and loss["aux"][1] == 0
    loss["aux"].sum().backward()
    grad_rows = sae.W_dec.grad.abs().sum(-1)
    assert grad_rows[0, 3] > 0 and grad_rows.sum() == grad_rows[0, 3]


def test_dead_latent_counters_count_samples_since_firing():
    sae = random_sae("relu-l1", 7, n_members=1, n_latents=3, dead_after_samples=20)
    with torch.no_grad():
        sae.b_enc.copy_(torch.tensor([[100.0, -100.0, -100.0]], dtype=torch.float64))
    x = torch.randn(8, 7, dtype=torch.float64)
    for _ in range(3):
        sae.train().loss(x)
    assert sae.samples_since_fired.tolist() == [[0, 24, 24]]
    assert sae.dead_latents().tolist() == [[False, True, True]]


@pytest.mark.parametrize("to_pre", [True, False])
def test_jumprelu_pseudo_gradient_raises_thresholds_under_the_l0_penalty(to_pre):
    sae = random_sae("jumprelu", 8, n_members=1, bandwidth=2.0, l0_gradient_to_pre=to_pre)
    x = torch.randn(200, 7, dtype=torch.float64)
    sae.loss(x)["sparsity"].sum().backward()
    assert (sae.log_threshold.grad <= 0).all() and (sae.log_threshold.grad < 0).any()


@pytest.mark.parametrize("to_pre", [True, False])
def test_jumprelu_l0_pseudo_gradient_reaches_pre_activations_only_when_asked(to_pre):
    # The L0 term alone: H(pre - theta) has d/d pre = +K((pre - theta) / eps) / eps, the
    # mirror of its threshold estimate, so a pre-activation within the kernel is pushed down.
    sae = random_sae("jumprelu", 8, n_members=1, bandwidth=2.0, l0_gradient_to_pre=to_pre)
    with torch.no_grad():
        sae.log_threshold.fill_(0.0)  # thresholds 1
        sae.l0_coefficient.fill_(1.0)
    pre = torch.tensor([[[0.5, 1.2, 3.0, -1.0, 1.0, 2.5]]], dtype=torch.float64)
    pre.requires_grad_(True)
    sae.sparsity_loss(pre, pre).sum().backward()
    if to_pre:  # kernel width 2 around 1: height 1/2 on (0, 2)
        expected = torch.tensor([[[0.5, 0.5, 0.0, 0.0, 0.5, 0.0]]], dtype=torch.float64)
        torch.testing.assert_close(pre.grad, expected)
    else:
        assert pre.grad is None or (pre.grad == 0).all()


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_add_latents_keeps_the_original_latents(name):
    sae = random_sae(name, 9, widths=[6, 2, 4]).eval()
    if name == "batchtopk":
        sae.contribution_threshold.fill_(0.3)
    grown = sae.add_latents(3, scale=1e-4, generator=torch.Generator().manual_seed(0))
    assert grown.n_latents == 9 and grown.latent_mask[:, 6:].all()
    assert grown.latent_mask[:, :6].equal(sae.latent_mask)
    torch.testing.assert_close(
        grown.decoder_norms()[:, 6:], torch.full((3, 3), 1e-4, dtype=torch.float64)
    )
    torch.testing.assert_close(grown.W_enc[:, :, 6:], grown.W_dec[:, 6:].transpose(1, 2))
    assert (grown.b_enc[:, 6:] == 0).all()
    x = torch.randn(30, 7, dtype=torch.float64)
    old, new = sae.encode(x), grown.encode(x)
    if name in ("relu-l1", "jumprelu"):  # per-latent codes: the old latents are untouched
        torch.testing.assert_close(new[..., :6], old)
    # New latents are tiny, so the function barely moves.
    torch.testing.assert_close(grown(x), sae(x), atol=1e-3, rtol=0)


def test_select_members_gives_the_members_alone():
    sae = random_sae("matryoshka", 10, widths=[6, 3, 5])
    x = torch.randn(12, 7, dtype=torch.float64)
    single = sae.select_members([1])
    assert single.n_members == 1 and single.config.mu == (0.5,)
    torch.testing.assert_close(single.loss(x)["per_member"], sae.loss(x)["per_member"][1:2])
    rebuilt = make_sae(**single.full_config())
    assert type(rebuilt) is type(single) and rebuilt.config == single.config


def test_b_dec_initialisation_from_a_batch():
    sae = make_sae("relu-l1", d_in=2, n_latents=1, n_members=2).double()
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]], dtype=torch.float64)
    sae.init_b_dec(points, "mean")
    torch.testing.assert_close(sae.b_dec, torch.tensor([[11 / 3, 0.0]] * 2, dtype=torch.float64))
    sae.init_b_dec(points, "geometric_median", iterations=200)  # the middle point, far from mean
    torch.testing.assert_close(
        sae.b_dec, torch.tensor([[1.0, 0.0]] * 2, dtype=torch.float64), atol=1e-4, rtol=0
    )
    with pytest.raises(ValueError, match="allowed: zero, mean, geometric_median"):
        sae.init_b_dec(points, "median")


def test_loading_a_state_with_a_narrower_mask_masks_those_latents():
    narrow = random_sae("relu-l1", 14, widths=[2, 6, 1])
    full = make_sae("relu-l1", d_in=7, n_latents=6, n_members=3, l1=[0.01, 0.1, 1.0]).double()
    full.load_state_dict(narrow.state_dict())
    x = torch.randn(9, 7, dtype=torch.float64)
    torch.testing.assert_close(full.loss(x)["per_member"], narrow.loss(x)["per_member"])


def test_relu_l1_loss_on_the_exact_state_distribution_equals_theory():
    # Probabilities are multiples of 1/20: repeating each state 20 p times IS the distribution.
    world = from_table(
        {"000": 0.45, "100": 0.2, "010": 0.15, "110": 0.1, "011": 0.05, "111": 0.05},
        magnitudes=[1.0, 2.0, 0.5],
    ).numeric()
    counts = np.rint(world.probabilities * 20).astype(int)
    directions = exact_directions(3, 9, seed=0)
    batch = torch.as_tensor(np.repeat(world.states, counts, axis=0)) @ directions
    sae = random_sae("relu-l1", 11, d_in=9, n_latents=3, widths=[2, 3, 1])
    with torch.no_grad():  # decoder and b_dec inside the feature span, encoder anything
        sae.W_dec.copy_(sae.W_dec @ directions.T @ directions)
        sae.b_dec.copy_(sae.b_dec @ directions.T @ directions)
    loss = sae.loss(batch)
    for m, params in enumerate(to_feature_basis(sae, directions)):
        assert loss["per_member"][m].item() == pytest.approx(
            float(expected_loss(world, params, sae.l1[m].item())), rel=1e-10
        )


def test_to_feature_basis_keeps_pre_activations_on_the_span():
    world = from_table({"00": 0.5, "10": 0.2, "01": 0.2, "11": 0.1}).numeric()
    directions = exact_directions(2, 6, seed=1)
    sae = random_sae("relu-l1", 12, d_in=6, n_latents=4, widths=[4, 1, 3])
    codes = sae.encode(torch.as_tensor(world.states) @ directions)
    for m, params in enumerate(to_feature_basis(sae, directions)):
        width = params.encoder.shape[0]
        np.testing.assert_allclose(
            theory_codes(world, params), codes[m, :, :width].detach(), atol=1e-12
        )


def test_bad_configurations_are_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="allowed: relu-l1, topk"):
        make_sae("gated", d_in=3, n_latents=2)
    with pytest.raises(ValueError, match="l1 needs 1 or 2 values"):
        make_sae("relu-l1", d_in=3, n_latents=2, n_members=2, l1=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="widths"):
        make_sae("relu-l1", d_in=3, n_latents=2, widths=[3])
    with pytest.raises(ValueError, match="levels"):
        make_sae("matryoshka", d_in=3, n_latents=4, levels=[2, 2, 4])
    with pytest.raises(ValueError, match="inner"):
        make_sae("matryoshka", d_in=3, n_latents=4, inner="gated")
    with pytest.raises(ValueError, match="integers >= 1"):
        make_sae("topk", d_in=3, n_latents=4, k=1.5)
    with pytest.raises(ValueError, match="inputs must be"):
        make_sae("relu-l1", d_in=3, n_latents=2).encode(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="ReLU"):
        to_feature_basis(
            make_sae("topk", d_in=3, n_latents=2, rank_by="activation"), torch.eye(3)[:2]
        )
    assert set(sae_module.ARCHITECTURES) == {
        "relu-l1",
        "topk",
        "batchtopk",
        "jumprelu",
        "matryoshka",
    }


@pytest.mark.parametrize("inner", ["relu-l1", "topk", "batchtopk", "jumprelu"])
def test_matryoshka_over_every_inner_architecture_trains_every_level(inner):
    """The inner level's reconstruction reaches the loss (and so the gradients) whatever the
    inner architecture: TopK's sparse shortcut, which would skip the levels, is off."""
    hyper = {
        "relu-l1": {"l1": 0.1},
        "topk": {"k": 2},
        "batchtopk": {"k": 2},
        "jumprelu": {"l0_coefficient": 0.1, "threshold_init": 0.01},
    }[inner]
    common = dict(d_in=7, n_latents=6, levels=[2, 6], inner=inner, **hyper)
    standard = make_sae("matryoshka", mu=1.0, generator=torch.Generator().manual_seed(1), **common)
    plain = make_sae("matryoshka", mu=0.0, generator=torch.Generator().manual_seed(1), **common)
    x = torch.randn(64, 7, generator=torch.Generator().manual_seed(2))
    assert not standard.capabilities.sparse_path and not standard.capabilities.fused_loss
    inner_only = standard.reconstruction_loss(x, standard.encode(x)) - plain.reconstruction_loss(
        x, plain.encode(x)
    )
    assert float(inner_only) > 0
    assert float(standard.loss(x)["mse"]) == pytest.approx(
        float(plain.loss(x)["mse"]) + float(inner_only), rel=1e-5
    )


@pytest.mark.parametrize("name", ["relu-l1", "topk", "batchtopk", "jumprelu"])
def test_tied_saes_keep_the_encoder_equal_to_the_decoder_through_training(name):
    sae = random_sae(name, 3, tied=True)
    x = torch.randn(3, 16, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        sae.loss(x)["total"].backward()
        optimizer.step()
    torch.testing.assert_close(sae.W_enc, sae.W_dec.transpose(1, 2), rtol=0, atol=0)
    grown = sae.add_latents(2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(grown.W_enc, grown.W_dec.transpose(1, 2), rtol=0, atol=0)


def test_without_a_decoder_bias_b_dec_stays_zero():
    sae = random_sae("relu-l1", 5, decoder_bias=False)
    x = torch.randn(16, 7, dtype=torch.float64) + 3.0
    sae.init_b_dec(x, "mean")
    sae.loss(x)["total"].backward()
    assert sae.b_dec.grad is None and not sae.b_dec.any()
