"""The hedging paper's protocol, checked by what training does: the initial SAE is folded before
new latents are added, the learning rate stays constant, Adam has no momentum (betas (0, 0.999)),
BatchTopK keeps the largest raw activations, dead-latent counters restart each stage, the L1
warm-up rises from 0, and the matryoshka toy's L1 is paid per level."""

import copy

import pytest
import torch

import toymodels.experiments.hedging_width as hedging_width
import toymodels.hedging
import toymodels.train
from toymodels.experiments.hedging_width import HedgingWidthConfig, run_hedging_width
from toymodels.hedging import PAPER_STAGE_OPTIONS, hedging_protocol, paper_train
from toymodels.sae import make_sae
from toymodels.train import TrainConfig, train
from toymodels.worlds import LargeWorld

TINY = TrainConfig(samples=2048, batch_size=256, lr=2e-3, device="cpu", progress=False)


class RecordingAdam(torch.optim.Adam):
    """Adam that records, per step, the learning rate used and whether its first moment is
    exactly the current gradient (no momentum: beta1 = 0)."""

    steps: list[tuple[float, tuple[float, float], bool]] = []

    def step(self, closure=None):  # noqa: ANN001, ANN201
        group = self.param_groups[0]
        loss = super().step(closure)
        grads = [p for p in group["params"] if p.grad is not None]
        without_momentum = all(
            torch.allclose(self.state[p]["exp_avg"], p.grad, rtol=1e-6, atol=1e-9) for p in grads
        )
        RecordingAdam.steps.append((group["lr"], tuple(group["betas"]), without_momentum))
        return loss


@pytest.fixture
def stages(monkeypatch):
    """Run the toy hedging-width job at a tiny size, recording a copy of the SAE each stage
    starts from and Adam's every step."""
    started = []
    real_train = toymodels.train.train

    def recording_train(sae, data, config, checkpoint_path=None):  # noqa: ANN001, ANN202
        started.append(copy.deepcopy(sae))
        return real_train(sae, data, config, checkpoint_path)

    monkeypatch.setattr(hedging_width, "train", recording_train)
    monkeypatch.setattr(toymodels.hedging, "train", recording_train)
    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    RecordingAdam.steps = []

    def run(protocol, tmp_path):  # noqa: ANN001, ANN202
        started.clear()
        RecordingAdam.steps = []
        config = HedgingWidthConfig(
            widths=(4, 6),
            seeds=1,
            new_latents=2,
            world=LargeWorld(n_features=12, d_in=10, seed=1),
            dead_after_samples=512,
            train=TINY,
            protocol=protocol,
        )
        run_hedging_width(config, tmp_path / protocol)
        initial, control, extended = started  # the three stages, as each began
        return initial, control, extended, list(RecordingAdam.steps)

    return run


def test_paper_folds_the_initial_sae_before_adding_new_latents(stages, tmp_path):
    _, control, extended, _ = stages("paper", tmp_path)
    norms = extended.W_dec.norm(dim=-1)
    old = extended.latent_mask.clone()
    old[:, extended.n_latents - 2 :] = False  # the two new latents sit after the old ones
    assert torch.allclose(norms[old], torch.ones(int(old.sum())), atol=1e-5)
    assert torch.allclose(norms[:, -2:], torch.full((2, 2), 0.1), atol=1e-6)
    active = control.latent_mask
    assert torch.allclose(control.W_dec.norm(dim=-1)[active], torch.ones(int(active.sum())))
    # the toolkit continues from the SAE as trained: its decoder rows are not unit
    _, control, extended, _ = stages("toolkit", tmp_path)
    assert not torch.allclose(control.W_dec.norm(dim=-1)[active], torch.ones(int(active.sum())))


def test_paper_learning_rate_is_constant_and_adam_has_no_momentum(stages, tmp_path):
    *_, steps = stages("paper", tmp_path)
    assert len(steps) == 3 * TINY.n_steps  # initial, control, extended
    assert {lr for lr, _, _ in steps} == {TINY.lr}
    assert {betas for _, betas, _ in steps} == {(0.0, 0.999)}
    assert all(without_momentum for *_, without_momentum in steps)
    *_, steps = stages("toolkit", tmp_path)  # the toolkit decays and keeps momentum
    assert steps[-1][0] < TINY.lr and not steps[-1][2]


def test_paper_dead_counters_restart_each_stage(monkeypatch):
    started = []
    real_train = toymodels.train.train

    def recording_train(sae, data, config, checkpoint_path=None):  # noqa: ANN001, ANN202
        started.append(sae.samples_since_fired.clone())
        return real_train(sae, data, config, checkpoint_path)

    monkeypatch.setattr(toymodels.hedging, "train", recording_train)
    initial = make_sae("batchtopk", d_in=6, n_latents=3, k=1)
    initial.samples_since_fired.fill_(7)  # latents silent for 7 samples at the initial's end

    def data(batch):  # noqa: ANN001, ANN202
        return torch.randn(batch, 6).relu()

    stage = TINY.replace(samples=256)
    hedging_protocol(initial, data, stage, 2, **PAPER_STAGE_OPTIONS)
    control, extended = started
    assert (control == 0).all() and (extended == 0).all()
    started.clear()
    hedging_protocol(initial, data, stage, 2)  # the toolkit carries the counters over
    control, extended = started
    assert (control == 7).all() and (extended[:, :3] == 7).all()


