"""Text corpora (embedded offline default, local files, Hugging Face datasets) and their cutting
into fixed-length token windows with a mask of the positions whose activations count.

The embedded default, "python-docs", is real English available on every machine without a
download: the Python language reference shipped with the interpreter (pydoc topics) followed by
the docstrings of the standard library, read with `ast` (nothing is imported), in sorted order,
kept as prose paragraphs and deduplicated by paragraph hash. It depends on the Python version, so
its name carries that version and its sha256 is recorded wherever it is used. Built once (about
15 s) and cached under the toolkit's user cache, verified by that hash.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from llm.models import cache_root
from toymodels.runs import atomic_write_json

EMBEDDED = "python-docs"
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
_SKIPPED_STDLIB_DIRS = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "turtledemo",
}


@dataclass(frozen=True)
class Corpus:
    """Documents in a fixed order and the sha256 that identifies them.

    For in-memory corpora the sha256 covers the text itself; for a streamed Hugging Face dataset it
    covers the dataset's identity (name, split, column), since the text is never held at once.
    """

    name: str
    sha256: str
    documents: Callable[[], Iterator[str]]


def load_corpus(spec: str = EMBEDDED) -> Corpus:
    """The embedded corpus ("python-docs"), a local text file or folder, or a HF dataset name."""
    if spec == EMBEDDED:
        return _embedded_corpus()
    path = Path(spec).expanduser()
    if path.exists():
        return _local_corpus(path)
    return _hf_corpus(spec)


def text_sha256(documents: Iterable[str]) -> str:
    """sha256 of documents joined by the ASCII record separator (which never occurs in them)."""
    digest = hashlib.sha256()
    for i, document in enumerate(documents):
        digest.update((("\x1e" if i else "") + document).encode())
    return digest.hexdigest()


def _in_memory(name: str, documents: list[str]) -> Corpus:
    documents = tuple(documents)
    return Corpus(name=name, sha256=text_sha256(documents), documents=lambda: iter(documents))


def _deduplicated(documents: Iterable[list[str]], prose_only: bool) -> list[str]:
    """Documents rebuilt from their paragraphs, each paragraph kept at its first occurrence only."""
    seen: set[bytes] = set()
    kept_documents = []
    for paragraphs in documents:
        kept = []
        for paragraph in paragraphs:
            paragraph = paragraph.strip()
            key = hashlib.sha256(" ".join(paragraph.split()).encode()).digest()
            if not paragraph or key in seen or (prose_only and not _is_prose(paragraph)):
                continue
            seen.add(key)
            kept.append(paragraph)
        if kept:
            kept_documents.append("\n\n".join(kept))
    return kept_documents


def _is_prose(paragraph: str) -> bool:
    """At least 8 words, most of them plain words (drops code, tables and signatures)."""
    words = paragraph.split()
    plain = sum(w.strip(".,;:!?()\"'").isalpha() for w in words)
    return len(words) >= 8 and plain >= 0.6 * len(words) and not paragraph.startswith(">>>")


def _paragraphs(text: str) -> list[str]:
    return text.replace("\r\n", "\n").split("\n\n")


def _embedded_corpus() -> Corpus:
    name = f"{EMBEDDED}-{sys.version_info.major}.{sys.version_info.minor}"
    path = cache_root() / "corpora" / f"{name}.json"
    if path.exists():
        record = json.loads(path.read_text())
        if text_sha256(record["documents"]) == record["sha256"]:
            return _in_memory(name, record["documents"])
    corpus = _in_memory(name, _deduplicated(_python_docs(), prose_only=True))
    documents = list(corpus.documents())
    atomic_write_json(path, {"name": name, "sha256": corpus.sha256, "documents": documents})
    return corpus


def _python_docs() -> Iterator[list[str]]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield _paragraphs(topics[key])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for source in sorted(stdlib.rglob("*.py")):
        if _SKIPPED_STDLIB_DIRS & set(source.relative_to(stdlib).parts[:-1]):
            continue
        try:
            tree = ast.parse(source.read_bytes())
        except (SyntaxError, ValueError):  # a few files are deliberately invalid (bad encodings)
            continue
        paragraphs = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                paragraphs += _paragraphs(ast.get_docstring(node) or "")
        yield paragraphs


def _local_corpus(path: Path) -> Corpus:
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    )
    if not files:
        raise ValueError(f"no text files ({', '.join(TEXT_SUFFIXES)}) under {path}")
    documents = _deduplicated(
        (_paragraphs(f.read_text(encoding="utf-8", errors="replace")) for f in files),
        prose_only=False,
    )
    if not documents:
        raise ValueError(f"the text files under {path} are empty")
    return _in_memory(str(path), documents)


def _hf_corpus(name: str, split: str = "train", column: str = "text") -> Corpus:
    try:
        import datasets
    except ImportError as error:
        raise ValueError(
            f"corpus {name!r} is neither {EMBEDDED!r} nor an existing path, and loading it as a "
            "Hugging Face dataset needs the `datasets` package"
        ) from error

    def documents() -> Iterator[str]:
        try:
            rows = datasets.load_dataset(name, split=split, streaming=True)
            for row in rows:
                yield row[column]
        except Exception as error:  # the hub client raises many types; name the corpus once
            raise ValueError(f"cannot stream Hugging Face dataset {name!r}: {error}") from error

    identity = f"hf-dataset:{name}:{split}:{column}"
    digest = hashlib.sha256(identity.encode()).hexdigest()
    return Corpus(name=name, sha256=digest, documents=documents)


@dataclass(frozen=True)
class TokenBatch:
    """One batch of windows; keep_BT marks the positions whose activations count (no BOS,
    separators or padding)."""

    input_ids_BT: torch.Tensor
    attention_mask_BT: torch.Tensor
    keep_BT: torch.Tensor


def token_batches(
    tokenizer: object, corpus: Corpus, context_length: int, batch_size: int
) -> Iterator[TokenBatch]:
    """Fixed-length windows over the corpus' token stream, deterministically.

    Non-empty documents are tokenized without special tokens and joined by EOS into one stream;
    each window is BOS followed by the next context_length - 1 stream tokens. The last window is
    right-padded (attention mask 0); the last batch may hold fewer windows.
    """
    if context_length < 2 or batch_size < 1:
        raise ValueError(
            f"context_length {context_length} must be >= 2 and batch_size {batch_size} >= 1"
        )
    bos = tokenizer.bos_token_id
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else bos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else separator
    special = torch.tensor(sorted(set(tokenizer.all_special_ids) | {bos, separator, pad} - {None}))
    span = context_length - (bos is not None)

    def windows() -> Iterator[list[int]]:
        stream: list[int] = []
        first = True
        for document in corpus.documents():
            tokens = tokenizer(document, add_special_tokens=False)["input_ids"]
            if not tokens:
                continue
            if not first and separator is not None:
                stream.append(separator)
            stream += tokens
            first = False
            while len(stream) >= span:
                yield stream[:span]
                stream = stream[span:]
        if stream:
            yield stream

    rows: list[list[int]] = []
    for window in windows():
        rows.append(([bos] if bos is not None else []) + window)
        if len(rows) == batch_size:
            yield _batch(rows, context_length, pad, special)
            rows = []
    if rows:
        yield _batch(rows, context_length, pad, special)


def _batch(
    rows: list[list[int]], context_length: int, pad: int, special: torch.Tensor
) -> TokenBatch:
    input_ids_BT = torch.full((len(rows), context_length), pad, dtype=torch.long)
    attention_mask_BT = torch.zeros((len(rows), context_length), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids_BT[i, : len(row)] = torch.tensor(row)
        attention_mask_BT[i, : len(row)] = 1
    keep_BT = attention_mask_BT.bool() & ~torch.isin(input_ids_BT, special)
    return TokenBatch(input_ids_BT, attention_mask_BT, keep_BT)
