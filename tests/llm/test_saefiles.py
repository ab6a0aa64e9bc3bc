"""SAE files: our SAELens-layout round trip, the fold of input scaling, foreign SAELens folders
and Gemma Scope params.npz files."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from llm.saefiles import load_sae, save_sae
from toymodels.sae import make_sae

D = 16


def _trained_like(architecture, seed=0, **config):
    """An SAE with generic (non-unit-norm, non-zero-bias) parameters, as after training."""
    generator = torch.Generator().manual_seed(seed)
    sae = make_sae(architecture, d_in=D, n_latents=12, n_members=2, generator=generator, **config)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        if architecture == "jumprelu":
            sae.log_threshold.copy_(torch.full_like(sae.log_threshold, -1.5))
        if hasattr(sae, "threshold") and isinstance(sae.threshold, torch.Tensor):
            sae.threshold.fill_(0.7)
    return sae.eval()


ARCHITECTURES = [
    ("relu-l1", {"l1": [1e-2, 2e-2]}),
    ("topk", {"k": [3, 4]}),
    ("batchtopk", {"k": 3}),
    ("jumprelu", {}),
    ("matryoshka", {"levels": [4, 12], "mu": [0.5, 1.0], "k": 3}),
]


@pytest.mark.parametrize(("architecture", "config"), ARCHITECTURES)
def test_saved_then_loaded_sae_gives_the_folded_members_codes(architecture, config, tmp_path):
    sae = _trained_like(architecture, **config)
    x = torch.randn(256, D) * 2
    save_sae(sae, tmp_path, member=1, metadata={"model_name": "tiny", "hook_name": "h"})
    loaded = load_sae(tmp_path)
    member = sae.select_members([1]).eval()
    reference_codes = member.encode(x)
    member.fold_decoder_norms()
    assert loaded.source_format == "sae-hedging"
    assert loaded.sae.full_config() == member.full_config()
    assert loaded.metadata["model_name"] == "tiny"
    assert torch.equal(loaded.sae.encode(x), member.encode(x))
    assert (loaded.sae.encode(x) != 0).sum() > 0
    # Folding keeps the function: the same latents fire and the reconstruction is unchanged.
    assert torch.equal(loaded.sae.encode(x) != 0, reference_codes != 0)
    torch.testing.assert_close(loaded.sae(x), sae.select_members([1])(x), atol=1e-4, rtol=1e-4)
    weights = load_file(tmp_path / "sae_weights.safetensors")
    assert weights["W_enc"].shape == (D, 12) and weights["W_dec"].shape == (12, D)
    torch.testing.assert_close(weights["W_dec"].norm(dim=-1), torch.ones(12))


@pytest.mark.parametrize("architecture", ["relu-l1", "batchtopk", "jumprelu"])
def test_input_scale_is_folded_back(architecture, tmp_path):
    """An SAE trained on x * s, written with input_scale = s, maps raw x to x_hat / s."""
    sae = (
        _trained_like(architecture, k=3) if "topk" in architecture else _trained_like(architecture)
    )
    scale = 3.0
    x = torch.randn(256, D)
    save_sae(sae, tmp_path, member=0, input_scale=scale)
    loaded = load_sae(tmp_path).sae
    member = sae.select_members([0])
    torch.testing.assert_close(loaded(x), member(x * scale) / scale, atol=1e-5, rtol=1e-4)
    assert torch.equal(loaded.encode(x) != 0, member.encode(x * scale) != 0)


def test_narrow_member_writes_only_its_active_latents(tmp_path):
    sae = make_sae("relu-l1", d_in=D, n_latents=8, n_members=2, widths=[3, 8]).eval()
    save_sae(sae, tmp_path, member=0)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["d_sae"] == 3 and cfg["architecture"] == "standard"
    x = torch.randn(64, D)
    torch.testing.assert_close(load_sae(tmp_path).sae(x), sae.select_members([0])(x))


def test_foreign_saelens_folder_without_decoder_bias_on_input(tmp_path):
    """SAELens 'standard' with apply_b_dec_to_input false: codes = relu(x W_enc + b_enc)."""
    generator = torch.Generator().manual_seed(3)
    W_enc, W_dec = torch.randn(D, 10, generator=generator), torch.randn(10, D, generator=generator)
    b_enc, b_dec = torch.randn(10, generator=generator), torch.randn(D, generator=generator)
    save_file(
        {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec},
        tmp_path / "sae_weights.safetensors",
    )
    (tmp_path / "cfg.json").write_text(
        json.dumps(
            {
                "architecture": "standard",
                "d_in": D,
                "d_sae": 10,
                "apply_b_dec_to_input": False,
                "normalize_activations": "none",
                "metadata": {"hook_name": "blocks.3.hook_resid_post"},
            }
        )
    )
    loaded = load_sae(tmp_path)
    x = torch.randn(128, D)
    torch.testing.assert_close(
        loaded.sae.encode(x)[0], torch.relu(x @ W_enc + b_enc), atol=1e-5, rtol=1e-5
    )
    assert loaded.source_format == "saelens"
    assert loaded.metadata["hook_name"] == "blocks.3.hook_resid_post"


def test_gemma_scope_npz_encodes_as_the_jumprelu_formula(tmp_path):
    rng = np.random.default_rng(0)
    d_sae = 24
    params = {
        "W_enc": rng.normal(size=(D, d_sae)).astype(np.float32),
        "W_dec": rng.normal(size=(d_sae, D)).astype(np.float32),
        "b_enc": rng.normal(size=d_sae).astype(np.float32),
        "b_dec": rng.normal(size=D).astype(np.float32),
        "threshold": rng.uniform(0.2, 1.5, size=d_sae).astype(np.float32),
    }
    np.savez(tmp_path / "params.npz", **params)
    sae = load_sae(tmp_path).sae
    x = rng.normal(size=(512, D)).astype(np.float32)
    pre = x @ params["W_enc"] + params["b_enc"]
    codes = np.maximum(pre, 0) * (pre > params["threshold"])
    ours = sae.encode(torch.from_numpy(x))[0].detach().numpy()
    # Equal away from the thresholds (the bias fold rounds differently in the last bit).
    away = np.abs(pre - params["threshold"]) > 1e-4
    np.testing.assert_allclose(ours[away], codes[away], atol=1e-4, rtol=1e-4)
    assert (codes > 0).mean() > 0.05 and (codes == 0).mean() > 0.05
    x_hat = codes @ params["W_dec"] + params["b_dec"]
    np.testing.assert_allclose(
        sae(torch.from_numpy(x))[0].detach().numpy()[away.all(1)],
        x_hat[away.all(1)],
        atol=1e-3,
        rtol=1e-4,
    )


def test_bad_paths_and_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="neither an SAE folder"):
        load_sae(tmp_path)
    np.savez(tmp_path / "params.npz", W_enc=np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="no threshold"):
        load_sae(tmp_path / "params.npz")
    sae = make_sae("relu-l1", d_in=D, n_latents=4)
    with torch.no_grad():
        sae.W_dec[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        save_sae(sae, tmp_path / "diverged")