def test_paper_batchtopk_keeps_the_largest_raw_activations(stages, tmp_path):
    _, control, _, _ = stages("paper", tmp_path)
    x = torch.randn(64, control.d_in)
    with torch.no_grad():
        # make decoder norms unequal so the two rankings differ
        control.W_dec.mul_(torch.linspace(0.2, 3.0, control.n_latents)[:, None])
        pre = control.pre_activations(x)
        codes = control.train().activation(pre)
    for m in range(control.n_members):
        raw = pre[m].relu()
        top = torch.zeros(raw.numel())
        top[raw.flatten().topk(int(control.k[m]) * x.shape[0]).indices] = 1
        assert torch.equal(codes[m] > 0, (top.view_as(raw) > 0) & (raw > 0))


def test_rank_by_activation_differs_from_contribution_ranking():
    sae = {
        rank_by: make_sae(
            "topk",
            d_in=4,
            n_latents=2,
            k=1,
            rank_by=rank_by,
            generator=torch.Generator().manual_seed(0),
        )
        for rank_by in ("contribution", "activation")
    }
    for s in sae.values():
        with torch.no_grad():
            s.W_enc.copy_(torch.eye(4)[:, :2][None])
            s.W_dec.copy_(torch.tensor([[[1.0, 0, 0, 0], [0, 4.0, 0, 0]]]))
    x = torch.tensor([[2.0, 1.0, 0.0, 0.0]])  # latent 0 has the larger activation, 1 the larger
    assert sae["activation"].encode(x)[0, 0].nonzero().flatten().tolist() == [0]
    assert sae["contribution"].encode(x)[0, 0].nonzero().flatten().tolist() == [1]
    # the sparse training path agrees with the generic one
    sparse = sae["activation"].loss(x)["mse"]
    generic = sae["activation"].loss(x[None])["mse"]
    assert torch.allclose(sparse, generic)


def test_hedging_protocol_reset_and_fold_leave_the_initial_sae_unchanged():
    initial = make_sae("relu-l1", d_in=6, n_latents=3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        initial.W_dec.mul_(3.0)
        initial.samples_since_fired.fill_(7)
    before = copy.deepcopy(initial.state_dict())
    hedging_protocol(
        initial,
        lambda b: torch.randn(b, 6).relu(),
        TINY.replace(samples=256),
        1,
        fold_initial=True,
        reset_dead_counters=True,
    )
    for key, value in initial.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_l1_warm_up_rises_from_zero_and_ends_at_the_full_coefficient():
    sae = make_sae("relu-l1", d_in=6, n_latents=3, l1=0.5)
    config = TINY.replace(samples=8 * 32, batch_size=32, log_every=1, l1_warmup_steps=4)
    log = train(sae, lambda b: torch.randn(b, 6).relu(), paper_train(config))
    sparsity = [float(s[0]) for s in log.sparsity]
    assert sparsity[0] == 0.0 and all(s > 0 for s in sparsity[1:])
    assert sae.sparsity_scale == 1.0


def test_matryoshka_level_sparsity_weighs_each_level_by_beta():
    mu = 0.25
    sae = make_sae(
        "matryoshka",
        inner="relu-l1",
        d_in=5,
        n_latents=4,
        levels=(1, 4),
        mu=mu,
        l1=0.1,
        level_sparsity=True,
        generator=torch.Generator().manual_seed(0),
    )
    x = torch.rand(16, 5)
    codes = sae.encode(x)
    per_latent = torch.tensor([1 + mu, 1, 1, 1]) * sae.decoder_norms()[0]
    expected = 0.1 * (codes[0] * per_latent).sum(-1).mean()
    assert torch.allclose(sae.loss(x)["sparsity"][0], expected)


def test_a_checkpoint_from_before_the_new_options_still_resumes(tmp_path):
    sae = make_sae("batchtopk", d_in=6, n_latents=3, k=1)
    config = TINY.replace(samples=4 * 32, batch_size=32, checkpoint_every=2)
    path = tmp_path / "train.pt"
    train(sae, lambda b: torch.randn(b, 6).relu(), config.replace(samples=2 * 32), path)
    state = torch.load(path, weights_only=False)
    for key in ("adam_betas", "l1_warmup_steps"):  # as a checkpoint written before they existed
        del state["run"][key]
    state["run"]["sae"].pop("rank_by")
    # (samples differ: the old run was shorter, so this is refused for that reason only)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"differs in \['n_samples'\]"):
        train(sae, lambda b: torch.randn(b, 6).relu(), config, path)
    state["run"]["n_samples"] = config.samples
    torch.save(state, path)
    train(sae, lambda b: torch.randn(b, 6).relu(), config, path)
    with pytest.raises(ValueError, match=r"differs in \['sae'\]"):
        train(
            make_sae("batchtopk", d_in=6, n_latents=3, k=1, rank_by="activation"),
            lambda b: torch.randn(b, 6).relu(),
            config,
            path,
        )
