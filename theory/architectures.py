"""One entry per SAE architecture: its codes, exact loss and exact optimum on a feature model.

ReLU-L1 lives in theory.sae and theory.optimum; TopK, BatchTopK (expected training loss) and
JumpReLU in one module each, built on theory.gated; matryoshka (ReLU-L1 latents, nested levels)
in theory.matryoshka on theory.optimum's search.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from theory.features import FeatureModel, NumericFeatureModel
from theory.sae import SAEParams, SAESpec, codes, expected_loss

if TYPE_CHECKING:  # theory.optimum dispatches here, so it is imported when needed
    from theory.optimum import Optimum


def architecture_codes(world: NumericFeatureModel, params: SAEParams, spec: SAESpec) -> np.ndarray:
    """(S, width) codes of `spec`'s architecture on every state (BatchTopK: expected codes)."""
    if spec.architecture == "topk":
        from theory.topk import topk_codes

        return topk_codes(world, params, spec.k)
    if spec.architecture == "batchtopk":
        from theory.batchtopk import batchtopk_codes

        return batchtopk_codes(world, params, spec.k)
    if spec.architecture == "jumprelu":
        from theory.jumprelu import jumprelu_codes

        return jumprelu_codes(world, params)
    return codes(world, params)


def architecture_loss(world: NumericFeatureModel, params: SAEParams, spec: SAESpec) -> float:
    """Exact expected loss of `params` under `spec`'s architecture and hyperparameter."""
    if spec.architecture == "topk":
        from theory.topk import topk_loss

        return topk_loss(world, params, spec.k)
    if spec.architecture == "batchtopk":
        from theory.batchtopk import batchtopk_loss

        return batchtopk_loss(world, params, spec.k)
    if spec.architecture == "jumprelu":
        from theory.jumprelu import jumprelu_loss

        return jumprelu_loss(world, params, float(spec.l0))
    return float(expected_loss(world, params, float(spec.l1), spec.loss_levels()))


def architecture_optimum(
    model: FeatureModel | NumericFeatureModel, spec: SAESpec, seed: int = 0
) -> Optimum:
    """The exact optimum of `spec` on `model`, whatever its architecture."""
    if spec.architecture == "topk":
        from theory.topk import topk_optimum

        return topk_optimum(model, spec, seed)
    if spec.architecture == "batchtopk":
        from theory.batchtopk import batchtopk_optimum

        return batchtopk_optimum(model, spec, seed)
    if spec.architecture == "jumprelu":
        from theory.jumprelu import jumprelu_optimum

        return jumprelu_optimum(model, spec, seed)
    if spec.architecture == "matryoshka":
        from theory.matryoshka import matryoshka_optimum

        return matryoshka_optimum(model, spec, 0, tuple(range(1, spec.width)), seed)
    from theory.optimum import global_optimum

    return global_optimum(model, spec, seed)
