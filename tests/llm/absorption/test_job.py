"""run_absorption end to end on a tiny model: outputs in SAEBench's layout, the cached per-hook
setup (reuse, resume, refusal), bad input refused with one clear line, one SAE's failure
recorded while the others run, config validation, determinism."""

import json

import pandas as pd
import pytest
import torch

import llm.absorption.hook_setup as hook_setup
import llm.absorption.job as job
from llm.absorption import AbsorptionConfig, SetupConfig, prepare_setup, run_absorption
from llm.models import load_model
from llm.saefiles import saelens_hook_name, save_sae
from tests.llm.absorption.tiny import save_letter_model
from toymodels.sae import make_sae


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_letter_model(tmp_path_factory.mktemp("letters"), "gemma3")


def _sae(folder, architecture="topk", d_in=32, layer=1, hook="resid_post", seed=0, **config):
    generator = torch.Generator().manual_seed(seed)
    sae = make_sae(architecture, d_in=d_in, n_latents=64, generator=generator, **config)
    metadata = {"hook_name": saelens_hook_name(layer, hook), "model_name": "tiny"}
    return str(save_sae(sae, folder, metadata=metadata))


def _config(model_dir, tmp_path, saes, **changes):
    settings = dict(
        model=str(model_dir),
        layer=1,
        sae_paths=tuple(saes),
        n_words=0,
        probe_epochs=5,
        min_letters=1,
        min_probe_f1=0.0,
        n_icl_check=8,
        device="cpu",
        setup_dir=str(tmp_path / "setup"),
    )
    return AbsorptionConfig(**{**settings, **changes})


def test_run_writes_tables_and_saebench_json(model_dir, tmp_path):
    saes = [_sae(tmp_path / "topk", k=4), _sae(tmp_path / "relu", "relu-l1", l1=1e-3)]
    run = run_absorption(_config(model_dir, tmp_path, saes), tmp_path / "run")
    per_letter = pd.read_csv(run.folder / "tables" / "per_letter.csv")
    assert sorted(per_letter["sae"].unique()) == ["relu", "topk"]
    assert len(per_letter) == 2 * 26
    for column in ("mean_absorption_fraction", "full_absorption_rate"):
        values = per_letter[column].dropna()
        assert ((values >= 0) & (values <= 1)).all()
    aggregate = pd.read_csv(run.folder / "tables" / "aggregate.csv")
    assert list(aggregate["sae"]) == ["topk", "relu"]
    probe = pd.read_csv(run.folder / "tables" / "probe.csv")
    assert list(probe["letter"]) == [chr(ord("A") + i) for i in range(26)]
    result = json.loads((run.folder / "results" / "topk_absorption.json").read_text())
    assert result["eval_type_id"] == "absorption_first_letter"
    assert set(result["eval_result_metrics"]["mean"]) >= {
        "mean_absorption_fraction_score",
        "mean_full_absorption_score",
        "mean_num_split_features",
    }
    assert len(result["eval_result_details"]) == 26
    assert result["eval_config"]["layer"] == 1
    metrics = json.loads((run.folder / "metrics.json").read_text())
    assert metrics["failures"] == {} and set(metrics["aggregate"]) == {"topk", "relu"}
    assert 0 <= metrics["icl_accuracy"] <= 1


def test_setup_is_reused_and_refused_for_a_different_request(model_dir, tmp_path, monkeypatch):
    saes = [_sae(tmp_path / "topk", k=4)]
    first = run_absorption(_config(model_dir, tmp_path, saes), tmp_path / "a")

    def no_forward(*args, **kwargs):
        raise AssertionError("the stored setup should have been reused")

    monkeypatch.setattr(hook_setup, "query_activations", no_forward)
    monkeypatch.setattr(hook_setup, "icl_answers", no_forward)
    second = run_absorption(_config(model_dir, tmp_path, saes), tmp_path / "b")
    pd.testing.assert_frame_equal(
        pd.read_csv(first.folder / "tables" / "per_letter.csv"),
        pd.read_csv(second.folder / "tables" / "per_letter.csv"),
    )
    with pytest.raises(ValueError, match="different request.*n_icl_examples"):
        run_absorption(_config(model_dir, tmp_path, saes, n_icl_examples=3), tmp_path / "c")


