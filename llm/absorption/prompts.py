"""First-letter ICL prompts that share their prefix, tokenized once, with the query word's last
token located from the tokenization.

A prompt is "\\n" (after the tokenizer's BOS, as SAEBench does), then n_examples ICL lines, then
the query, joined by "\\n":

    \\ntartan has the first letter: T\\nmirth has the first letter: M\\ndog has the first letter:

Examples are drawn once per prompt set, seeded, from a pool of words, so every query shares the
same prefix text. A query word that is one of the examples gets the set's second, disjoint draw
instead (a prompt never contains its own query word), so a prompt set has at most two prefixes.

Sharing: each full prompt is tokenized as one text; when its first P tokens equal the prefix's
own tokenization (P tokens), the prompt is "shared" and only its suffix ids (positions P..) need a
forward pass on top of the prefix's key/value cache. Prompts whose tokenization merges across the
boundary are kept whole ("unshared") and run without the cache, so both paths see exactly the
tokens of the full prompt. The word's last token is the last token whose character span overlaps
the word's span in the prompt text (from the tokenizer's offset mapping), never a fixed offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llm.absorption.vocabulary import LETTERS, first_letter

TEMPLATE = "{word} has the first letter:"
SEPARATOR = "\n"
START = "\n"


def answer(word: str) -> str:
    """The expected completion: a space and the uppercase first letter."""
    return " " + LETTERS[first_letter(word)]


def prefix_text(examples: list[str]) -> str:
    """The shared prompt start: "\\n", the solved examples, and the separator before the query."""
    lines = [TEMPLATE.format(word=word) + answer(word) for word in examples]
    return START + "".join(line + SEPARATOR for line in lines)


def query_text(word: str) -> str:
    return TEMPLATE.format(word=word)


@dataclass(frozen=True)
class PromptGroup:
    """Prompts sharing one prefix. Query q (an index into the prompt set's words) has suffix ids
    suffix_ids[i] (the full prompt's ids after the prefix) and its word's last token at
    word_positions[i] within the suffix. Unshared prompts carry their full ids and the position
    within them."""

    prefix: str
    prefix_ids: tuple[int, ...]
    queries: tuple[int, ...]
    suffix_ids: tuple[tuple[int, ...], ...]
    word_positions: tuple[int, ...]
    unshared_queries: tuple[int, ...] = ()
    unshared_ids: tuple[tuple[int, ...], ...] = ()
    unshared_positions: tuple[int, ...] = ()


def draw_examples(
    pool: list[str], n_examples: int, rng: np.random.Generator, exclude: set[str] = frozenset()
) -> list[str]:
    """n_examples distinct pool words (fewer if the pool is short), none of them in `exclude`."""
    candidates = [w for w in dict.fromkeys(pool) if w not in exclude]
    picks = rng.choice(len(candidates), min(n_examples, len(candidates)), replace=False)
    return [candidates[i] for i in picks]


def word_last_token(offsets: list[tuple[int, int]], start: int, end: int) -> int:
    """Index of the last token whose character span overlaps [start, end)."""
    overlapping = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
    if not overlapping:
        raise ValueError(f"no token covers characters {start}..{end} of the prompt")
    return overlapping[-1]


def build_prompts(
    tokenizer: object, words: list[str], pool: list[str], n_examples: int, seed: int
) -> list[PromptGroup]:
    """Tokenized prompt groups for the query `words`, examples drawn from `pool` with `seed`."""
    rng = np.random.default_rng(seed)
    first = draw_examples(pool, n_examples, rng)
    second = draw_examples(pool, n_examples, rng, exclude=set(first))
    in_first = set(first)
    groups = []
    for examples, chosen in (
        (first, [q for q, w in enumerate(words) if w not in in_first]),
        (second, [q for q, w in enumerate(words) if w in in_first]),
    ):
        if chosen:
            groups.append(_tokenize_group(tokenizer, prefix_text(examples), words, chosen))
    return groups


def _tokenize_group(
    tokenizer: object, prefix: str, words: list[str], queries: list[int]
) -> PromptGroup:
    prefix_ids = tuple(tokenizer(prefix)["input_ids"])
    texts = [prefix + query_text(words[q]) for q in queries]
    encoded = tokenizer(texts, return_offsets_mapping=True)
    start = len(prefix)
    shared: list[tuple[int, tuple[int, ...], int]] = []
    unshared: list[tuple[int, tuple[int, ...], int]] = []
    n_prefix = len(prefix_ids)
    for q, ids, offsets in zip(
        queries, encoded["input_ids"], encoded["offset_mapping"], strict=True
    ):
        position = word_last_token(offsets, start, start + len(words[q]))
        if tuple(ids[:n_prefix]) == prefix_ids and position >= n_prefix:
            shared.append((q, tuple(ids[n_prefix:]), position - n_prefix))
        else:
            unshared.append((q, tuple(ids), position))
    return PromptGroup(
        prefix=prefix,
        prefix_ids=prefix_ids,
        queries=tuple(q for q, _, _ in shared),
        suffix_ids=tuple(ids for _, ids, _ in shared),
        word_positions=tuple(p for _, _, p in shared),
        unshared_queries=tuple(q for q, _, _ in unshared),
        unshared_ids=tuple(ids for _, ids, _ in unshared),
        unshared_positions=tuple(p for _, _, p in unshared),
    )


def full_prompts(group: PromptGroup) -> list[tuple[int, tuple[int, ...], int]]:
    """(query, full prompt ids, word position in them) for every prompt of the group."""
    n_prefix = len(group.prefix_ids)
    shared = [
        (q, group.prefix_ids + ids, n_prefix + p)
        for q, ids, p in zip(group.queries, group.suffix_ids, group.word_positions, strict=True)
    ]
    unshared = list(
        zip(group.unshared_queries, group.unshared_ids, group.unshared_positions, strict=True)
    )
    return shared + unshared
