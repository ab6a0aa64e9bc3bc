"""The shared-prefix path against whole prompts, and the ICL answers against a full forward.

Tolerance: the shared path reorders the same float32 sums (attention over cached keys, a batch of
suffixes instead of whole prompts), so it equals whole prompts to rtol = atol = 1e-4 (measured:
at most 3e-6 on activations of size up to 7 on the tiny models, 0 on the embedded Gemma)."""

import pytest
import torch

from llm.absorption.extraction import full_prompt_activations, icl_answers, query_activations
from llm.absorption.prompts import build_prompts, full_prompts
from llm.absorption.vocabulary import alphabetic_vocabulary
from llm.models import HOOKS, load_model
from tests.llm.absorption.tiny import save_letter_model

TOLERANCE = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module", params=["gemma3", "llama"])
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return load_model(str(save_letter_model(folder, request.param)), device="cpu")


def _groups(model, n_words=60):
    words = list(alphabetic_vocabulary(model.tokenizer).words)
    queries = words[:n_words] + [" Schwarzeneggerification", "zqxjvk"]
    return queries, build_prompts(model.tokenizer, queries, words, n_examples=10, seed=0)


@pytest.mark.parametrize("hook", HOOKS)
def test_shared_prefix_equals_whole_prompts(tiny, hook):
    queries, groups = _groups(tiny)
    assert sum(len(g.queries) for g in groups) > 0.9 * len(queries)  # really shared
    for layer in range(tiny.n_layers):
        shared_ND = query_activations(tiny, groups, len(queries), layer, hook, batch_size=7)
        whole_ND = full_prompt_activations(tiny, groups, len(queries), layer, hook, batch_size=5)
        torch.testing.assert_close(shared_ND, whole_ND, **TOLERANCE)
        assert shared_ND.abs().max() > 0


def test_icl_answers_equal_a_full_forward(tiny):
    queries, groups = _groups(tiny, n_words=12)
    answers_N = icl_answers(tiny, groups, len(queries), batch_size=5)
    for group in groups:
        for q, ids, _ in full_prompts(group):
            with torch.no_grad():
                logits = tiny.model(input_ids=torch.tensor([ids])).logits[0, -1]
            assert answers_N[q] == logits.argmax()
