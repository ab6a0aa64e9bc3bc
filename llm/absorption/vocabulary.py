"""The first-letter task's vocabulary: every alphabetic token of a tokenizer, its label, a seeded
subsample and a seeded split stratified by letter.

A token belongs to the vocabulary when its decoded string, stripped of ONE optional leading space,
is non-empty and only ASCII letters a-z / A-Z. The word is the decoded string exactly (" dog" and
"dog" are separate entries); its label is the index 0..25 of its first letter.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

LETTERS = string.ascii_uppercase
_ALPHABETIC = frozenset(string.ascii_letters)


@dataclass(frozen=True)
class Vocabulary:
    """Alphabetic tokens: word strings, their token ids and first-letter labels (0..25)."""

    words: tuple[str, ...]
    token_ids: tuple[int, ...]
    letters: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.words)

    def subset(self, index: np.ndarray) -> Vocabulary:
        return Vocabulary(
            tuple(self.words[i] for i in index),
            tuple(self.token_ids[i] for i in index),
            tuple(self.letters[i] for i in index),
        )


def is_alphabetic_word(text: str) -> bool:
    """Non-empty and only a-z / A-Z once one optional leading space is removed."""
    core = text[1:] if text.startswith(" ") else text
    return bool(core) and all(c in _ALPHABETIC for c in core)


def first_letter(word: str) -> int:
    """Label 0..25 of an alphabetic word (leading space ignored)."""
    return LETTERS.index(word.lstrip(" ")[0].upper())


def alphabetic_vocabulary(tokenizer: object) -> Vocabulary:
    """Every token of `tokenizer` (special tokens excluded) whose decoded string is alphabetic,
    in token-id order; a string decoded from several ids is kept once, at its first id."""
    special = set(getattr(tokenizer, "all_special_ids", []))
    ids = [i for i in range(len(tokenizer)) if i not in special]
    decoded = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    seen: set[str] = set()
    words, token_ids = [], []
    for token_id, text in zip(ids, decoded, strict=True):
        if is_alphabetic_word(text) and text not in seen:
            seen.add(text)
            words.append(text)
            token_ids.append(token_id)
    return Vocabulary(tuple(words), tuple(token_ids), tuple(first_letter(w) for w in words))


def sample_vocabulary(vocabulary: Vocabulary, n_words: int | None, seed: int) -> Vocabulary:
    """A seeded uniform sample of n_words entries (all of them when None or larger), in
    vocabulary order."""
    if n_words is None or n_words >= len(vocabulary):
        return vocabulary
    rng = np.random.default_rng(seed)
    return vocabulary.subset(np.sort(rng.choice(len(vocabulary), n_words, replace=False)))


def stratified_split(
    letters_N: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train indices, test indices), each sorted: per letter, round(test_fraction x
    count) entries go to test (at least one when the letter has two or more)."""
    letters_N = np.asarray(letters_N)
    rng = np.random.default_rng(seed)
    test = []
    for letter in np.unique(letters_N):
        members = np.flatnonzero(letters_N == letter)
        n_test = int(round(test_fraction * len(members)))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test.append(rng.permutation(members)[:n_test])
    test_index = np.sort(np.concatenate(test)) if test else np.array([], dtype=int)
    train_index = np.setdiff1d(np.arange(len(letters_N)), test_index)
    return train_index, test_index
