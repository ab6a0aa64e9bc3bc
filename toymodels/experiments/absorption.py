"""`toy absorption`: a wide ReLU-L1 SAE on the absorption paper's 4-feature hierarchical world.

Features f0..f3 are orthonormal in d_in dims; f0 fires with P = 0.25, f1 only with f0
(P(f1 | f0) = 0.2, so P(f1) = 0.05; `leak` lets it fire without f0 too), f2 and f3 independently
with P = 0.05. A 4-latent SAE learns the parent latent's encoder as f0 - delta f1 (negative child
component = absorption). Theory (closed_forms.absorption_offset) predicts delta from P(f0 only),
P(f0 and f1), P(f1 only) and L1: full absorption (delta = 1) for any L1 > 0 when there is no leak.
Every L1 x leak x seed is one member of ONE stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import sympy as sp
import torch

from theory.closed_forms import absorption_offset, absorption_offset_loss
from theory.config import require_numbers, require_positive_int
from theory.features import independent, product, two_feature
from theory.predictions import absorption_slope
from toymodels.experiments.common import EmbeddedWorlds, one_torch_thread
from toymodels.metrics import absorption_statistics
from toymodels.runs import Run
from toymodels.sae import make_sae
from toymodels.sampling import sample_states
from toymodels.train import TrainConfig, train

P_PARENT, P_CHILD_GIVEN_PARENT, P_OTHERS = 0.25, 0.2, 0.05
L1_VALUES = (1e-2, 3e-2, 1e-1)
LEAKS = (0.0, 0.02, 0.05)


def absorption_world(leak: float = 0.0):  # noqa: ANN201 (FeatureModel)
    """f0 parent, f1 its child (firing without f0 with probability `leak`), f2, f3 free."""
    return product(
        two_feature(P_PARENT, P_CHILD_GIVEN_PARENT, leak), independent([P_OTHERS, P_OTHERS])
    )


def predicted_offset(leak: float, l1: float) -> float:
    p_parent_only = P_PARENT * (1 - P_CHILD_GIVEN_PARENT)
    p_both = P_PARENT * P_CHILD_GIVEN_PARENT
    return absorption_offset(p_parent_only, p_both, (1 - P_PARENT) * leak, l1)


@dataclass(frozen=True)
class ToyAbsorptionConfig:
    """`toy absorption`: a wide ReLU-L1 SAE on the 4-feature hierarchy, its parent latent's
    child offset next to theory's."""

    l1_values: tuple[float, ...] = L1_VALUES
    """L1 coefficients."""
    leaks: tuple[float, ...] = LEAKS
    """P(child | not parent) values: 0 is a true hierarchy."""
    seeds: int = 2
    """Independent initialisations per configuration."""
    width: int = 4
    """SAE width (one latent per feature)."""
    d_in: int = 50
    """Dimension the features are embedded in."""
    eval_samples: int = 20_000
    """Samples on which absorption is measured."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            samples=1_000_000, batch_size=1024, lr=1e-2, device="cpu", progress=False
        )
    )

    def __post_init__(self) -> None:
        require_numbers("l1_values", self.l1_values, 0)
        require_numbers("leaks", self.leaks, 0, 1)
        for name in ("seeds", "width", "d_in", "eval_samples"):
            require_positive_int(name, getattr(self, name))


@one_torch_thread
def run_absorption(config: ToyAbsorptionConfig, out: str | Path) -> Run:
    leaks, seed = config.leaks, config.train.seed
    worlds = [absorption_world(leak) for leak in leaks]
    members = [
        (r, w, float(l1))
        for r in range(config.seeds)
        for w in range(len(worlds))
        for l1 in config.l1_values
    ]
    data = EmbeddedWorlds(worlds, [w for _, w, _ in members], config.d_in, seed)
    run = Run(
        out,
        config,
        seeds={"sae_init_and_data": seed, "evaluation": seed + 1},
        kind="toy-absorption",
    )
    sae = make_sae(
        "relu-l1",
        d_in=config.d_in,
        n_latents=config.width,
        n_members=len(members),
        l1=[l1 for *_, l1 in members],
        decoder_init_norm=1.0,
        generator=torch.Generator().manual_seed(seed),
    )
    train(sae, data, config.train)
    sae.fold_decoder_norms()
    directions_ND = data.directions_ND
    generator = torch.Generator().manual_seed(seed + 1)
    evaluation = [sample_states(w, config.eval_samples, generator) for w in worlds]
    rows = []
    with torch.no_grad():
        for m, (replicate, w, l1) in enumerate(members):
            states_BN = evaluation[w]
            codes_BF = sae.select_members([m]).encode(states_BN @ directions_ND)[0]
            firing_BN = states_BN > 0
            stats = absorption_statistics(
                codes_BF, firing_BN[:, 0], firing_BN[:, 1:2], sae.W_enc[m], directions_ND[1:2]
            )
            parent = stats["parent_latent"]
            child = stats["child_latents"][0]
            encoder = (sae.W_enc[m].T @ directions_ND.T).numpy()  # (F, n) feature components
            decoder = (sae.W_dec[m] @ directions_ND.T).numpy()
            rows.append(
                {
                    "l1": l1,
                    "leak": leaks[w],
                    "seed": replicate,
                    "absorption_fraction": stats["fraction"],
                    "parent_latent": parent,
                    "child_latent": child,
                    "encoder_parent": float(encoder[parent, 0]),
                    "encoder_child": float(encoder[parent, 1]),
                    "measured": float(-encoder[parent, 1] / encoder[parent, 0]),
                    "predicted": predicted_offset(leaks[w], l1),
                    "child_latent_decoder_parent": float(decoder[child, 0]),
                    "child_latent_decoder_child": float(decoder[child, 1]),
                }
            )
    table = pd.DataFrame(rows)
    run.write_table("absorption", table)
    loss, delta = absorption_offset_latex()
    run.write_metrics(
        {
            "mean_absorption_fraction": float(table.absorption_fraction.mean()),
            "worlds": [w.describe() for w in worlds],
            "mean_abs_offset_error": float(np.abs(table.measured - table.predicted).mean()),
            "negative_child_encoder_fraction": float((table.encoder_child < 0).mean()),
            "formulas": {
                "absorption_slope": absorption_slope().latex,
                "absorption_family_loss": loss,
                "offset": delta,
            },
        }
    )
    return run


def absorption_offset_latex() -> tuple[str, str]:
    """LaTeX of the absorption family's loss and of the measured offset."""
    loss, _ = absorption_offset_loss(*sp.symbols("P_10 P_11 P_01 lambda", nonnegative=True))
    measured = (
        r"\delta = -\frac{w^{\mathrm{enc}}_{\mathrm{parent}} \cdot f_1}"
        r"{w^{\mathrm{enc}}_{\mathrm{parent}} \cdot f_0}"
    )
    return sp.latex(loss), measured
