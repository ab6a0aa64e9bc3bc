"""The hedging-degree protocol on two-feature worlds whose answer theory knows."""

import numpy as np
import pytest
import torch

from theory.features import scenario
from theory.optimum import global_optimum
from theory.sae import SAESpec
from toymodels.experiments.common import EmbeddedWorlds, held_out_loss
from toymodels.hedging import hedging_protocol
from toymodels.metrics import hedging_degree
from toymodels.sae import make_sae
from toymodels.train import TrainConfig, train

L1 = 0.02
STAGE = TrainConfig(
    samples=200_000, batch_size=1024, lr=1e-2, decay_fraction=0.3, progress=False, device="cpu"
)


def protocol_on(name, width, n_new=1, n_members=4):
    """Train `n_members` initialisations, run the protocol and return the row of the member
    with the lowest held-out loss (single latents have local minima) and the data source."""
    data = EmbeddedWorlds([scenario(name)], [0] * n_members, d_in=50)
    initial = make_sae(
        "relu-l1",
        d_in=50,
        n_latents=width,
        n_members=n_members,
        l1=L1,
        decoder_init_norm=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    train(initial, data, STAGE)
    before = {k: v.clone() for k, v in initial.state_dict().items()}
    rows, control, extended = hedging_protocol(initial, data, STAGE.replace(seed=1), n_new)
    for key, value in initial.state_dict().items():  # the initial SAE is left as it was
        assert torch.equal(value, before[key]), key
    assert torch.allclose(control.W_dec.norm(dim=-1), torch.ones(n_members, width))
    assert extended.n_latents == width + n_new
    best = int(np.argmin(held_out_loss(initial, data, 16_384, seed=2)))
    return rows[best], data


def theory_hedging(name, width, n_new, directions_ND):
    """Hedging degree of theory's optima: width -> width + n_new, embedded in d_in dims."""
    world = scenario(name)
    control = global_optimum(world, SAESpec(width, L1)).params.decoder
    extended = global_optimum(world, SAESpec(width + n_new, L1)).params.decoder
    # The originals are the extended latents closest to the control's; the rest are new.
    cosine = control @ extended.T
    original = [int(np.argmax(row)) for row in cosine]
    new = [i for i in range(width + n_new) if i not in original]
    ext = np.concatenate([extended[original], extended[new]]) @ directions_ND.double().numpy()
    ctrl = control @ directions_ND.double().numpy()
    return hedging_degree(ctrl, ext, n_new, generator=torch.Generator().manual_seed(1))


def test_a_narrow_sae_on_correlated_features_hedges_as_theory_predicts():
    row, data = protocol_on("correlated", width=1)
    expected = theory_hedging("correlated", 1, 1, data.directions_ND)
    # The width-1 latent carries the child's component (0.21); with a second latent it is clean.
    assert expected["h"] > 0.15
    assert row["h"] == pytest.approx(expected["h"], abs=0.03)
    assert row["n_new"] == 1 and row["width"] == 1 and row["samples_per_stage"] == 200_000


def test_an_sae_that_already_covers_every_feature_does_not_hedge():
    row, _ = protocol_on("independent", width=2)
    assert row["h"] < 0.02
    assert row["p"] < 0.03


def test_bad_number_of_new_latents_is_refused():
    sae = make_sae("relu-l1", d_in=8, n_latents=2)
    with pytest.raises(ValueError, match="n_new must be a positive integer"):
        hedging_protocol(
            sae, lambda b: torch.randn(b, 8), TrainConfig(samples=64, batch_size=64), 0
        )
