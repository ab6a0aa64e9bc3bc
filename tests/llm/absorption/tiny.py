"""A tiny byte-level BPE tokenizer over English-like words and random models sized to it, so the
first-letter pipeline runs end to end in unit tests (words split into several tokens)."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tests.llm.tiny_models import SPECIALS, tiny_model


def training_words(n_words: int = 400, seed: int = 0) -> list[str]:
    """Seeded random lowercase words of 2-8 letters, every first letter represented."""
    rng = np.random.default_rng(seed)
    words = []
    for i in range(n_words):
        first = string.ascii_lowercase[i % 26]
        rest = rng.choice(list(string.ascii_lowercase), rng.integers(1, 8))
        words.append(first + "".join(rest))
    return words


def letter_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style, BOS added) trained on random words and the template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [f"{w} has the first letter: {w[0].upper()}\n" for w in training_words()]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus * 3, trainer)
    from tokenizers.processors import TemplateProcessing

    backend.post_processor = TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", backend.token_to_id("<bos>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )


def save_letter_model(folder: Path, architecture: str = "gemma3", n_layers: int = 3) -> Path:
    """A random model folder (d_model 32) with the letter tokenizer, for llm.models.load_model.
    Its sliding window is shorter than the prompts, so the cache's sliding layers matter."""
    tokenizer = letter_tokenizer()
    model = tiny_model(architecture, n_layers, tokenizer=tokenizer, sliding_window=8)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
