"""A small activation cache of a tiny random Gemma 3 model, for SAE training and CLI tests."""

from pathlib import Path

from llm.cache import ExtractConfig, extract
from llm.corpus import load_corpus
from llm.models import load_model
from tests.llm.tiny_models import save_tiny_model, write_text_corpus

LAYER, HOOK, CONTEXT = 1, "resid_post", 16


def tiny_setup(folder: Path, n_tokens: int = 2400, shard_tokens: int = 600):
    """(model, corpus, cache folder): d_model 32, shards of shard_tokens rows."""
    model = load_model(str(save_tiny_model(folder / "model", "gemma3")), "cpu")
    corpus = load_corpus(str(write_text_corpus(folder / "text", n_files=12)))
    config = ExtractConfig(
        model=model.name,
        layer=LAYER,
        hook=HOOK,
        tokens=n_tokens,
        shard_tokens=shard_tokens,
        batch_size=8,
        context_length=CONTEXT,
    )
    extract(model, corpus, config, folder / "cache")
    return model, corpus, folder / "cache"
