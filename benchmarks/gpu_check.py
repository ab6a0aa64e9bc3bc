"""GPU check (at most ~5 minutes on one GPU): CPU/GPU agreement, bf16 quality, GPU throughput.

1. Agreement: the same TopK SAE (seeded initialisation) trained for --agree-steps steps on the
   same batches, once on the CPU and once on the GPU, both fp32 with TF32 off. The codes of a
   held-out batch must agree: max |code difference| <= CODE_TOLERANCE x the largest code, and
   at least FIRING_AGREEMENT of the (sample, latent) firing decisions identical (a near-tie in the
   top-k can flip one latent for another; that is the only allowed difference).
2. Quality: bf16 autocast training (TrainConfig.precision, fp32 master weights) on the GPU
   reaches the fp32 GPU run's held-out explained variance within 0.01 (the issue's must-hold).
3. Throughput: tokens/s of our trainer on the GPU (16k latents, TopK k 32, d 640, batch 4096,
   fp32 and bf16), and of SAELens's SAETrainer + TopKTrainingSAE on the same GPU and data when
   sae_lens is importable in this interpreter (else that part is skipped with a message).

Without CUDA it says so and exits 0. Data: --acts (a safetensors file with tensor "acts", as
benchmarks/peers/tl_extract.py --save writes it), else synthetic sparse rows (d 640).

    .venv/bin/python benchmarks/gpu_check.py [--acts /tmp/gemma_l8_acts.safetensors]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as nnf

from llm.evaluate import reconstruction_metrics
from llm.training import normalisation_scale
from toymodels.sae import make_sae
from toymodels.train import TrainConfig, train

CODE_TOLERANCE = 1e-3
FIRING_AGREEMENT = 0.99
EV_TOLERANCE = 0.01


def activations(args: argparse.Namespace) -> torch.Tensor:
    """(N, D) float32 rows on the CPU, scaled to mean norm sqrt(D)."""
    if args.acts:
        from safetensors.torch import load_file

        acts_ND = load_file(args.acts)["acts"].float()
    else:
        generator = torch.Generator().manual_seed(args.seed)
        directions_FD = nnf.normalize(torch.randn(8192, 640, generator=generator), dim=-1)
        features_NK = torch.randint(0, 8192, (args.rows, 32), generator=generator)
        magnitudes_NK = torch.rand(args.rows, 32, generator=generator)
        acts_ND = nnf.embedding_bag(
            features_NK, directions_FD, per_sample_weights=magnitudes_NK, mode="sum"
        )
    return acts_ND * normalisation_scale(acts_ND[:4096])


def batches(rows_ND: torch.Tensor, seed: int):
    """data(batch): rows drawn with a seeded generator of the rows' device (same on any device
    for the same rows, as the generator runs on the CPU)."""
    generator = torch.Generator().manual_seed(seed)

    def data(batch: int) -> torch.Tensor:
        return rows_ND[
            torch.randint(0, len(rows_ND), (batch,), generator=generator).to(rows_ND.device)
        ]

    return data


def trained_sae(args, rows_ND, device, precision, steps, batch):
    sae = make_sae(
        "topk",
        d_in=rows_ND.shape[1],
        n_latents=args.width,
        k=args.k,
        generator=torch.Generator().manual_seed(args.seed),
    )
    sae.init_b_dec(rows_ND[:4096].cpu())
    rows = rows_ND.to(device)
    start = time.perf_counter()
    train(
        sae,
        batches(rows, args.seed),
        TrainConfig(
            samples=steps * batch,
            batch_size=batch,
            lr=args.lr,
            decay_fraction=0.0,
            seed=args.seed,
            device=device,
            precision=precision,
            progress=False,
            log_every=10**9,
        ),
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return sae, time.perf_counter() - start


def agreement(args, train_ND, held_out_ND) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu, _ = trained_sae(args, train_ND, "cpu", "fp32", args.agree_steps, args.agree_batch)
    gpu, _ = trained_sae(args, train_ND, args.device, "fp32", args.agree_steps, args.agree_batch)
    x_BD = held_out_ND[: args.agree_batch]
    with torch.no_grad():
        codes_cpu = cpu.eval().encode(x_BD)[0]
        codes_gpu = gpu.eval().encode(x_BD.to(args.device))[0].cpu()
        decoder_difference = (cpu.W_dec - gpu.W_dec.cpu()).abs().max() / cpu.W_dec.abs().max()
    relative = float((codes_cpu - codes_gpu).abs().max() / codes_cpu.abs().max())
    same_firing = float(((codes_cpu != 0) == (codes_gpu != 0)).double().mean())
    return {
        "steps": args.agree_steps,
        "max_code_difference_relative": relative,
        "firing_decisions_identical": same_firing,
        "max_decoder_difference_relative": float(decoder_difference),
        "tolerance": {"code_relative": CODE_TOLERANCE, "firing_identical": FIRING_AGREEMENT},
        "holds": relative <= CODE_TOLERANCE and same_firing >= FIRING_AGREEMENT,
    }


def ours_on_gpu(args, train_ND, held_out_ND) -> dict:
    # The GPU's fast fp32 path; SAELens, run after in this process, gets the same setting.
    torch.backends.cuda.matmul.allow_tf32 = True
    result = {}
    for precision in ("fp32", "bf16"):
        trained_sae(args, train_ND, args.device, precision, 5, args.batch)  # warm-up: kernels
        sae, seconds = trained_sae(args, train_ND, args.device, precision, args.steps, args.batch)
        quality = reconstruction_metrics(sae, held_out_ND)[0]
        result[precision] = {
            "tokens_per_s": args.steps * args.batch / seconds,
            "seconds": seconds,
            "explained_variance": quality["explained_variance"],
            "l0": quality["l0"],
        }
    difference = abs(result["bf16"]["explained_variance"] - result["fp32"]["explained_variance"])
    result["bf16_ev_within_tolerance"] = difference <= EV_TOLERANCE
    result["bf16_speedup"] = result["bf16"]["tokens_per_s"] / result["fp32"]["tokens_per_s"]
    return result


def saelens_on_gpu(args, train_ND) -> dict:
    try:
        from sae_lens import LoggingConfig, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.config import SAETrainerConfig
    except ImportError as error:
        return {"skipped": f"sae_lens is not importable here ({error}); no peer figure"}
    rows = train_ND.to(args.device)
    data = batches(rows, args.seed)

    def provider():
        while True:
            yield data(args.batch)

    def fit(steps: int) -> float:
        sae = TopKTrainingSAE(
            TopKTrainingSAEConfig(
                d_in=rows.shape[1], d_sae=args.width, k=args.k, device=args.device
            )
        )
        trainer = SAETrainer(
            cfg=SAETrainerConfig(
                total_training_samples=steps * args.batch,
                train_batch_size_samples=args.batch,
                lr=args.lr,
                lr_end=args.lr,
                device=args.device,
                logger=LoggingConfig(log_to_wandb=False),
            ),
            sae=sae,
            data_provider=provider(),
        )
        start = time.perf_counter()
        trainer.fit()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    fit(5)  # warm-up
    seconds = fit(args.steps)
    return {"tokens_per_s": args.steps * args.batch / seconds, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acts", help="safetensors file with tensor 'acts' (default: synthetic)")
    parser.add_argument("--rows", type=int, default=65_536, help="synthetic rows")
    parser.add_argument("--width", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per GPU run")
    parser.add_argument("--agree-steps", type=int, default=10)
    parser.add_argument("--agree-batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-rows", type=int, default=4096)
    parser.add_argument(
        "--device",
        default="cuda",
        help="the device checked against the CPU (cpu: a dry run of this script's code paths)",
    )
    args = parser.parse_args()
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv])}
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        report["cuda"] = False
        report["message"] = "no CUDA device here: nothing checked (run this on a GPU machine)"
        print(json.dumps(report, indent=1))
        return
    report["device"] = (
        torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else args.device
    )
    acts_ND = activations(args)
    train_ND, held_out_ND = acts_ND[: -args.eval_rows], acts_ND[-args.eval_rows :]
    report["agreement"] = agreement(args, train_ND, held_out_ND)
    report["ours"] = ours_on_gpu(args, train_ND, held_out_ND)
    report["saelens"] = saelens_on_gpu(args, train_ND)
    if "tokens_per_s" in report["saelens"]:
        report["ours_fp32_vs_saelens"] = (
            report["ours"]["fp32"]["tokens_per_s"] / report["saelens"]["tokens_per_s"]
        )
    print(json.dumps(report, indent=1))
    if not (report["agreement"]["holds"] and report["ours"]["bf16_ev_within_tolerance"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
