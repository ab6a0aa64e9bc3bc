"""The paper's LLM sweep as configs: the paper's numbers at its scale, a runnable CPU version."""

import pytest

from llm.hedging import PAPER_L1
from llm.paper import PAPER_MODELS, paper_scale, paper_scale_cpu


@pytest.mark.parametrize(("model", "layer"), PAPER_MODELS.items())
def test_paper_scale_is_the_papers_sweep(model, layer):
    extract, hedging = paper_scale(model, cache="runs/acts")
    assert (extract.model, extract.layer, extract.hook) == (model, layer, "resid_post")
    assert extract.context_length == 1024 and model in PAPER_L1
    assert [h.widths for h in hedging] == [(w,) for w in (128, 256, 1024, 4096, 16384, 65536)]
    for h in hedging:
        assert (h.seeds, h.k, h.n_new, h.protocol, h.cache) == (4, 25, 64, "paper", "runs/acts")
        assert (h.train.samples, h.train.batch_size, h.train.lr) == (250_000_000, 4096, 3e-4)
    # the cache holds a stage's tokens besides the held-out rows
    assert extract.tokens - extract.shard_tokens - hedging[0].held_out_tokens >= 250_000_000


def test_paper_scale_cpu_runs_the_paper_protocol_on_the_embedded_model():
    extract, (hedging,) = paper_scale_cpu()
    assert extract.model == "gemma3-270m" and hedging.protocol == "paper"
    assert max(hedging.widths) < 2048 and hedging.seeds == 4
    assert hedging.train.n_steps < 1000  # documented: the paper's dead window never opens
    with pytest.raises(ValueError, match="unknown paper model"):
        paper_scale("gpt2")