def test_interrupted_setup_resumes_to_the_same_files(model_dir, tmp_path, monkeypatch):
    model = load_model(str(model_dir), device="cpu")
    config = SetupConfig(
        model=str(model_dir),
        layer=0,
        hook="resid_post",
        n_words=None,
        test_fraction=0.2,
        n_icl_examples=4,
        seed=0,
        probe_epochs=2,
        n_icl_check=0,
        batch_size=16,
        chunk_words=50,
    )
    whole = prepare_setup(model, config, tmp_path / "whole")
    real = hook_setup.query_activations
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(hook_setup, "query_activations", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_setup(model, config, tmp_path / "resumed")
    monkeypatch.setattr(hook_setup, "query_activations", real)
    resumed = prepare_setup(model, config, tmp_path / "resumed")
    torch.testing.assert_close(resumed.train_acts_ND, whole.train_acts_ND, rtol=0, atol=0)
    torch.testing.assert_close(resumed.probe.weight_LD, whole.probe.weight_LD, rtol=0, atol=0)
    files = json.loads((tmp_path / "whole" / "manifest.json").read_text())["files"]
    assert json.loads((tmp_path / "resumed" / "manifest.json").read_text())["files"] == files
    assert sum(name.startswith("acts_train") for name in files) > 1  # really chunked
    (tmp_path / "resumed" / "probe.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="corrupt"):
        prepare_setup(model, config, tmp_path / "resumed")


def test_bad_input_is_refused_with_one_line(model_dir, tmp_path):
    good = _sae(tmp_path / "good", k=4)
    cases = [
        (dict(layer=7), [good], r"layer 7 is out of range; allowed: 0\.\.2"),
        ({}, [_sae(tmp_path / "narrow", d_in=16, k=4)], "d_in 16; the model's d_model is 32"),
        ({}, [_sae(tmp_path / "other", layer=0, k=4)], "trained at blocks.0.hook_resid_post"),
        ({}, [str(tmp_path / "missing")], "cannot read SAE"),
    ]
    for changes, saes, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            run_absorption(_config(model_dir, tmp_path, saes, **changes), tmp_path / "run")
        assert "\n" not in str(error.value)


def test_one_failing_sae_is_recorded_and_the_rest_run(model_dir, tmp_path, monkeypatch):
    saes = [_sae(tmp_path / "first", k=4), _sae(tmp_path / "second", k=4, seed=1)]
    real = job.evaluate_sae
    calls = []

    def fail_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(job, "evaluate_sae", fail_first)
    run = run_absorption(_config(model_dir, tmp_path, saes), tmp_path / "run")
    metrics = json.loads((run.folder / "metrics.json").read_text())
    assert list(metrics["failures"]) == ["first"]
    assert "RuntimeError: boom" in metrics["failures"]["first"]["error"]
    assert list(metrics["aggregate"]) == ["second"]
    assert (run.folder / "results" / "second_absorption.json").exists()


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(hook="resid_mid"), "unknown hook point 'resid_mid'; allowed: resid_pre"),
        (dict(layer=-1), "layer must be an integer >= 0, got -1"),
        (dict(n_words=1), "n_words must be 0 \\(the whole vocabulary\\) or an integer >= 2"),
        (dict(test_fraction=1.0), r"test_fraction must be in \(0, 1\), got 1.0"),
        (dict(tau=-0.1), r"tau must be in \[0, inf\], got -0.1"),
        (dict(k_max=0), "k_max must be a positive integer"),
        (dict(dtype="int8"), "unknown dtype 'int8'; allowed: float32"),
        (dict(sae_paths="one/path"), "sae_paths must be a sequence of paths"),
    ],
)
def test_config_validation_names_the_bad_value(changes, message):
    with pytest.raises(ValueError, match=message):
        AbsorptionConfig(**changes)


def test_config_documents_every_field():
    import ast
    import inspect

    source = ast.parse(inspect.getsource(AbsorptionConfig))
    body = source.body[0].body
    fields = [n.target.id for n in body if isinstance(n, ast.AnnAssign)]
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign):
            docstring = body[i + 1]
            assert isinstance(docstring, ast.Expr) and isinstance(docstring.value.value, str)
    assert "model" in fields and "sae_paths" in fields


def test_default_setup_folder_is_keyed_by_hook_and_settings(tmp_path):
    from llm.absorption.hook_setup import default_folder

    config = AbsorptionConfig(model="org/model", layer=4).setup_config()
    folder = default_folder(tmp_path, config)
    assert folder.parent == tmp_path / "org--model"
    assert folder.name.startswith("L4-resid_post-")
    assert default_folder(tmp_path, config) == folder
    other = AbsorptionConfig(model="org/model", layer=4, n_words=100).setup_config()
    assert default_folder(tmp_path, other) != folder


def test_a_preloaded_model_must_match_the_config(model_dir, tmp_path):
    model = load_model(str(model_dir), device="cpu")
    with pytest.raises(ValueError, match="the config asks for 'gemma3-270m'"):
        run_absorption(AbsorptionConfig(setup_dir=str(tmp_path)), tmp_path / "run", model=model)
