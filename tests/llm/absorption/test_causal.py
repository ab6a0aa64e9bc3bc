"""The causal (integrated-gradients) metric: the splice leaves the clean forward unchanged, the
scores obey completeness, the absorption rule, and the job's causal columns on a tiny model."""

import json

import pandas as pd
import pytest
import torch

from llm.absorption import AbsorptionConfig, run_absorption
from llm.absorption.causal import (
    CausalSettings,
    answer_ids,
    attribute,
    full_prefix_cache,
    is_absorbed,
)
from llm.absorption.prompts import build_prompts, full_prompts
from llm.absorption.vocabulary import alphabetic_vocabulary
from llm.models import load_model
from llm.saefiles import saelens_hook_name, save_sae
from tests.llm.absorption.tiny import save_letter_model
from toymodels.sae import make_sae


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = save_letter_model(tmp_path_factory.mktemp("letters"), "gemma3")
    return folder, load_model(str(folder), device="cpu")


def _metric(model, ids, letter, answers, replace=None):
    """The answer metric of an unhooked (or position-replaced) full forward."""
    handle = None
    if replace is not None:
        position, value = replace

        def swap(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden.clone()
            hidden[:, position] = value
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        handle = model.layers[1].register_forward_hook(swap)
    try:
        with torch.no_grad():
            logits = model.model(input_ids=torch.tensor([ids])).logits[0, -1]
    finally:
        if handle is not None:
            handle.remove()
    others = [j for j in range(26) if j != letter]
    return float(logits[answers.correct_L[letter]] - logits[answers.other_L[others]].mean())


@pytest.mark.parametrize("style", ["consistent", "paper"])
def test_splice_is_exact_at_the_clean_input_and_scores_are_complete(tiny, style):
    _, model = tiny
    generator = torch.Generator().manual_seed(0)
    sae = make_sae("relu-l1", d_in=32, n_latents=48, generator=generator)
    with torch.no_grad():
        sae.b_enc.fill_(0.05)
        sae.b_dec.normal_(generator=generator)
    words = list(alphabetic_vocabulary(model.tokenizer).words)
    groups = build_prompts(model.tokenizer, [" Schwarzeneggerification"], words, 10, seed=0)
    q, ids, position = full_prompts(groups[0])[0]
    answers = answer_ids(model.tokenizer, style)
    n_prefix = len(groups[0].prefix_ids)
    cache = full_prefix_cache(model, groups[0].prefix_ids)
    settings = CausalSettings(model, groups, 1, "resid_post", answers)
    result = attribute(settings, sae, cache, ids[n_prefix:], position - n_prefix, 18, 100)
    clean = _metric(model, ids, 18, answers)
    assert result.metric_S[0].item() == pytest.approx(clean, abs=1e-4)
    # Completeness: scores sum to m(baseline) - m(clean); the baseline keeps b_dec.
    baseline = _metric(model, ids, 18, answers, replace=(position, sae.b_dec[0].detach()))
    total = float(result.scores_F.sum()) + result.error_score
    assert total == pytest.approx(baseline - clean, abs=0.02 * abs(baseline - clean) + 1e-3)
    # Without the cache (the whole prompt) the scores are the same.
    whole = attribute(settings, sae, None, ids, position, 18, 100)
    torch.testing.assert_close(whole.scores_F, result.scores_F, rtol=1e-3, atol=1e-7)


def test_absorption_rule():
    cosines = torch.tensor([0.5, 0.5, 0.01, 0.5])
    assert is_absorbed(torch.tensor([-2.0, -0.5, 0.0, 0.3]), cosines)
    assert not is_absorbed(torch.tensor([-1.2, -0.5, 0.0, 0.3]), cosines)  # margin 0.7 < 1
    assert not is_absorbed(torch.tensor([0.0, 0.0, -3.0, 0.3]), cosines)  # cosine 0.01
    assert not is_absorbed(torch.tensor([0.5, 0.6, 0.7, 0.8]), cosines)  # no negative score


def test_job_reports_the_causal_rate(tiny, tmp_path):
    folder, _ = tiny
    sae = make_sae("topk", d_in=32, n_latents=64, k=4)
    metadata = {"hook_name": saelens_hook_name(1, "resid_post")}
    path = str(save_sae(sae, tmp_path / "sae", metadata=metadata))
    config = AbsorptionConfig(
        model=str(folder),
        layer=1,
        sae_paths=(path,),
        n_words=0,
        probe_epochs=5,
        min_letters=1,
        min_probe_f1=0.0,
        n_icl_check=0,
        device="cpu",
        causal_metric=True,
        causal_max_per_letter=2,
        setup_dir=str(tmp_path / "setup"),
    )
    run = run_absorption(config, tmp_path / "run")
    per_letter = pd.read_csv(run.folder / "tables" / "per_letter.csv")
    assert (per_letter["causal_sampled"] <= 2).all()
    assert (per_letter["causal_sampled"] <= per_letter["causal_candidates"]).all()
    rates = per_letter["causal_absorption_rate"]
    assert ((rates >= 0) & (rates <= 1)).all()
    result = json.loads((run.folder / "results" / "sae_absorption.json").read_text())
    assert result["eval_result_unstructured"]["causal_answers"] == "consistent"
