"""The trainer: stacks train like separate runs, exact resume, training reaches theory's optimum."""

import io

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from theory.features import scenario
from theory.sae import SAEParams, expected_loss
from toymodels.metrics import explained_variance
from toymodels.sae import make_sae
from toymodels.sampling import orthonormal_directions, sample_activations
from toymodels.train import (
    TrainConfig,
    discard_checkpoint,
    learning_rate_factor,
    to_feature_basis,
    train,
)

WORLD = scenario("correlated").numeric()


def world_data(d_in=50, dtype=torch.float32):
    """Samples of the two-feature world embedded in d_in dims (global RNG, so train seeds it)."""
    directions = orthonormal_directions(2, d_in, torch.Generator().manual_seed(0)).to(dtype)
    return directions, lambda batch: sample_activations(WORLD, directions, batch)


def small_stack(n_members=2, seed=0):
    return make_sae(
        "relu-l1",
        d_in=8,
        n_latents=3,
        n_members=n_members,
        widths=[1, 3, 2][:n_members],
        l1=[0.01, 0.05, 0.1][:n_members],
        decoder_init_norm=0.5,
        generator=torch.Generator().manual_seed(seed),
    ).double()


SCHEDULE = TrainConfig(
    samples=64 * 30,
    batch_size=64,
    lr=1e-2,
    warmup_steps=4,
    decay_fraction=0.3,
    seed=5,
    progress=False,
    device="cpu",
)


def test_a_stack_trains_exactly_like_its_members_alone():
    _, data = world_data(d_in=8)
    stack = small_stack()
    alone = [stack.select_members([m]) for m in range(2)]
    train(stack, data, SCHEDULE)
    for m, sae in enumerate(alone):
        train(sae, data, SCHEDULE)
        for name, p in sae.named_parameters():
            torch.testing.assert_close(p[0], getattr(stack, name)[m], rtol=1e-9, atol=1e-12)
    assert not torch.equal(stack.W_dec[0], small_stack().W_dec[0])  # it did train


def test_per_member_batches_reach_each_member():
    _, data = world_data(d_in=8)
    stack = small_stack()
    alone = stack.select_members([1])
    train(stack, lambda b: torch.stack([data(b), data(b)]).double(), SCHEDULE)
    # Member 1 saw every second batch draw: replay the same draws for it alone.
    train(alone, lambda b: torch.stack([data(b), data(b)])[1].double(), SCHEDULE)
    torch.testing.assert_close(alone.W_dec[0], stack.W_dec[1], rtol=1e-9, atol=1e-12)


class Interrupted(Exception):
    pass


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    _, data = world_data(d_in=8)
    reference = small_stack()
    reference_log = train(reference, data, SCHEDULE.replace(log_every=4))

    calls = 0

    def failing_data(batch):
        nonlocal calls
        calls += 1
        if calls == 19:  # during step 19; the last checkpoint holds step 15
            raise Interrupted
        return data(batch)

    path = tmp_path / "ckpt" / "train.pt"
    checkpointed = SCHEDULE.replace(checkpoint_every=5, log_every=4)
    resumed = small_stack()
    with pytest.raises(Interrupted):
        train(resumed, failing_data, checkpointed, checkpoint_path=path)
    assert torch.load(path, weights_only=False)["step"] == 15
    resumed = small_stack(seed=99)  # a fresh process would rebuild the SAE from scratch
    resumed_log = train(resumed, data, checkpointed, checkpoint_path=path)
    for name, p in reference.state_dict().items():
        assert torch.equal(p, resumed.state_dict()[name]), name
    for key, values in reference_log.as_arrays().items():
        np.testing.assert_array_equal(values, resumed_log.as_arrays()[key])
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.pt"]  # no temporary files
    with pytest.raises(ValueError, match="different run"):
        train(small_stack(), data, SCHEDULE.replace(lr=2e-2), checkpoint_path=path)


def _saved(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda good: b"", "EOFError"),
        (lambda good: good[: len(good) // 2], "Error: "),  # OSError or RuntimeError by version
        (lambda good: b"not a checkpoint at all", "UnpicklingError"),
        (lambda good: _saved([1, 2, 3]), "holds a list"),
        (lambda good: _saved({"step": 3}), "lacks run, sums, sae, optimizer, torch_rng, log"),
    ],
    ids=["empty", "truncated", "garbage", "not-a-dict", "missing-keys"],
)
def test_an_unreadable_checkpoint_is_named_with_the_way_out(tmp_path, damage, problem):
    _, data = world_data(d_in=8)
    path = tmp_path / "train.pt"
    schedule = SCHEDULE.replace(samples=64 * 5)
    reference = small_stack()
    train(reference, data, schedule, checkpoint_path=path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError) as refused:
        train(small_stack(), data, schedule, checkpoint_path=path)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"checkpoint {path} is corrupt or truncated")
    assert problem in message and "discard_checkpoint" in message and "--restart" in message
    assert discard_checkpoint(path) and not discard_checkpoint(path)
    restarted = small_stack()
    train(restarted, data, schedule, checkpoint_path=path)  # from step 0, like the first run
    for name, p in reference.state_dict().items():
        assert torch.equal(p, restarted.state_dict()[name]), name


