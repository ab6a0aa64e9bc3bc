"""Tiny randomly initialised language models and a word-level tokenizer for fast llm tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
WORDS = (
    "the a an of to in is was for on that with as by it from at this be are or which not have "
    "has had but can will one all their there been more if when other so some than into only "
    "cat dog bird fish tree river stone cloud light water sound field house road number letter"
).split()


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )


def tiny_model(
    architecture: str,
    n_layers: int = 3,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
    sliding_window: int = 4,
) -> torch.nn.Module:
    """A random `architecture` ("gemma3" or "llama") causal LM with d_model 32, sized to
    `tokenizer` (default: the word tokenizer)."""
    torch.manual_seed(seed)
    tokenizer = tokenizer or word_tokenizer()
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
        # A sliding window shorter than the test contexts, so both attention kinds matter.
        config = Gemma3TextConfig(**shared, sliding_window=sliding_window, sliding_window_pattern=2)
        model = Gemma3ForCausalLM(config)
    elif architecture == "llama":
        model = LlamaForCausalLM(LlamaConfig(**shared))
    else:
        raise ValueError(f"unknown tiny architecture {architecture!r}")
    # Random norm weights, so a wrongly placed hook point cannot coincide with the right one.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(-0.5, 0.5)
    return model.eval()


def save_tiny_model(folder: Path, architecture: str, n_layers: int = 3) -> Path:
    """A model folder that llm.models.load_model reads like any local checkpoint."""
    tiny_model(architecture, n_layers).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def write_text_corpus(
    folder: Path, n_files: int = 6, words_per_file: int = 300, seed: int = 0
) -> Path:
    """Text files of random vocabulary words, in paragraphs, for local-corpus tests."""
    generator = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        picks = torch.randint(len(WORDS), (words_per_file,), generator=generator).tolist()
        words = [WORDS[p] for p in picks]
        paragraphs = [" ".join(words[j : j + 25]) for j in range(0, len(words), 25)]
        (folder / f"doc{i:02d}.txt").write_text("\n\n".join(paragraphs))
    return folder
