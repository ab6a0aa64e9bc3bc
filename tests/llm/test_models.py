"""Model loading and the truncated forward, against the full transformers forward."""

import hashlib
import json

import pytest
import torch

from llm.models import HOOKS, OFFLINE_MODELS, _verify_folder, activations, load_model
from tests.llm.tiny_models import save_tiny_model


@pytest.fixture(scope="module", params=["gemma3", "llama"])
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return load_model(str(save_tiny_model(folder, request.param)), device="cpu")


def _inputs(n_rows=3, n_positions=11, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids_BT = torch.randint(4, 60, (n_rows, n_positions), generator=generator)
    input_ids_BT[:, 0] = 2  # BOS
    attention_mask_BT = torch.ones_like(input_ids_BT)
    attention_mask_BT[-1, -4:] = 0  # a right-padded row: padding must not change the others
    return input_ids_BT, attention_mask_BT


def _full_hidden_states(loaded, input_ids_BT, attention_mask_BT):
    with torch.no_grad():
        out = loaded.model(
            input_ids=input_ids_BT, attention_mask=attention_mask_BT, output_hidden_states=True
        )
    return out.hidden_states


def test_truncated_forward_equals_full_hidden_states(tiny):
    input_ids_BT, attention_mask_BT = _inputs()
    hidden = _full_hidden_states(tiny, input_ids_BT, attention_mask_BT)
    real_BT = attention_mask_BT.bool()
    # The last hidden state carries the final norm, so compare layers below the last one.
    for layer in range(tiny.n_layers - 1):
        post_BTD = activations(tiny, input_ids_BT, attention_mask_BT, layer, "resid_post")
        pre_BTD = activations(tiny, input_ids_BT, attention_mask_BT, layer, "resid_pre")
        torch.testing.assert_close(post_BTD[real_BT], hidden[layer + 1][real_BT])
        torch.testing.assert_close(pre_BTD[real_BT], hidden[layer][real_BT])


def test_sublayer_outputs_add_up_to_the_residual_stream(tiny):
    input_ids_BT, attention_mask_BT = _inputs(seed=1)
    for layer in range(tiny.n_layers):
        parts = {h: activations(tiny, input_ids_BT, attention_mask_BT, layer, h) for h in HOOKS}
        assert parts["attn_out"].abs().max() > 0 and parts["mlp_out"].abs().max() > 0
        torch.testing.assert_close(
            parts["resid_pre"] + parts["attn_out"] + parts["mlp_out"], parts["resid_post"]
        )


def test_truncated_forward_runs_no_layer_above_and_no_unembedding(tiny):
    calls = []
    handles = [
        module.register_forward_hook(lambda *args, name=name: calls.append(name))
        for name, module in [("lm_head", tiny.model.lm_head)]
        + [(f"layer{i}", block) for i, block in enumerate(tiny.layers)]
    ]
    try:
        activations(tiny, *_inputs(), layer=0, hook="mlp_out")
        activations(tiny, *_inputs(), layer=1, hook="resid_post")
    finally:
        for handle in handles:
            handle.remove()
    # Layer 0 stops inside its MLP, so no block hook fires there; layer 1's stop fires at its end.
    assert calls == ["layer0", "layer1"]


def test_bad_layer_and_hook_are_refused_with_the_allowed_values(tiny):
    input_ids_BT, attention_mask_BT = _inputs()
    with pytest.raises(ValueError, match=r"layer 3 is out of range; allowed: 0\.\.2"):
        activations(tiny, input_ids_BT, attention_mask_BT, 3)
    with pytest.raises(ValueError, match="layer -1"):
        activations(tiny, input_ids_BT, attention_mask_BT, -1)
    with pytest.raises(ValueError, match="'resid_mod'.*resid_pre, attn_out, mlp_out, resid_post"):
        activations(tiny, input_ids_BT, attention_mask_BT, 0, "resid_mod")


def test_bfloat16_load_matches_float32_within_bfloat16_tolerance(tiny, tmp_path):
    folder = tmp_path / "model"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    half = load_model(str(folder), device="cpu", dtype="bfloat16")
    assert half.dtype == torch.bfloat16 and next(half.model.parameters()).dtype == torch.bfloat16
    input_ids_BT, attention_mask_BT = _inputs()
    full_BTD = activations(tiny, input_ids_BT, attention_mask_BT, 1)
    half_BTD = activations(half, input_ids_BT, attention_mask_BT, 1)
    assert half_BTD.dtype == torch.bfloat16
    torch.testing.assert_close(half_BTD.float(), full_BTD, rtol=0.05, atol=0.05)


def test_unloadable_names_and_bad_dtypes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot load .*offline models: gemma3-270m, smollm2"):
        load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(ValueError, match="dtype 'float64'.*float32, bfloat16, float16"):
        load_model("gemma3-270m", dtype="float64")
    assert set(OFFLINE_MODELS) == {"gemma3-270m", "smollm2-135m"}


def test_model_cache_verification_names_a_corrupt_or_missing_file(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    (folder / "complete.json").write_text(json.dumps({"files": {"model.safetensors": digest}}))
    _verify_folder(folder)
    (folder / "model.safetensors").write_bytes(b"weightz")
    with pytest.raises(ValueError, match="model.safetensors is missing or corrupt"):
        _verify_folder(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="model.safetensors is missing or corrupt"):
        _verify_folder(folder)
    (folder / "complete.json").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        _verify_folder(folder)
