"""Typed configs: each round-trips through JSON and through the command line, and a flag's help
is its field's docstring."""

from __future__ import annotations

import dataclasses
import json
import re
import typing

import pytest
from simple_parsing.docstring import get_attribute_docstring

from llm.absorption.job import AbsorptionConfig
from llm.absorption.sweep import AbsorptionSweepConfig
from llm.cache import ExtractConfig
from llm.hedging import LLMHedgingConfig
from llm.hedging_scan import HedgingScanConfig
from llm.jobs import EvalConfig, SAETrainConfig
from reports.cli import build_parser, main
from reports.commands import ReportConfig
from reports.pipeline import PipelineConfig, TheorySummaryConfig
from theory.config import config_from_json, config_to_json
from theory.derive import DeriveConfig
from theory.features import WorldConfig
from theory.sae import SAESpec
from toymodels.experiments.absorption import ToyAbsorptionConfig
from toymodels.experiments.hedging_width import HedgingWidthConfig
from toymodels.experiments.matryoshka import ToyMatryoshkaConfig
from toymodels.experiments.scenarios import FitConfig, ScenariosConfig, ToyTrainConfig
from toymodels.sae import make_sae, sae_class
from toymodels.train import TrainConfig
from toymodels.worlds import LargeWorld

SMALL = TrainConfig(
    samples=8192,
    batch_size=512,
    lr=0.003,
    seed=7,
    device="cpu",
    progress=False,
    adam_betas=(0.5, 0.99),
    l1_warmup_steps=3,
)

# (command words, a config that differs from the defaults wherever it can)
COMMANDS = [
    (
        ["derive"],
        DeriveConfig(
            world=WorldConfig(scenario="correlated", p_parent=0.3, p_child_given_parent=0.4),
            sae=SAESpec(width=2, l1=0.05, tied=True, decoder_bias=False),
            symbolic=True,
            seed=3,
        ),
    ),
    (
        ["toy", "train"],
        ToyTrainConfig(
            world=WorldConfig(joint="00:0.6,10:0.2,01:0.05,11:0.15"),
            sae=SAESpec(width=1, l1=0.02),
            fit=FitConfig(restarts=3, d_in=20, held_out_samples=1000, train=SMALL),
        ),
    ),
    (
        ["toy", "scenarios"],
        ScenariosConfig(
            scenarios=("correlated", "hierarchical"),
            l1_values=(0.01,),
            widths=(1,),
            fit=FitConfig(restarts=2, train=SMALL),
        ),
    ),
    (
        ["toy", "hedging-width"],
        HedgingWidthConfig(
            widths=(15, 20),
            seeds=3,
            new_latents=2,
            world=LargeWorld(
                n_features=30,
                d_in=20,
                seed=4,
                n_trees=2,
                correlation="clusters",
                child_probability=(0.1, 0.3),
            ),
            protocol="paper",
            train=SMALL,
        ),
    ),
    (
        ["toy", "absorption"],
        ToyAbsorptionConfig(
            l1_values=(0.05,), leaks=(0.0,), seeds=1, eval_samples=500, train=SMALL
        ),
    ),
    (
        ["toy", "matryoshka"],
        ToyMatryoshkaConfig(mu_values=(0.5,), seeds=1, l1=0.1, protocol="paper", train=SMALL),
    ),
    (
        ["llm", "extract"],
        ExtractConfig(
            model="smollm2-135m",
            layer=3,
            hook="mlp_out",
            tokens=5000,
            corpus="text/",
            dtype="bfloat16",
            device="cpu",
            shard_tokens=1000,
            batch_size=4,
            context_length=64,
        ),
    ),
    (
        ["llm", "train"],
        SAETrainConfig(
            cache="runs/x",
            architecture="relu-l1",
            width=256,
            k=8,
            l1=0.5,
            l0_coefficient=0.2,
            normalize=False,
            held_out_tokens=1000,
            train=SMALL,
        ),
    ),
    (
        ["llm", "eval"],
        EvalConfig(sae="runs/t", cache="runs/x", model="gemma3-270m", corpus="c", batches=2),
    ),
    (
        ["llm", "hedging"],
        LLMHedgingConfig(
            cache="runs/x",
            widths=(64, 128),
            architectures=("relu-l1",),
            n_new=8,
            k=4,
            l1=1.0,
            mus=(),
            seeds=2,
            protocol="both",
            train=SMALL,
        ),
    ),
    (
        ["llm", "absorption"],
        AbsorptionConfig(
            model="smollm2-135m",
            layer=2,
            sae_paths=("runs/t", "gs/params.npz"),
            n_words=0,
            tau=0.05,
            causal_metric=True,
            setup_dir="setups/x",
        ),
    ),
    (
        ["llm", "hedging-scan"],
        HedgingScanConfig(
            layers=(1, 3),
            n_news=(4, 16),
            width=64,
            architecture="relu-l1",
            seeds=3,
            extract=ExtractConfig(model="smollm2-135m", tokens=5000),
            train=SMALL,
        ),
    ),
    (
        ["llm", "absorption-sweep"],
        AbsorptionSweepConfig(
            cache="runs/x",
            widths=(64, 128),
            ks=(4,),
            normalize=False,
            held_out_tokens=1000,
            train=SMALL,
            n_words=0,
            test_fraction=0.25,
            n_icl_examples=5,
            absorption_seed=3,
            probe_epochs=7,
            k_max=5,
            tau=0.05,
            min_probe_f1=0.5,
            min_letters=10,
            n_icl_check=0,
            prompt_batch_size=16,
            dtype="bfloat16",
            setup_dir="setups/x",
        ),
    ),
    (["report"], ReportConfig(runs=("runs/a", "runs/b"), title="A title")),
    (
        ["run"],
        PipelineConfig(
            model="smollm2-135m",
            layer=2,
            tokens=9000,
            llm=False,
            title="T",
            scale="study",
            dry_run=True,
        ),
    ),
]
SAE_CONFIGS = [
    *(
        (name, sae_class(name).config_class(d_in=5, n_latents=4, n_members=2, widths=(3, 4)))
        for name in ("relu-l1", "jumprelu")
    ),
    *(
        (
            name,
            sae_class(name).config_class(
                d_in=5, n_latents=4, n_members=2, widths=(3, 4), rank_by="activation"
            ),
        )
        for name in ("topk", "batchtopk")
    ),
    *(
        (
            "matryoshka",
            sae_class("matryoshka", inner).config_class(
                d_in=5,
                n_latents=4,
                n_members=2,
                levels=(1, 4),
                mu=(0.0, 0.5),
                tied=True,
                level_sparsity=True,
            ),
        )
        for inner in ("relu-l1", "topk", "batchtopk", "jumprelu")
    ),
]
LIBRARY_ONLY = [
    TheorySummaryConfig(l1_values=(0.01, 0.02), width2_l1=0.01),
    *(config for _, config in SAE_CONFIGS),
]


