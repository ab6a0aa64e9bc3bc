"""A tiny byte-level BPE tokenizer over English-like words and random models sized to it, so the
first-letter pipeline runs end to end in unit tests (words split into several tokens)."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


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
    """A random model folder (d_model 32) with the letter tokenizer, for llm.models.load_model."""
    tokenizer = letter_tokenizer()
    torch.manual_seed(0)
    shared = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    if architecture == "gemma3":
        # A sliding window shorter than the prompts, so the cache's sliding layers matter.
        config = Gemma3TextConfig(**shared, sliding_window=8, sliding_window_pattern=2)
        model = Gemma3ForCausalLM(config)
    else:
        model = LlamaForCausalLM(LlamaConfig(**shared))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(-0.5, 0.5)
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
