"""SAE files: one SAE (a stack member) saved in the SAELens layout and loaded back, plus loading
of SAELens-layout folders written by others and Gemma Scope `params.npz` files.

A folder holds `cfg.json` and `sae_weights.safetensors` with W_enc (d_in, d_sae), b_enc (d_sae,),
W_dec (d_sae, d_in), b_dec (d_in,) and, for JumpReLU-style inference, threshold (d_sae,), exactly
as SAELens 6 writes them, so `sae_lens.SAE.load_from_disk(folder)` reads our SAEs. The file holds
the SAE with unit-norm decoder rows (decoder norms folded into the encoder, the convention
SAELens and SAEBench expect) and with any training-time input scaling folded back, so it takes
raw activations. cfg.json also carries the key "sae_hedging" with our full configuration, from
which our loader rebuilds the same architecture (a BatchTopK SAE is a JumpReLU SAE to SAELens,
but comes back as BatchTopK here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from toymodels.runs import atomic_write_bytes, atomic_write_json, named_artefact
from toymodels.sae import SAE, make_sae
from toymodels.sae.jumprelu import set_thresholds

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
GEMMA_SCOPE_FILE = "params.npz"
OUR_KEY = "sae_hedging"
OUR_FORMAT = "sae-hedging-sae/1"
# The SAELens config format the files follow (a version >= 6 tells SAELens not to convert).
SAELENS_FORMAT_VERSION = "6.0.0"


@dataclass
class SAEFile:
    """An SAE read from disk (one member, M = 1, in eval mode) and what its file says about it."""

    sae: SAE
    source_format: str  # "sae-hedging", "saelens" or "gemma-scope"
    metadata: dict[str, Any] = field(default_factory=dict)  # model_name, hook_name, ...


def save_sae(
    sae: SAE,
    folder: str | Path,
    member: int = 0,
    *,
    input_scale: float = 1.0,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write member `member` of `sae` to `folder` (SAELens layout); returns the folder.

    input_scale: the factor the SAE's training inputs were multiplied by (activation
    normalisation); it is folded back so the file takes raw activations.
    metadata: model_name, hook_name, hook_layer, context_size, ... (SAELens metadata keys) and
    anything else worth keeping, e.g. model_quantization.
    Only the member's active latents are written. Files are written atomically.
    """
    one = sae.select_members([member]).to("cpu", torch.float32).eval()
    for name, parameter in one.named_parameters():
        if not bool(torch.isfinite(parameter).all()):
            raise ValueError(f"SAE parameter {name} holds NaN or infinity; training diverged")
    active = one.latent_mask[0]
    config = one.full_config()
    if not bool(active.all()):
        if config["architecture"] == "matryoshka":
            raise ValueError(
                "a matryoshka member with masked latents cannot be written: its "
                "levels would no longer match"
            )
        config.update(n_latents=int(active.sum()), widths=[int(active.sum())])
    one.fold_input_scale(input_scale)
    one.fold_decoder_norms()
    extras = one.saelens_extras()
    tensors = {
        "W_enc": one.W_enc[0][:, active],
        "b_enc": one.b_enc[0][active],
        "W_dec": one.W_dec[0][active],
        "b_dec": one.b_dec[0],
        **{name: tensor[active] for name, tensor in extras.tensors.items()},
    }
    cfg = {
        "architecture": one.saelens_architecture,
        "d_in": one.d_in,
        "d_sae": int(active.sum()),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": None,
            **(metadata or {}),
        },
        **extras.cfg,
        OUR_KEY: {"format": OUR_FORMAT, "config": config, **extras.ours},
    }
    folder = Path(folder)
    data = save_safetensors({name: t.detach().contiguous() for name, t in tensors.items()})
    atomic_write_bytes(folder / WEIGHTS_FILE, data)
    atomic_write_json(folder / CFG_FILE, cfg)
    return folder


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> SAEFile:
    """Load an SAE folder we wrote, a SAELens-layout folder, a Gemma Scope params.npz (the
    file or its folder), or the SAE of an `llm train` run folder, as an M = 1 SAE of our
    family, in eval mode."""
    path = named_artefact(path, "sae") or Path(path)
    if path.is_file() and path.suffix == ".npz":
        loaded = _load_gemma_scope(path)
    elif (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        loaded = _load_saelens_layout(path)
    elif (path / GEMMA_SCOPE_FILE).is_file():
        loaded = _load_gemma_scope(path / GEMMA_SCOPE_FILE)
    else:
        raise ValueError(
            f"{path} is neither an SAE folder ({CFG_FILE} + {WEIGHTS_FILE}) nor a "
            f"Gemma Scope {GEMMA_SCOPE_FILE}"
        )
    loaded.sae.to(device).eval()
    return loaded


def _fill(
    sae: SAE,
    W_enc_DF: torch.Tensor,
    b_enc_F: torch.Tensor,
    W_dec_FD: torch.Tensor,
    b_dec_D: torch.Tensor,
) -> None:
    with torch.no_grad():
        sae.W_enc[0] = W_enc_DF
        sae.b_enc[0] = b_enc_F
        sae.W_dec[0] = W_dec_FD
        sae.b_dec[0] = b_dec_D


def _check_shapes(tensors: dict[str, torch.Tensor], d_in: int, d_sae: int, where: Path) -> None:
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if "threshold" in tensors:
        expected["threshold"] = (d_sae,)
    for name, shape in expected.items():
        if name not in tensors:
            raise ValueError(f"{where} has no tensor {name!r}; found {sorted(tensors)}")
        if tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"{where}: {name} has shape {tuple(tensors[name].shape)}, expected {shape}"
            )


