"""The per-hook setup of the first-letter study, computed once per (model, layer, hook) and
stored: vocabulary sample, stratified split, activations at the query word's last token for the
train and test prompts and for each test word's fresh absorption prompt, the trained probe and
the model's ICL answer accuracy. Every SAE evaluated at that hook reuses it.

Folder layout: manifest.json (format, the full setup request, model figures, per-file sha256,
completed stages), vocabulary.json, acts_<part>_<chunk>.safetensors (part = train, test,
absorption; chunks of chunk_words queries), probe.safetensors. The manifest is rewritten
atomically after every file, so an interrupted setup resumes at the first missing chunk; files
are hash-checked when read; a folder made for a different request is refused with the keys that
differ.

Prompt pools (see prompts.py): train prompts draw their examples from the train split, test
prompts from the test split, absorption prompts from the whole alphabetic vocabulary, each with
its own seed, so the three prompt sets have different prefixes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from llm.absorption.extraction import icl_answers, query_activations
from llm.absorption.probe import LetterProbe, letter_scores, train_letter_probe
from llm.absorption.prompts import answer, build_prompts
from llm.absorption.vocabulary import (
    alphabetic_vocabulary,
    sample_vocabulary,
    stratified_split,
)
from llm.models import LoadedModel
from toymodels.runs import atomic_write_bytes, atomic_write_json

FORMAT = "sae-hedging-absorption-setup/1"
MANIFEST = "manifest.json"
PARTS = ("train", "test", "absorption")
# Seed offsets of the independent random draws made from SetupConfig.seed.
_SAMPLE, _SPLIT, _PROMPTS, _PROBE = 0, 1, 2, 5


@dataclass(frozen=True)
class SetupConfig:
    """What the per-hook setup depends on (any change makes a different setup)."""

    model: str
    layer: int
    hook: str
    n_words: int | None
    test_fraction: float
    n_icl_examples: int
    seed: int
    probe_epochs: int
    n_icl_check: int
    batch_size: int
    chunk_words: int = 4096

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


class HookSetup(NamedTuple):
    """The stored setup, as tensors. Indices refer to `words` (the sampled vocabulary)."""

    words: tuple[str, ...]
    letters_N: torch.Tensor
    train_index: np.ndarray
    test_index: np.ndarray
    train_acts_ND: torch.Tensor
    test_acts_ND: torch.Tensor
    absorption_acts_ND: torch.Tensor  # one row per test word, same order as test_index
    probe: LetterProbe
    icl_accuracy: float | None
    vocabulary_size: int  # the full alphabetic vocabulary the sample was drawn from

    @property
    def letters_train_N(self) -> torch.Tensor:
        return self.letters_N[self.train_index]

    @property
    def letters_test_N(self) -> torch.Tensor:
        return self.letters_N[self.test_index]

    def probe_scores(self):  # noqa: ANN201 - LetterScores
        return letter_scores(self.probe.logits(self.test_acts_ND) > 0, self.letters_test_N)


def default_folder(root: Path, config: SetupConfig) -> Path:
    """<root>/<model>/L<layer>-<hook>-<first 12 hex of the request digest>."""
    model = config.model.replace("/", "--")
    return root / model / f"L{config.layer}-{config.hook}-{config.digest()[:12]}"


def prepare_setup(model: LoadedModel, config: SetupConfig, folder: str | Path) -> HookSetup:
    """Load the setup from `folder`, computing and storing whatever is missing."""
    if not 0 <= config.layer < model.n_layers:
        raise ValueError(f"layer {config.layer} is out of range; allowed: 0..{model.n_layers - 1}")
    folder = Path(folder)
    manifest = _resume_or_start(folder, config, model)
    vocabulary = alphabetic_vocabulary(model.tokenizer)
    sample = sample_vocabulary(vocabulary, config.n_words, config.seed + _SAMPLE)
    letters = np.asarray(sample.letters)
    if "vocabulary.json" not in manifest["files"]:
        train_index, test_index = stratified_split(
            letters, config.test_fraction, config.seed + _SPLIT
        )
        record = {
            "words": list(sample.words),
            "token_ids": list(sample.token_ids),
            "letters": letters.tolist(),
            "train_index": train_index.tolist(),
            "test_index": test_index.tolist(),
            "vocabulary_size": len(vocabulary),
        }
        _write(folder, manifest, "vocabulary.json", json.dumps(record).encode())
    record = json.loads(_read(folder, manifest, "vocabulary.json"))
    words = record["words"]
    train_index = np.asarray(record["train_index"], dtype=np.int64)
    test_index = np.asarray(record["test_index"], dtype=np.int64)
    train_words = [words[i] for i in train_index]
    test_words = [words[i] for i in test_index]
    queries = {
        "train": (train_words, train_words),
        "test": (test_words, test_words),
        "absorption": (test_words, list(vocabulary.words)),
    }
    acts = {}
    for offset, part in enumerate(PARTS):
        part_words, pool = queries[part]
        chunks = []
        for chunk, start in enumerate(range(0, len(part_words), config.chunk_words)):
            name = f"acts_{part}_{chunk:05d}.safetensors"
            if name not in manifest["files"]:
                chunk_words = part_words[start : start + config.chunk_words]
                groups = build_prompts(
                    model.tokenizer,
                    chunk_words,
                    pool,
                    config.n_icl_examples,
                    config.seed + _PROMPTS + offset,
                )
                acts_ND = query_activations(
                    model, groups, len(chunk_words), config.layer, config.hook, config.batch_size
                )
                _write(folder, manifest, name, save_safetensors({"acts": acts_ND.contiguous()}))
            chunks.append(load_safetensors(_read(folder, manifest, name))["acts"])
        acts[part] = torch.cat(chunks) if chunks else torch.empty(0, model.d_model)
    letters_N = torch.as_tensor(letters, dtype=torch.long)
    if "probe.safetensors" not in manifest["files"]:
        probe = train_letter_probe(
            acts["train"],
            letters_N[train_index],
            seed=config.seed + _PROBE,
            epochs=config.probe_epochs,
        )
        tensors = {"weight": probe.weight_LD.contiguous(), "bias": probe.bias_L.contiguous()}
        _write(folder, manifest, "probe.safetensors", save_safetensors(tensors))
    tensors = load_safetensors(_read(folder, manifest, "probe.safetensors"))
    probe = LetterProbe(tensors["weight"], tensors["bias"])
    if "icl_accuracy" not in manifest:
        manifest["icl_accuracy"] = _icl_accuracy(model, config, test_words)
        atomic_write_json(folder / MANIFEST, manifest)
    manifest["complete"] = True
    atomic_write_json(folder / MANIFEST, manifest)
    return HookSetup(
        words=tuple(words),
        letters_N=letters_N,
        train_index=train_index,
        test_index=test_index,
        train_acts_ND=acts["train"],
        test_acts_ND=acts["test"],
        absorption_acts_ND=acts["absorption"],
        probe=probe,
        icl_accuracy=manifest["icl_accuracy"],
        vocabulary_size=int(record["vocabulary_size"]),
    )


def absorption_prompts(model: LoadedModel, config: SetupConfig, words: list[str]) -> list:
    """The absorption prompts of `words` (test words), exactly as the setup extracted them: the
    same pool (whole vocabulary) and seed, so the same examples, for any chunking."""
    pool = list(alphabetic_vocabulary(model.tokenizer).words)
    seed = config.seed + _PROMPTS + PARTS.index("absorption")
    return build_prompts(model.tokenizer, words, pool, config.n_icl_examples, seed)


def _icl_accuracy(model: LoadedModel, config: SetupConfig, test_words: list[str]) -> float | None:
    """Fraction of the first n_icl_check test prompts the model completes with " " + the
    uppercase first letter (greedy, full vocabulary)."""
    words = test_words[: config.n_icl_check]
    if not words:
        return None
    groups = build_prompts(
        model.tokenizer, words, test_words, config.n_icl_examples, config.seed + _PROMPTS + 1
    )
    predicted_N = icl_answers(model, groups, len(words), config.batch_size)
    expected_N = torch.tensor(
        [model.tokenizer(answer(w), add_special_tokens=False)["input_ids"][0] for w in words]
    )
    return float((predicted_N == expected_N).double().mean())


def _request(config: SetupConfig, model: LoadedModel) -> dict:
    return {
        **asdict(config),
        "model_dtype": str(model.dtype).removeprefix("torch."),
        "d_model": model.d_model,
        "n_layers": model.n_layers,
    }


def _resume_or_start(folder: Path, config: SetupConfig, model: LoadedModel) -> dict:
    path = folder / MANIFEST
    request = _request(config, model)
    if not path.exists():
        manifest = {"format": FORMAT, "config": request, "files": {}, "complete": False}
        atomic_write_json(path, manifest)
        return manifest
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')!r}; expected {FORMAT!r}")
    cached = manifest["config"]
    differing = sorted(k for k in request.keys() | cached.keys() if request.get(k) != cached.get(k))
    if differing:
        details = "; ".join(
            f"{k}: cached {cached.get(k)!r}, requested {request.get(k)!r}" for k in differing
        )
        raise ValueError(f"{folder} holds an absorption setup for a different request ({details})")
    return manifest


def _write(folder: Path, manifest: dict, name: str, data: bytes) -> None:
    atomic_write_bytes(folder / name, data)
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    atomic_write_json(folder / MANIFEST, manifest)


def _read(folder: Path, manifest: dict, name: str) -> bytes:
    path = folder / name
    if not path.exists():
        raise ValueError(f"absorption setup file {name} is missing from {folder}")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest["files"][name]:
        raise ValueError(f"absorption setup file {name} in {folder} is corrupt (sha256 differs)")
    return data