def _command_id(value: object) -> str:
    return " ".join(value) if isinstance(value, list) else ""


def _leaves(config_class: type, parent: str = "") -> list[tuple[type, str, str]]:
    """(class, field, path) of every non-config field, nested configs flattened."""
    hints = typing.get_type_hints(config_class)
    leaves = []
    for field in dataclasses.fields(config_class):
        if dataclasses.is_dataclass(hints[field.name]):
            leaves += _leaves(hints[field.name], f"{parent}{field.name}.")
        else:
            leaves.append((config_class, field.name, f"{parent}{field.name}"))
    return leaves


def _flags(config_class: type) -> dict[str, str]:
    """Field path -> flag, as the CLI builds them: --name, or --parent.name where two nested
    configs share a field name."""
    leaves = _leaves(config_class)
    names = [name for _, name, _ in leaves]
    flags = {}
    for _, name, path in leaves:
        shown = ".".join(path.split(".")[-2:]) if names.count(name) > 1 else name
        flags[path] = "RUN" if name == "runs" else "--" + shown.replace("_", "-")
    return flags


def to_argv(config: object) -> list[str]:
    """The flags that give `config`."""
    argv = []
    for path, flag in _flags(type(config)).items():
        value = config
        for part in path.split("."):
            value = getattr(value, part)
        if flag == "RUN":  # the report's positional run folders
            argv += list(value)
        elif value is None:
            continue
        elif isinstance(value, tuple):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


@pytest.mark.parametrize("config", [c for _, c in COMMANDS] + LIBRARY_ONLY, ids=repr)
def test_every_config_round_trips_through_json(config):
    data = json.loads(json.dumps(config_to_json(config)))
    assert config_from_json(type(config), data) == config
    default = type(config)(**{f.name: getattr(config, f.name) for f in _required(config)})
    assert config_from_json(type(config), config_to_json(default)) == default


def _required(config):
    return [
        f
        for f in dataclasses.fields(config)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


@pytest.mark.parametrize(("words", "config"), COMMANDS, ids=_command_id)
def test_the_parsed_config_equals_the_one_built_in_code(words, config):
    out = [] if words in (["derive"], ["toy", "train"]) else ["--out", "somewhere"]
    args = build_parser().parse_args([*words, *to_argv(config), *out])
    assert args.config == config
    # and the defaults are the config class's defaults
    required = {f.name: getattr(config, f.name) for f in _required(config)}
    required_argv = to_argv(type(config)(**required)) if required else []
    defaults = build_parser().parse_args([*words, *required_argv, *out]).config
    assert defaults == type(config)(**required)


@pytest.mark.parametrize(("words", "config"), COMMANDS, ids=_command_id)
def test_a_flags_help_is_its_fields_docstring(words, config, capsys):
    assert main([*words, "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    flags = _flags(type(config))
    for cls, name, path in _leaves(type(config)):
        docstring = get_attribute_docstring(cls, name).docstring_below
        assert docstring, f"{cls.__name__}.{name} has no docstring"
        # the flag, its metavar (and a bool's negative flag), then the docstring
        pattern = (
            re.escape(flags[path]) + r"(?: \S+){0,6}? " + re.escape(" ".join(docstring.split()))
        )
        assert re.search(pattern, help_text), f"{cls.__name__}.{name}: {docstring!r}"


def test_unknown_keys_in_a_config_file_are_refused():
    with pytest.raises(ValueError, match="has no field"):
        config_from_json(TrainConfig, {"lr": 0.1, "learning_rate": 0.1})
    with pytest.raises(ValueError, match="has no field"):
        config_from_json(ScenariosConfig, {"fit": {"train": {"lrr": 1}}})


@pytest.mark.parametrize(("architecture", "config"), SAE_CONFIGS, ids=repr)
def test_an_sae_config_rebuilds_the_same_sae(architecture, config):
    sae = sae_class(architecture, getattr(config, "inner", "batchtopk"))(config)
    rebuilt = make_sae(**json.loads(json.dumps(sae.full_config())))
    assert rebuilt.config == config and rebuilt.family_class() is sae.family_class()
