"""Peer figure: tokens per second of SAELens training a TopK SAE on cached activations, on CPU.

Reads a safetensors file with one tensor "acts" of shape (rows, d_model), keeps the last
--eval-tokens rows aside, and trains a SAELens TopKTrainingSAE on the others (reshuffled on each
pass) for --tokens tokens with SAELens's own SAETrainer (the loop its LLM runner and toy trainer
use), fed by an iterator over the in-memory tensor: nothing of SAELens's loop is replaced.
SAELens's defaults throughout (lr 3e-4, Adam, no input normalization); --normalize
expected_average_only_in scales inputs to mean norm sqrt(d_in), estimated inside the timed fit()
and folded back into the weights afterwards.
Prints {"tokens_per_s", "explained_variance", "l0", ...}; the quality figures are measured on the
held-out rows. (SAELens's use_sparse_activations option is left off: with torch 2.13 on CPU its
backward pass fails, "Could not run 'aten::view' with arguments from the 'SparseCPU' backend".)
"""

import argparse
from collections.abc import Iterator

import torch
from common import report, stopwatch
from sae_lens import LoggingConfig, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import SAETrainerConfig
from safetensors.torch import load_file


def split_rows(path: str, eval_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = load_file(path)
    if "acts" not in tensors or tensors["acts"].ndim != 2:
        raise ValueError(f"{path} needs a tensor 'acts' of shape (tokens, d_model)")
    acts_ND = tensors["acts"].float()
    if not 0 < eval_tokens < acts_ND.shape[0]:
        raise ValueError(
            f"--eval-tokens {eval_tokens} must be between 1 and {acts_ND.shape[0] - 1} "
            f"(the file holds {acts_ND.shape[0]} rows)"
        )
    return acts_ND[:-eval_tokens], acts_ND[-eval_tokens:]


def shuffled_batches(acts_ND: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Batches of rows, reshuffled on every pass; a pass's last partial batch is dropped."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(acts_ND.shape[0], generator=generator)
        for start in range(0, len(order) - batch + 1, batch):
            yield acts_ND[order[start : start + batch]]


@torch.no_grad()
def held_out_quality(sae: TopKTrainingSAE, acts_ND: torch.Tensor) -> dict:
    sae.eval()
    codes_NF = sae.encode(acts_ND)
    recon_ND = sae.decode(codes_NF)
    residual_energy = (acts_ND - recon_ND).pow(2).sum()
    total_energy = (acts_ND - acts_ND.mean(0)).pow(2).sum()
    return {
        "explained_variance": (1 - residual_energy / total_energy).item(),
        "l0": (codes_NF != 0).sum(-1).float().mean().item(),
    }


def measure(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    train_ND, held_out_ND = split_rows(args.acts, args.eval_tokens)
    if args.batch > train_ND.shape[0]:
        raise ValueError(f"--batch {args.batch} exceeds the {train_ND.shape[0]} training rows")
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=train_ND.shape[1],
            d_sae=args.width,
            k=args.k,
            normalize_activations=args.normalize,
        )
    )
    trainer = SAETrainer(
        cfg=SAETrainerConfig(
            total_training_samples=args.tokens,
            train_batch_size_samples=args.batch,
            lr=args.lr,
            lr_end=args.lr,  # constant schedule; SAETrainer needs lr_end set explicitly
            device="cpu",
            logger=LoggingConfig(log_to_wandb=False),
            # The norm estimate draws this many batches; one pass over the rows is enough.
            n_batches_for_norm_estimate=min(1000, train_ND.shape[0] // args.batch),
        ),
        sae=sae,
        data_provider=shuffled_batches(train_ND, args.batch, args.seed),
    )
    with stopwatch() as timing:
        trainer.fit()
    return {
        "peer": "sae_lens.SAETrainer + TopKTrainingSAE",
        "tokens_per_s": trainer.n_training_samples / timing["seconds"],
        **held_out_quality(sae, held_out_ND),
        "tokens": trainer.n_training_samples,
        "seconds": timing["seconds"],
        "width": args.width,
        "k": args.k,
        "normalize_activations": args.normalize,
        "d_in": train_ND.shape[1],
        "batch": args.batch,
        "train_rows": train_ND.shape[0],
        "held_out_rows": held_out_ND.shape[0],
        "threads": args.threads,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acts", required=True, help="safetensors file with tensor 'acts'")
    parser.add_argument("--width", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--tokens", type=int, required=True, help="training tokens")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--eval-tokens", type=int, default=4096, help="held-out rows (the last)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument(
        "--normalize",
        choices=["none", "expected_average_only_in"],
        default="none",
        help="SAELens normalize_activations",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    report(lambda: measure(arguments), arguments.threads)
