"""The hedging-degree protocol: train on, with and without N new latents, and compare decoders.

Three SAEs share configuration and seed: the initial one (trained by the caller), a control (the
initial trained T more samples) and an extended one (the initial plus N new latents, trained the
same T samples with the same seed, so both see identical batches when the data source draws from
the global torch RNG). Both are folded to unit decoder rows and compared member by member with
toymodels.metrics.hedging_degree. Works on any SAE stack and any data callable, toy or LLM.

Two protocols. h measures absolute decoder movement, so it depends on training length, learning
rate and optimiser: "paper" reproduces the hedging paper's public code (SAELens trainer) so its
numbers can be compared with the paper's; "toolkit" (the default) is what the toolkit's trainer
does everywhere else and finishes on a CPU. Jobs take `protocol` ("toolkit" | "paper") and record
it in config.json.

What "paper" changes (toolkit -> paper; docs/hedging_protocols.md has every row with its reason):
- learning rate: linear decay to 0 over the last 20% -> constant;
- Adam betas (0.9, 0.999) -> (0, 0.999), a fresh Adam per stage in both;
- control and extended continue from the initial SAE as trained -> from it folded to unit decoder
  rows, so the new latents (norm 0.1) start 10x smaller than the old ones;
- TopK/BatchTopK rank latents by contribution h_i ||W_dec[i]|| -> by raw activation h_i;
- aux-k coefficient 1/32, dead after a caller-set number of samples, counters carried over from
  the initial stage -> coefficient 1, dead after 1,000 steps, counters restart each stage;
- on language models and in the toy matryoshka: see llm.hedging and toy matryoshka.
The paper's values for the optimiser and dead latents are `paper_train` and `paper_sae_options`;
the stage options are hedging_protocol's fold_initial and reset_dead_counters.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from theory.config import require_positive_int
from toymodels.metrics import hedging_degree
from toymodels.sae import SAE
from toymodels.train import DataSource, TrainConfig, train

PROTOCOLS = ("toolkit", "paper")
PAPER_ADAM_BETAS = (0.0, 0.999)
PAPER_AUX_COEFFICIENT = 1.0
PAPER_DEAD_AFTER_STEPS = 1000


def paper_train(train_config: TrainConfig) -> TrainConfig:
    """The paper's stage trainer: constant learning rate (no warm-up, no decay) and Adam betas
    (0, 0.999); every stage gets a fresh Adam (as every `train` call does)."""
    return train_config.replace(warmup_steps=0, decay_fraction=0.0, adam_betas=PAPER_ADAM_BETAS)


def paper_sae_options(batch_size: int) -> dict:
    """The paper's settings of a TopK-family SAE config: ranking by raw activation, aux-k
    coefficient 1, latents dead after 1,000 steps of batch_size samples."""
    return {
        "rank_by": "activation",
        "aux_coefficient": PAPER_AUX_COEFFICIENT,
        "dead_after_samples": PAPER_DEAD_AFTER_STEPS * batch_size,
    }


PAPER_STAGE_OPTIONS = {"fold_initial": True, "reset_dead_counters": True}


def hedging_protocol(
    initial: SAE,
    data: DataSource,
    train_config: TrainConfig,
    n_new: int,
    *,
    new_latent_scale: float = 0.1,
    n_random: int = 50,
    checkpoint_dir: str | Path | None = None,
    fold_initial: bool = False,
    reset_dead_counters: bool = False,
) -> tuple[list[dict], SAE, SAE]:
    """Hedging degree of every member of `initial` (left unchanged) for n_new new latents.

    control  = initial trained train_config.samples more;
    extended = initial.add_latents(n_new) trained the same (same seed and schedule); the new
    latents' directions are drawn from train_config.seed too.
    fold_initial: both stages start from the initial SAE folded to unit decoder rows, so the new
    latents (norm new_latent_scale) start that much smaller than the old ones (the paper's code).
    reset_dead_counters: both stages count dead latents from 0 instead of carrying the initial
    training's counters over (the paper's code starts a fresh trainer per stage).
    With checkpoint_dir both stages checkpoint there and resume.
    Returns (rows, control, extended): one row per member with member, width, n_new,
    samples_per_stage, h, p, p_rand; the two trained stacks are folded to unit decoder rows.
    """
    seed, n_samples = train_config.seed, train_config.samples
    require_positive_int("n_new", n_new)
    start = copy.deepcopy(initial) if fold_initial or reset_dead_counters else initial
    if fold_initial:
        start.fold_decoder_norms()
    if reset_dead_counters:
        start.samples_since_fired.zero_()
    stages = {
        "control": copy.deepcopy(start),
        "extended": start.add_latents(
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
