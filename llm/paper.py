"""The hedging paper's LLM width sweep as configs: what to extract and what to train, at the
paper's scale (paper_scale) and sized for a CPU on the embedded model (paper_scale_cpu).

The paper (chanind/feature-hedging-paper, experiments/train_*_hedging_eval_*_for_width.py): block
output of Gemma-2-2B layer 12 (d 2304) or Llama-3.2-1B layer 7 (d 2048), pile-uncopyrighted in
contexts of 1024 tokens, batches of 4096, BatchTopK k 25 at lr 3e-4 and L1 SAEs (llm.hedging's
PAPER_L1, lr 7e-5, 10k-step warm-up), widths 128 to 65536 x 4 seeds, N = 64 new latents,
250M tokens per stage, every stage with the paper protocol. The cache holds one stage's tokens
(the protocol re-reads the same stream each stage, as the paper's code does) plus the held-out
rows.

paper_scale returns one hedging config per width: the toolkit trains all members of a run as one
stack whose every member holds the widest member's latents, so 4 seeds x all widths at 65536
latents would need ~29 GB of weights and three times that for Adam. The across-width table is the
union of the runs' hedging_vs_width tables. What a CPU cannot keep is listed on paper_scale_cpu.
"""

from __future__ import annotations

from typing import NamedTuple

from llm.cache import ExtractConfig
from llm.hedging import LLMHedgingConfig
from toymodels.train import TrainConfig

# model id -> hooked layer (block output)
PAPER_MODELS = {"google/gemma-2-2b": 12, "meta-llama/Llama-3.2-1B": 7}
PAPER_WIDTHS = (128, 256, 1024, 4096, 16384, 65536)
PAPER_SEEDS = 4
PAPER_K = 25
PAPER_N_NEW = 64
PAPER_CONTEXT = 1024
PAPER_BATCH = 4096
PAPER_LR = 3e-4
PAPER_TOKENS_PER_STAGE = 250_000_000
PAPER_CORPUS = "monology/pile-uncopyrighted"
HELD_OUT_TOKENS = 16_384


class HedgingSweep(NamedTuple):
    """An extraction and the hedging runs that read its cache."""

    extract: ExtractConfig
    """What to cache (run it first, into the folder every hedging config names as cache)."""
    hedging: tuple[LLMHedgingConfig, ...]
    """The hedging runs (one per width at the paper's scale)."""


def paper_scale(
    model: str = "google/gemma-2-2b", cache: str = "runs/paper-activations"
) -> HedgingSweep:
    """The paper's width sweep on one of its models; `cache` is the extraction's run folder."""
    if model not in PAPER_MODELS:
        raise ValueError(f"unknown paper model {model!r}; allowed: {', '.join(PAPER_MODELS)}")
    extract = ExtractConfig(
        model=model,
        layer=PAPER_MODELS[model],
        hook="resid_post",
        tokens=PAPER_TOKENS_PER_STAGE + HELD_OUT_TOKENS + 262_144,  # held-out shard(s)
        corpus=PAPER_CORPUS,
        dtype="bfloat16",
        shard_tokens=262_144,
        context_length=PAPER_CONTEXT,
    )
    train = TrainConfig(
        samples=PAPER_TOKENS_PER_STAGE,
        batch_size=PAPER_BATCH,
        lr=PAPER_LR,
        checkpoint_every=2000,
        progress=True,
    )
    hedging = tuple(
        LLMHedgingConfig(
            cache=cache,
            widths=(width,),
            n_new=PAPER_N_NEW,
            k=PAPER_K,
            mus=(),
            seeds=PAPER_SEEDS,
            held_out_tokens=HELD_OUT_TOKENS,
            protocol="paper",
            train=train,
        )
        for width in PAPER_WIDTHS
    )
    return HedgingSweep(extract, hedging)


def paper_scale_cpu(cache: str = "runs/paper-cpu-activations") -> HedgingSweep:
    """The paper's sweep shrunk to a CPU on the embedded gemma3-270m (d 640, 18 layers): minutes
    instead of GPU-weeks. It keeps the paper protocol, k 25, the hook (block output) at the same
    relative depth (layer 8 of 18, as 12 of 26), 4 seeds and one run for every width.

    It cannot keep: 250M tokens per stage (60k: ~117 steps of 512, so the 1,000-step dead window
    never opens and new latents grow only through the main loss); batches of 4096 (512); widths up
    to 65536 (128..1024, d_model is 640); N = 64 (32, so the new latents span at most 5% of the
    640 dimensions, as 64 span 2.8% of Gemma's 2304); contexts of 1024 tokens on the Pile (128 on
    the embedded python-docs corpus); the paper's L1 coefficient (no paper value exists for this
    model: the toolkit's, carried to raw units, see llm.hedging)."""
    extract = ExtractConfig(model="gemma3-270m", layer=8, hook="resid_post", tokens=100_000)
    train = TrainConfig(samples=60_000, batch_size=512, checkpoint_every=200, progress=False)
    hedging = LLMHedgingConfig(
        cache=cache,
        widths=(128, 256, 512, 1024),
        n_new=32,
        k=PAPER_K,
        mus=(),
        seeds=PAPER_SEEDS,
        held_out_tokens=HELD_OUT_TOKENS,
        protocol="paper",
        train=train,
    )
    return HedgingSweep(extract, (hedging,))