def _jumprelu_from(tensors: dict[str, torch.Tensor], d_in: int, d_sae: int) -> SAE:
    """Our JumpReLU SAE with the file's thresholds."""
    sae = make_sae("jumprelu", d_in=d_in, n_latents=d_sae)
    set_thresholds(sae, tensors["threshold"])
    return sae


def _load_saelens_layout(folder: Path) -> SAEFile:
    cfg = json.loads((folder / CFG_FILE).read_text())
    tensors = {
        name: t.float()
        for name, t in load_safetensors((folder / WEIGHTS_FILE).read_bytes()).items()
    }
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    _check_shapes(tensors, d_in, d_sae, folder / WEIGHTS_FILE)
    metadata = dict(cfg.get("metadata") or {})
    for key in ("model_name", "hook_name", "hook_layer", "context_size"):  # SAELens < 6 keys
        if key in cfg and key not in metadata:
            metadata[key] = cfg[key]
    ours = cfg.get(OUR_KEY)
    if ours is not None and ours.get("format") == OUR_FORMAT:
        sae = make_sae(**ours["config"])
        _fill(sae, tensors["W_enc"], tensors["b_enc"], tensors["W_dec"], tensors["b_dec"])
        with torch.no_grad():
            sae.load_saelens_extras(tensors, ours)
        return SAEFile(sae, "sae-hedging", metadata)

    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(
            f"{folder}: normalize_activations {cfg['normalize_activations']!r} "
            "needs a scaling factor the folder does not hold; allowed: none"
        )
    architecture = cfg.get("architecture", "standard")
    if architecture == "standard":
        sae = make_sae(
            "relu-l1", d_in=d_in, n_latents=d_sae, l1=float(cfg.get("l1_coefficient", 0.0))
        )
    elif architecture == "topk":
        sae = make_sae("topk", d_in=d_in, n_latents=d_sae, k=int(cfg["k"]))
    elif architecture == "jumprelu":
        sae = _jumprelu_from(tensors, d_in, d_sae)
    else:
        raise ValueError(
            f"{folder}: SAELens architecture {architecture!r} is not supported; "
            "allowed: standard, topk, jumprelu"
        )
    b_enc = tensors["b_enc"]
    if not cfg.get("apply_b_dec_to_input", True):
        # Ours always encodes x - b_dec; x W_enc + b = (x - b_dec) W_enc + (b + b_dec W_enc).
        b_enc = b_enc + tensors["b_dec"] @ tensors["W_enc"]
    _fill(sae, tensors["W_enc"], b_enc, tensors["W_dec"], tensors["b_dec"])
    if architecture == "topk":
        norms = tensors["W_dec"].norm(dim=-1)
        if cfg.get("rescale_acts_by_decoder_norm", False):
            # SAELens ranks and outputs pre * ||W_dec||: our folded SAE computes exactly that.
            sae.fold_decoder_norms()
        elif not torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
            raise ValueError(
                f"{folder}: a TopK SAE that ranks raw pre-activations needs "
                "unit-norm decoder rows to be represented here"
            )
    return SAEFile(sae, "saelens", metadata)


def _load_gemma_scope(path: Path) -> SAEFile:
    """Gemma Scope JumpReLU: codes = ReLU(pre) * (pre > threshold), pre = x W_enc + b_enc (no
    decoder bias subtracted from the input), x_hat = codes W_dec + b_dec."""
    with np.load(path) as data:
        tensors = {
            ("W_" + key[2:] if key.startswith("w_") else key): torch.from_numpy(
                np.asarray(data[key], dtype=np.float32)
            )
            for key in data
        }
    if "W_enc" not in tensors or tensors["W_enc"].ndim != 2:
        raise ValueError(f"{path} has no 2-D W_enc; found {sorted(tensors)}")
    d_in, d_sae = tensors["W_enc"].shape
    if "threshold" not in tensors:
        raise ValueError(f"{path} has no threshold: not a Gemma Scope JumpReLU SAE")
    _check_shapes(tensors, d_in, d_sae, path)
    sae = _jumprelu_from(tensors, d_in, d_sae)
    b_enc = tensors["b_enc"] + tensors["b_dec"] @ tensors["W_enc"]
    _fill(sae, tensors["W_enc"], b_enc, tensors["W_dec"], tensors["b_dec"])
    return SAEFile(sae, "gemma-scope", {"source_file": str(path)})


def saelens_hook_name(layer: int, hook: str) -> str:
    """TransformerLens's name for our hook point (what SAELens records as hook_name)."""
    names = {
        "resid_pre": "hook_resid_pre",
        "resid_post": "hook_resid_post",
        "attn_out": "hook_attn_out",
        "mlp_out": "hook_mlp_out",
    }
    if hook not in names:
        raise ValueError(f"unknown hook point {hook!r}; allowed: {', '.join(names)}")
    return f"blocks.{layer}.{names[hook]}"