def test_learning_rate_warms_up_then_decays_to_zero_over_the_last_fraction():
    factors = [learning_rate_factor(s, 10, warmup_steps=2, decay_fraction=0.2) for s in range(10)]
    assert factors == pytest.approx([0.5, 1, 1, 1, 1, 1, 1, 1, 1.0, 0.5])
    with pytest.raises(ValueError, match="at least one batch_size"):
        TrainConfig(samples=10, batch_size=64)


def _params(vector):
    return SAEParams(vector[None, 0:2], vector[2:3], vector[None, 3:5], vector[5:7])


def theory_optimum(l1, starts):
    """Best of local minimisations of theory's exact loss (width 1, two features)."""
    best = None
    for start in starts:
        result = minimize(
            lambda v: float(expected_loss(WORLD, _params(v), l1)),
            start,
            method="Nelder-Mead",
            options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20_000},
        )
        best = result if best is None or result.fun < best.fun else best
    return best.fun


def test_training_a_width_one_sae_reaches_theorys_optimum():
    l1 = 0.02
    directions, data = world_data()
    sae = make_sae(
        "relu-l1",
        d_in=50,
        n_latents=1,
        n_members=4,
        l1=l1,
        decoder_init_norm=1.0,
        generator=torch.Generator().manual_seed(1),
    )
    initial = [float(expected_loss(WORLD, p, l1)) for p in to_feature_basis(sae, directions)]
    train(
        sae,
        data,
        TrainConfig(samples=1024 * 800, batch_size=1024, lr=1e-2, progress=False, device="cpu"),
    )
    trained_params = to_feature_basis(sae, directions)
    trained = [float(expected_loss(WORLD, p, l1)) for p in trained_params]
    rng = np.random.default_rng(0)
    starts = [
        np.concatenate([p.encoder[0], p.encoder_bias, p.decoder[0], p.decoder_bias])
        for p in trained_params
    ] + [rng.normal(size=7) for _ in range(8)]
    optimum = theory_optimum(l1, starts)
    assert min(initial) > 2 * optimum
    assert min(trained) == pytest.approx(optimum, rel=2e-3)


def sparse_feature_data(d_in=32, n_features=48, seed=1):
    """Sparse non-negative features along random unit directions (global RNG draws)."""
    directions = torch.nn.functional.normalize(
        torch.randn(n_features, d_in, generator=torch.Generator().manual_seed(seed)), dim=-1
    )
    return lambda batch: (
        ((torch.rand(batch, n_features) < 0.05) * torch.rand(batch, n_features)) @ (3 * directions)
    )


@pytest.mark.parametrize(
    "architecture, sparsity",
    [("topk", {"k": 4}), ("batchtopk", {"k": 4}), ("relu-l1", {"l1": 0.01}), ("jumprelu", {})],
)
def test_bf16_training_reaches_the_fp32_explained_variance_with_fp32_master_weights(
    tmp_path, architecture, sparsity
):
    data = sparse_feature_data()
    torch.manual_seed(123)
    held_out_ND = data(4096)
    schedule = TrainConfig(
        samples=512 * 150, batch_size=512, lr=3e-3, seed=2, progress=False, device="cpu"
    )
    trained = {}
    for precision in ("fp32", "bf16"):
        sae = make_sae(
            architecture,
            d_in=32,
            n_latents=64,
            n_members=2,
            generator=torch.Generator().manual_seed(0),
            **sparsity,
        )
        path = tmp_path / f"{precision}.pt"
        train(sae, data, schedule.replace(precision=precision), checkpoint_path=path)
        state = torch.load(path, weights_only=False)
        assert state["run"]["precision"] == precision
        # Master weights and Adam's moments stay fp32 under bf16 autocast.
        assert {p.dtype for p in sae.parameters()} == {torch.float32}
        moments = [t for s in state["optimizer"]["state"].values() for t in s.values()]
        assert {t.dtype for t in moments if t.dim() > 0} == {torch.float32}
        with torch.no_grad():
            x_hat_MND = sae.eval()(held_out_ND)
        trained[precision] = (sae, [explained_variance(held_out_ND, x) for x in x_hat_MND])
    (fp32_sae, fp32_ev), (bf16_sae, bf16_ev) = trained["fp32"], trained["bf16"]
    assert min(fp32_ev) > 0.8  # both learned something worth comparing
    assert bf16_ev == pytest.approx(fp32_ev, abs=0.01)
    # bf16 matmuls did run: the two runs took different paths.
    assert (bf16_sae.W_dec - fp32_sae.W_dec).abs().max() > 1e-4


def test_an_unknown_precision_is_refused_in_one_line():
    with pytest.raises(ValueError, match="unknown precision 'fp16'; allowed: fp32, bf16"):
        TrainConfig(precision="fp16")
