"""The hedging-degree protocol: train on, with and without N new latents, and compare decoders.

Three SAEs share configuration and seed: the initial one (trained by the caller), a control (the
initial trained T more samples) and an extended one (the initial plus N new latents, trained the
same T samples with the same seed, so both see identical batches when the data source draws from
the global torch RNG). Both are folded to unit decoder rows and compared member by member with
toymodels.metrics.hedging_degree. Works on any SAE stack and any data callable, toy or LLM.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from theory.config import require_positive_int
from toymodels.metrics import hedging_degree
from toymodels.sae import SAE
from toymodels.train import DataSource, TrainConfig, train


def hedging_protocol(
    initial: SAE,
    data: DataSource,
    train_config: TrainConfig,
    n_new: int,
    *,
    new_latent_scale: float = 0.1,
    n_random: int = 50,
    checkpoint_dir: str | Path | None = None,
) -> tuple[list[dict], SAE, SAE]:
    """Hedging degree of every member of `initial` (left unchanged) for n_new new latents.

    control  = initial trained train_config.samples more;
    extended = initial.add_latents(n_new) trained the same (same seed and schedule); the new
    latents' directions are drawn from train_config.seed too.
    With checkpoint_dir both stages checkpoint there and resume.
    Returns (rows, control, extended): one row per member with member, width, n_new,
    samples_per_stage, h, p, p_rand; the two trained stacks are folded to unit decoder rows.
    """
    seed, n_samples = train_config.seed, train_config.samples
    require_positive_int("n_new", n_new)
    stages = {
        "control": copy.deepcopy(initial),
        "extended": initial.add_latents(
            n_new, scale=new_latent_scale, generator=torch.Generator().manual_seed(seed)
        ),
    }
    for name, sae in stages.items():
        checkpoint = None if checkpoint_dir is None else Path(checkpoint_dir) / f"{name}.pt"
        train(sae, data, train_config, checkpoint_path=checkpoint)
        sae.fold_decoder_norms()
    control, extended = stages["control"], stages["extended"]
    rows = []
    for m in range(initial.n_members):
        W_dec_ctrl_FD = control.W_dec[m][control.latent_mask[m]].detach().cpu()
        # The member's original latents first, then the new ones (they sit after all old ones).
        W_dec_ext_GD = extended.W_dec[m][extended.latent_mask[m]].detach().cpu()
        result = hedging_degree(
            W_dec_ctrl_FD,
            W_dec_ext_GD,
            n_new,
            n_random=n_random,
            generator=torch.Generator().manual_seed(seed),
        )
        rows.append(
            {
                "member": m,
                "width": int(control.latent_mask[m].sum()),
                "n_new": n_new,
                "samples_per_stage": n_samples,
                "h": result["h"],
                "p": result["p"],
                "p_rand": result["p_rand"],
            }
        )
    return rows, control, extended
