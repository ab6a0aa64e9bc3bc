"""Vocabulary rule, seeded stratified split, prompt text, and the query word's last token located
from the tokenization (tiny BPE, Gemma 3 and SmolLM2 tokenizers, multi-token words)."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from llm.absorption.prompts import (
    build_prompts,
    full_prompts,
    prefix_text,
    query_text,
)
from llm.absorption.vocabulary import (
    alphabetic_vocabulary,
    first_letter,
    is_alphabetic_word,
    sample_vocabulary,
    stratified_split,
)
from llm.models import _cached_offline_model
from tests.llm.absorption.tiny import letter_tokenizer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("dog", True),
        (" dog", True),
        (" Dog", True),
        ("  dog", False),  # only one leading space is stripped
        (" ", False),
        ("", False),
        ("dog ", False),
        ("do-g", False),
        ("café", False),
        ("x1", False),
        ("\ndog", False),
    ],
)
def test_alphabetic_rule(text, expected):
    assert is_alphabetic_word(text) is expected


def test_first_letter_labels_ignore_case_and_the_leading_space():
    assert [first_letter(w) for w in ("apple", " Apple", " zebra", "Q")] == [0, 0, 25, 16]


def test_tiny_vocabulary_keeps_spaced_and_unspaced_words_apart():
    vocabulary = alphabetic_vocabulary(letter_tokenizer())
    assert len(vocabulary) > 26
    assert all(is_alphabetic_word(w) for w in vocabulary.words)
    assert len(set(vocabulary.words)) == len(vocabulary)
    assert "<bos>" not in vocabulary.words


def test_stratified_split_is_seeded_disjoint_and_per_letter():
    rng = np.random.default_rng(0)
    letters = rng.integers(0, 26, 2000)
    train, test = stratified_split(letters, 0.2, seed=3)
    again_train, again_test = stratified_split(letters, 0.2, seed=3)
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)
    assert not set(train) & set(test) and len(train) + len(test) == 2000
    for letter in range(26):
        n = (letters == letter).sum()
        assert (letters[test] == letter).sum() == round(0.2 * n)
    other_train, _ = stratified_split(letters, 0.2, seed=4)
    assert not np.array_equal(train, other_train)


def test_vocabulary_sample_is_seeded():
    vocabulary = alphabetic_vocabulary(letter_tokenizer())
    a = sample_vocabulary(vocabulary, 20, seed=1)
    assert a == sample_vocabulary(vocabulary, 20, seed=1) and len(a) == 20
    assert sample_vocabulary(vocabulary, None, seed=1) == vocabulary


def test_prompt_text_follows_the_template():
    assert prefix_text(["tartan", " mirth"]) == (
        "\ntartan has the first letter: T\n mirth has the first letter: M\n"
    )
    assert query_text(" dog") == " dog has the first letter:"


def test_prompts_never_contain_their_query_word_and_share_a_prefix():
    tokenizer = letter_tokenizer()
    words = list(alphabetic_vocabulary(tokenizer).words)
    groups = build_prompts(tokenizer, words, words, n_examples=10, seed=0)
    assert len(groups) == 2
    covered = []
    for group in groups:
        examples = [line.split(" has the first")[0] for line in group.prefix.split("\n")[1:-1]]
        assert len(examples) == 10
        for q, _, _ in full_prompts(group):
            assert words[q] not in examples
            covered.append(q)
    assert sorted(covered) == list(range(len(words)))
    again = build_prompts(tokenizer, words, words, n_examples=10, seed=0)
    assert again == groups


def _offline_tokenizer(name):
    return AutoTokenizer.from_pretrained(_cached_offline_model(name))


@pytest.fixture(scope="module", params=["tiny", "gemma3-270m", "smollm2-135m"])
def tokenizer(request):
    return letter_tokenizer() if request.param == "tiny" else _offline_tokenizer(request.param)


MULTI_TOKEN = [" Schwarzeneggerification", "zqxjvk", " antidisestablishment"]


def test_word_position_is_the_words_last_token(tokenizer):
    pool = ["tartan", " mirth", " dog", "apple", " Zebra", "quiet", " under", "velvet"] * 2
    words = [" dog", "apple", *MULTI_TOKEN]
    groups = build_prompts(tokenizer, words, pool, n_examples=4, seed=0)
    found = {}
    for group in groups:
        for q, ids, position in full_prompts(group):
            found[q] = (ids, position)
    for q, word in enumerate(words):
        ids, position = found[q]
        through_word = tokenizer.decode(ids[: position + 1])
        assert through_word.endswith(word.lstrip(" ")), (word, through_word)
        assert tokenizer.decode(ids[position + 1 :]).startswith(" has the first letter:")
    # The multi-token words really split, so the position is not the token after the prefix.
    for word in MULTI_TOKEN:
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) > 1


def test_real_tokenizers_have_the_expected_vocabulary_sizes():
    gemma = alphabetic_vocabulary(_offline_tokenizer("gemma3-270m"))
    # Reference figure: about 140k alphabetic tokens, about 86k with a leading space.
    assert 135_000 < len(gemma) < 145_000
    assert 80_000 < sum(w.startswith(" ") for w in gemma.words) < 90_000
    smollm = alphabetic_vocabulary(_offline_tokenizer("smollm2-135m"))
    assert 10_000 < len(smollm) < len(gemma)
    assert " dog" in smollm.words and " dog" in gemma.words
