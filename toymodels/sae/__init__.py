"""The SAE family: one file per architecture, registered here by name.

make_sae("relu-l1", d_in=50, n_latents=4, n_members=64, widths=[1, 2, 3, 4] * 16, l1=1e-2)
make_sae(**sae.full_config())   # rebuilds the same architecture and configuration
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from toymodels.sae.base import SAE
from toymodels.sae.batchtopk import BatchTopKSAE
from toymodels.sae.jumprelu import JumpReLUSAE
from toymodels.sae.matryoshka import matryoshka
from toymodels.sae.relu_l1 import ReLUL1SAE
from toymodels.sae.topk import TopKSAE

SAE_REGISTRY: dict[str, Callable[..., SAE]] = {
    "relu-l1": ReLUL1SAE,
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "jumprelu": JumpReLUSAE,
    "matryoshka": matryoshka,
}


def make_sae(architecture: str, **config: Any) -> SAE:
    """Build a registered SAE; config holds the architecture's constructor arguments."""
    if architecture not in SAE_REGISTRY:
        raise ValueError(
            f"unknown SAE architecture {architecture!r}; allowed: {', '.join(SAE_REGISTRY)}"
        )
    return SAE_REGISTRY[architecture](**config)


__all__ = ["SAE", "SAE_REGISTRY", "make_sae"]
