"""Model loading and the truncated forward, against the full transformers forward."""

import hashlib
import json
import socket

import huggingface_hub
import pytest
import torch
import transformers

import llm.models
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


EMBEDDED = "offline models: gemma3-270m, smollm2-135m"


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty local Hugging Face cache, and any attempt to read a model from the hub fails."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("load_model went to the hub")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_network)
    return tmp_path


@pytest.mark.parametrize(
    "name, offline, reason",
    [
        ("{tmp}/no-such-model", None, "no such folder, and not a Hugging Face model id"),
        ("{tmp}/weights.gguf", None, "weights.gguf is a file, not a model folder"),
        ("someorg/some-model", "HF_HUB_OFFLINE", "not in the local Hugging Face cache, and HF_HUB"),
        ("gpt2", "TRANSFORMERS_OFFLINE", "and TRANSFORMERS_OFFLINE is set"),
        ("someorg/some-model", "unreachable", "and huggingface.co:443 is unreachable"),
    ],
)
def test_names_found_nowhere_fail_at_once_naming_the_embedded_models(
    no_hub, monkeypatch, name, offline, reason
):
    (no_hub / "weights.gguf").write_bytes(b"GGUF")
    if offline == "unreachable":
        monkeypatch.setattr(
            llm.models, "_unreachable", lambda url: "huggingface.co:443 is unreachable (no route)"
        )
    elif offline is not None:
        monkeypatch.setenv(offline, "1")
    name = name.format(tmp=no_hub)
    with pytest.raises(ValueError) as refused:
        load_model(name, device="cpu")
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"cannot load model {name!r} (")
    assert reason in message and EMBEDDED in message


def test_an_id_in_the_local_hugging_face_cache_loads_with_the_hub_offline(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "hub" / "models--someorg--tiny-llama"
    save_tiny_model(repo / "snapshots" / "0123abcd", "llama", n_layers=2)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    loaded = load_model("someorg/tiny-llama", device="cpu")
    assert (loaded.name, loaded.n_layers, loaded.d_model) == ("someorg/tiny-llama", 2, 32)


def test_the_hub_probe_tells_a_closed_port_from_an_open_one():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        open_port = listening.getsockname()[1]
        assert llm.models._unreachable(f"http://127.0.0.1:{open_port}") is None
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]  # bound, never listening: connections are refused
        assert llm.models._unreachable(f"https://127.0.0.1:{closed_port}").startswith(
            f"127.0.0.1:{closed_port} is unreachable (ConnectionRefusedError"
        )


@pytest.mark.parametrize(
    "device, refusal",
    [("cuda", "device 'cuda' is not available on this machine"), ("foo", "device 'foo' is not")],
)
def test_unusable_devices_and_bad_dtypes_are_refused_before_loading(
    no_hub, monkeypatch, device, refusal
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=refusal):
        load_model(str(no_hub), device=device)
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
