"""run_absorption_sweep end to end on a tiny letter model: one SAE per (width, k), the tables,
reuse of finished SAEs and of the absorption run, one SAE's failure recorded while the others
run, and the latent-classifier scores on a hand-built code matrix."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse

import llm.jobs as jobs
from llm.absorption.sweep import (
    AbsorptionSweepConfig,
    latent_classifier_scores,
    run_absorption_sweep,
)
from llm.cache import ExtractConfig, extract
from llm.corpus import load_corpus
from llm.models import load_model
from tests.llm.absorption.tiny import save_letter_model
from tests.llm.tiny_models import write_text_corpus
from toymodels.train import TrainConfig


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    model = load_model(str(save_letter_model(root / "model", "gemma3")), "cpu")
    corpus = load_corpus(str(write_text_corpus(root / "text", n_files=4)))
    config = ExtractConfig(
        model=model.name, layer=1, tokens=1200, shard_tokens=400, batch_size=8, context_length=16
    )
    extract(model, corpus, config, root / "cache")
    return root / "cache"


def _config(cache, tmp_path, **changes):
    settings = dict(
        cache=str(cache),
        widths=(16, 32),
        ks=(2, 4),
        held_out_tokens=400,
        train=TrainConfig(samples=1024, batch_size=128, device="cpu", progress=False),
        n_words=0,
        probe_epochs=3,
        k_max=3,
        min_letters=1,
        min_probe_f1=0.0,
        n_icl_check=0,
        setup_dir=str(tmp_path / "setup"),
    )
    return AbsorptionSweepConfig(**{**settings, **changes})


def test_sweep_writes_one_row_per_sae_and_reuses_finished_work(cache, tmp_path, monkeypatch):
    config = _config(cache, tmp_path)
    run = run_absorption_sweep(config, tmp_path / "run")
    run.close()
    table = pd.read_csv(run.folder / "tables" / "sweep.csv")
    assert list(zip(table.width, table.k, strict=True)) == [(16, 2), (16, 4), (32, 2), (32, 4)]
    assert (table.status == "ok").all()
    for column in ("mean_absorption_fraction", "full_absorption_rate", "main_precision",
                   "main_recall", "main_f1", "best_latent_f1"):  # fmt: skip
        assert table[column].between(0, 1).all(), column
    assert ((table.l0 > 0) & (table.l0 <= table.k + 1e-6)).all()  # TopK: L0 <= k
    assert table.explained_variance.notna().all()
    per_letter = pd.read_csv(run.folder / "tables" / "per_letter.csv")
    assert len(per_letter) == 4 * 26 and {"width", "k", "main_recall"} <= set(per_letter)
    probe = pd.read_csv(run.folder / "tables" / "probe.csv")
    assert len(probe) == 26
    manifest = json.loads((run.folder / "manifest.json").read_text())
    assert manifest["kind"] == "llm-absorption-sweep"

    # a second call reuses every trained SAE and the finished absorption run
    def refuse(*args, **kwargs):
        raise AssertionError("finished work should have been reused")

    monkeypatch.setattr(jobs, "run_train", refuse)
    monkeypatch.setattr("llm.absorption.job.run_absorption", refuse)
    again = run_absorption_sweep(config, tmp_path / "run")
    again.close()
    assert pd.read_csv(again.folder / "tables" / "sweep.csv").equals(table)


def test_one_failing_sae_is_recorded_and_the_others_run(cache, tmp_path, monkeypatch):
    real = jobs.run_train

    def flaky(config, out, **kwargs):
        if (config.width, config.k) == (32, 2):
            raise RuntimeError("out of memory")
        return real(config, out, **kwargs)

    monkeypatch.setattr(jobs, "run_train", flaky)
    run = run_absorption_sweep(_config(cache, tmp_path), tmp_path / "run")
    run.close()
    table = pd.read_csv(run.folder / "tables" / "sweep.csv").set_index("sae")
    assert table.loc["w32_k2", "status"] == "train failed"
    assert np.isnan(table.loc["w32_k2", "mean_absorption_fraction"])
    assert (table.drop(index="w32_k2").status == "ok").all()
    metrics = json.loads((run.folder / "metrics.json").read_text())
    assert metrics["failures"]["w32_k2"]["error"] == "RuntimeError: out of memory"
    assert set(pd.read_csv(run.folder / "tables" / "per_letter.csv").sae) == {
        "w16_k2", "w16_k4", "w32_k4"
    }  # fmt: skip


def test_latent_classifier_scores_on_hand_built_codes():
    # 6 words: letters 0,0,0,1,1,2; latent 0 fires on two of letter 0's words and one of
    # letter 1's; latent 1 fires on all of letter 1's words only
    codes = np.zeros((6, 3))
    codes[[0, 1, 3], 0] = 1.0
    codes[[3, 4], 1] = 2.0
    letters = np.array([0, 0, 0, 1, 1, 2])
    scores = latent_classifier_scores(
        scipy.sparse.csr_matrix(codes), letters, [[0], [1], []], n_letters=3
    )
    assert scores.main_precision[0] == pytest.approx(2 / 3)
    assert scores.main_recall[0] == pytest.approx(2 / 3)
    assert scores.main_precision[1] == 1.0 and scores.main_recall[1] == 1.0
    assert scores.best_latent_f1[1] == 1.0
    assert np.isnan(scores.main_precision[2]) and scores.main_recall[2] == 0.0
    assert scores.best_latent_f1[2] == 0.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"widths": ()}, "widths needs at least one value"),
        ({"ks": (4, 4)}, "ks must be distinct"),
        ({"widths": (16,), "ks": (32,)}, "k exceeds width"),
        ({"n_words": 1}, "n_words"),
        ({"dtype": "int8"}, "dtype"),
        ({"test_fraction": 1.0}, "test_fraction"),
    ],
)
def test_bad_settings_are_refused(changes, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        _config("c", tmp_path, **changes)


def test_the_command_runs_the_sweep_and_prints_its_table(cache, tmp_path, capsys):
    from reports.cli import main

    argv = ["llm", "absorption-sweep", "--cache", str(cache), "--widths", "16", "--ks", "2",
            "--held-out-tokens", "400", "--samples", "512", "--batch-size", "128",
            "--device", "cpu", "--n-words", "0", "--probe-epochs", "2", "--k-max", "2",
            "--min-letters", "1", "--min-probe-f1", "0", "--n-icl-check", "0",
            "--setup-dir", str(tmp_path / "setup"), "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mean_absorption_fraction" in printed and "sweep tables in" in printed
    assert (tmp_path / "run" / "saes" / "w16_k2" / "sae" / "cfg.json").is_file()
