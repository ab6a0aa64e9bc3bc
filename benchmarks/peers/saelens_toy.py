"""Peer figure: SAE-samples per second of SAELens's toy trainer on a two-feature hierarchical world.

The world is the hedging paper's hierarchical scenario: a parent fires with probability 0.25 and a
child with probability 0.2 given the parent (never without it), magnitude 1, each feature a unit
direction in d_in dimensions (SAELens FeatureDictionary, orthogonalised). N standard ReLU + L1
SAEs are trained one after another with sae_lens.synthetic.train_toy_sae, their widths cycling
through --widths. Prints {"samples_per_s", "n_saes", "seconds", ...}; run it with
.peer-venv/bin/python (see benchmarks/README.md).
"""

import argparse

import torch
from common import report, stopwatch
from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.synthetic import (
    ActivationGenerator,
    FeatureDictionary,
    HierarchyNode,
    hierarchy_modifier,
    train_toy_sae,
)

P_PARENT, P_CHILD_GIVEN_PARENT = 0.25, 0.2


def hierarchical_world(d_in: int, seed: int) -> tuple[FeatureDictionary, ActivationGenerator]:
    features = FeatureDictionary(num_features=2, hidden_dim=d_in, seed=seed)
    child_needs_parent = hierarchy_modifier(HierarchyNode(0, children=[HierarchyNode(1)]))
    firing = ActivationGenerator(
        num_features=2,
        firing_probabilities=torch.tensor([P_PARENT, P_CHILD_GIVEN_PARENT]),
        modify_activations=child_needs_parent,
    )
    return features, firing


def measure(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    features, firing = hierarchical_world(args.d_in, args.seed)
    # Untimed warm-up: one-time costs (lazy imports such as torch._dynamo, seconds) per process.
    warm_up = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=args.d_in, d_sae=1))
    train_toy_sae(warm_up, features, firing, training_samples=args.batch, batch_size=args.batch)
    seconds = 0.0
    for index in range(args.n_saes):
        width = args.widths[index % len(args.widths)]
        sae = StandardTrainingSAE(
            StandardTrainingSAEConfig(d_in=args.d_in, d_sae=width, l1_coefficient=args.l1)
        )
        with stopwatch() as timing:
            train_toy_sae(
                sae,
                features,
                firing,
                training_samples=args.samples,
                batch_size=args.batch,
                lr=args.lr,
            )
        seconds += timing["seconds"]
    return {
        "peer": "sae_lens.synthetic.train_toy_sae",
        "samples_per_s": args.n_saes * args.samples / seconds,
        "n_saes": args.n_saes,
        "samples_per_sae": args.samples,
        "widths": args.widths,
        "d_in": args.d_in,
        "batch": args.batch,
        "seconds": seconds,
        "threads": args.threads,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-saes", type=int, default=4)
    parser.add_argument("--samples", type=int, default=1_000_000, help="samples per SAE")
    parser.add_argument("--d-in", type=int, default=50)
    parser.add_argument(
        "--widths",
        type=lambda s: [int(w) for w in s.split(",")],
        default=[1, 2, 3, 4],
        help="comma-separated SAE widths, cycled over the N SAEs",
    )
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--l1", type=float, default=0.01, help="SAELens l1_coefficient")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    report(lambda: measure(arguments), arguments.threads)
