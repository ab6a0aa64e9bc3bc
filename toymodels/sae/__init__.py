"""The SAE family: one file per architecture, registered here by name.

make_sae("relu-l1", d_in=50, n_latents=4, n_members=64, widths=[1, 2, 3, 4] * 16, l1=1e-2)
make_sae(**sae.full_config())   # rebuilds the same architecture and configuration
sae_class("topk")(TopKConfig(d_in=640, n_latents=16384, k=32))   # from a typed config
"""

from __future__ import annotations

from typing import Any

import torch

from theory.config import require_choice
from toymodels.sae.base import SAE, Capabilities, SAEConfig
from toymodels.sae.batchtopk import BatchTopKConfig, BatchTopKSAE
from toymodels.sae.jumprelu import JumpReLUConfig, JumpReLUSAE
from toymodels.sae.matryoshka import matryoshka_class
from toymodels.sae.relu_l1 import ReLUL1Config, ReLUL1SAE
from toymodels.sae.topk import TopKConfig, TopKSAE

SAE_REGISTRY: dict[str, type[SAE]] = {
    sae.architecture: sae for sae in (ReLUL1SAE, TopKSAE, BatchTopKSAE, JumpReLUSAE)
}
ARCHITECTURES = (*SAE_REGISTRY, "matryoshka")


def sae_class(architecture: str, inner: str = "batchtopk") -> type[SAE]:
    """The class of a registered architecture (matryoshka: over the given inner one)."""
    require_choice("SAE architecture", architecture, ARCHITECTURES)
    if architecture == "matryoshka":
        return matryoshka_class(inner)
    return SAE_REGISTRY[architecture]


def make_sae(architecture: str, generator: torch.Generator | None = None, **config: Any) -> SAE:
    """Build a registered SAE from its config's fields (keyword arguments)."""
    cls = sae_class(architecture, config.get("inner", "batchtopk"))
    return cls(cls.config_class(**config), generator)


__all__ = [
    "ARCHITECTURES",
    "SAE",
    "SAE_REGISTRY",
    "BatchTopKConfig",
    "Capabilities",
    "JumpReLUConfig",
    "ReLUL1Config",
    "SAEConfig",
    "TopKConfig",
    "make_sae",
    "sae_class",
]
