"""Check that SAELens reads the SAE files we write: same codes and reconstructions.

Run with the toolkit's environment; it writes one trained-looking SAE per architecture with
llm.saefiles.save_sae, computes our codes on random inputs, then runs itself under
.peer-venv/bin/python (SAELens 6) with --peer, where `sae_lens.SAE.load_from_disk` loads each
folder and encodes the same inputs. Prints one JSON object: per architecture the SAELens class,
the largest code and reconstruction differences, and whether the firing patterns agree.

    .venv/bin/python benchmarks/check_saelens_load.py
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / ".peer-venv" / "bin" / "python"
D_IN, WIDTH = 64, 256
ARCHITECTURES = {
    "relu-l1": {"l1": 1e-2},
    "topk": {"k": 8},
    "batchtopk": {"k": 8},
    "jumprelu": {},
    "matryoshka": {"levels": [32, WIDTH], "mu": 0.5, "k": 8},
}


def write_ours(folder: Path) -> None:
    from llm.saefiles import save_sae
    from toymodels.sae import make_sae

    generator = torch.Generator().manual_seed(0)
    x_ND = torch.randn(2048, D_IN, generator=generator) * 3
    results = {}
    for architecture, config in ARCHITECTURES.items():
        sae = make_sae(architecture, d_in=D_IN, n_latents=WIDTH, generator=generator, **config)
        with torch.no_grad():  # generic parameters, as after training: nothing unit-norm
            for parameter in sae.parameters():
                parameter.mul_(1 + torch.rand(parameter.shape, generator=generator))
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
            if architecture == "jumprelu":
                sae.log_threshold.fill_(-1.0)
            if architecture in ("batchtopk", "matryoshka"):
                sae.contribution_threshold.fill_(0.3)
        save_sae(
            sae,
            folder / architecture,
            input_scale=1.7,
            metadata={"model_name": "check", "hook_name": "blocks.0.hook_resid_post"},
        )
        from llm.saefiles import load_sae

        ours = load_sae(folder / architecture).sae
        with torch.no_grad():
            codes = ours.encode(x_ND)[0]
            results[architecture] = {"codes": codes, "x_hat": ours.decode(codes[None])[0]}
    torch.save({"x": x_ND, "ours": results}, folder / "ours.pt")


def peer(folder: Path) -> dict:
    from sae_lens import SAE

    data = torch.load(folder / "ours.pt")
    report = {}
    for architecture, ours in data["ours"].items():
        sae = SAE.load_from_disk(folder / architecture)
        with torch.no_grad():
            codes = sae.encode(data["x"])
            x_hat = sae.decode(codes)
        report[architecture] = {
            "saelens_class": type(sae).__name__,
            "max_code_difference": float((codes - ours["codes"]).abs().max()),
            "max_reconstruction_difference": float((x_hat - ours["x_hat"]).abs().max()),
            "firing_patterns_differ": int(((codes != 0) != (ours["codes"] != 0)).sum()),
            "mean_l0": float((codes != 0).sum(-1).float().mean()),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", help="(internal) folder to check with SAELens")
    args = parser.parse_args()
    if args.peer:
        print(json.dumps(peer(Path(args.peer))))
        return
    if not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON} is missing: build it with bash benchmarks/peer_env.sh")
    with tempfile.TemporaryDirectory() as tmp:
        write_ours(Path(tmp))
        result = subprocess.run(
            [str(PEER_PYTHON), __file__, "--peer", tmp], capture_output=True, text=True, check=True
        )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        json.dumps(
            {
                "check": "SAELens SAE.load_from_disk reads our files",
                "d_in": D_IN,
                "width": WIDTH,
                "inputs": 2048,
                "architectures": report,
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
