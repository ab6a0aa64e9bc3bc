"""The `sae-hedging llm` commands end to end at tiny sizes, and one-line errors on bad input."""

import json

import pandas as pd
import pytest

from llm.saefiles import load_sae
from llm.training import input_sample, normalisation_scale, split_cache
from reports.cli import main
from tests.llm.tiny_models import save_tiny_model, write_text_corpus


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    model = save_tiny_model(folder / "model", "gemma3")
    text = write_text_corpus(folder / "text", n_files=12)
    out = folder / "extract"
    status = main(
        [
            "llm",
            "extract",
            "--model",
            str(model),
            "--layer",
            "1",
            "--tokens",
            "2400",
            "--corpus",
            str(text),
            "--out",
            str(out),
            "--shard-tokens",
            "600",
            "--batch-size",
            "8",
            "--context-length",
            "16",
            "--device",
            "cpu",
        ]
    )
    assert status == 0
    return folder, model, text, out


def _read(folder, name):
    return json.loads((folder / name).read_text())


def test_extract_writes_a_run_with_the_cache(extracted):
    _, model, _, out = extracted
    manifest = _read(out, "manifest.json")
    assert manifest["model"] == str(model) and manifest["model_quantization"] is None
    assert set(manifest["data_hashes"]) == {"corpus", "activation_cache_manifest"}
    assert _read(out, "metrics.json")["n_tokens"] == 2400
    assert _read(out / "activations", "manifest.json")["complete"]


def test_train_then_eval(extracted, tmp_path):
    _, model, text, out = extracted
    train = [
        "llm",
        "train",
        "--cache",
        str(out),
        "--architecture",
        "batchtopk",
        "--width",
        "48",
        "--k",
        "4",
        "--samples",
        "2560",
        "--batch-size",
        "64",
        "--held-out-tokens",
        "500",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "train"),
    ]
    assert main(train) == 0
    metrics = _read(tmp_path / "train", "metrics.json")
    assert 0 < metrics["explained_variance"] <= 1 and metrics["input_scale"] > 0
    assert (tmp_path / "train" / "checkpoint.pt").exists()
    sae = load_sae(tmp_path / "train" / "sae")
    assert sae.sae.architecture == "batchtopk"
    assert sae.metadata["hook_name"] == "blocks.1.hook_resid_post"
    assert len(pd.read_csv(tmp_path / "train" / "tables" / "training_log.csv")) >= 1
    assert main(train) == 0  # a second call resumes the finished checkpoint
    assert _read(tmp_path / "train", "metrics.json")["explained_variance"] == pytest.approx(
        metrics["explained_variance"]
    )

    assert (
        main(
            [
                "llm",
                "eval",
                "--sae",
                str(tmp_path / "train" / "sae"),
                "--cache",
                str(out),
                "--corpus",
                str(text),
                "--batches",
                "1",
                "--batch-size",
                "2",
                "--held-out-tokens",
                "500",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    evaluation = _read(tmp_path / "eval", "metrics.json")
    assert evaluation["explained_variance"] == pytest.approx(
        metrics["explained_variance"], abs=1e-4
    )
    assert evaluation["ce_zero"] > 0 and evaluation["n_predictions"] > 0
    assert _read(tmp_path / "eval", "manifest.json")["model"] == str(model)


def test_hedging_writes_its_tables(extracted, tmp_path):
    _, _, _, out = extracted
    assert (
        main(
            [
                "llm",
                "hedging",
                "--cache",
                str(out),
                "--widths",
                "8",
                "16",
                "--n-new",
                "4",
                "--samples",
                "640",
                "--batch-size",
                "64",
                "--k",
                "3",
                "--l1",
                "0.5",
                "--mus",
                "0",
                "1",
                "--held-out-tokens",
                "500",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "hedging"),
            ]
        )
        == 0
    )
    table = pd.read_csv(tmp_path / "hedging" / "tables" / "hedging_vs_width.csv")
    assert {"width", "architecture", "seed", "hedging_degree", "n_new"} <= set(table.columns)
    assert sorted(zip(table.architecture, table.width, strict=True)) == [
        ("batchtopk", 8),
        ("batchtopk", 16),
        ("relu-l1", 8),
        ("relu-l1", 16),
    ]
    assert table.hedging_degree.between(0, 1).all() and (table.n_new == 4).all()
    mu_table = pd.read_csv(tmp_path / "hedging" / "tables" / "hedging_vs_mu.csv")
    assert sorted(mu_table.mu) == [0.0, 1.0]
    metrics = _read(tmp_path / "hedging", "metrics.json")
    assert metrics["predicted_sign_width_vs_hedging"] == "negative"
    assert "spearman_width_vs_hedging_batchtopk" in metrics


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["llm", "train", "--cache", "{tmp}", "--out", "{tmp}/x"], "not an activation cache"),
        (
            ["llm", "hedging", "--cache", "{out}", "--architectures", "gated", "--out", "{tmp}/h"],
            "unknown architecture 'gated'",
        ),
        (["llm", "hedging", "--cache", "{out}", "--widths", "8", "x"], "invalid int value: 'x'"),
        (
            [
                "llm",
                "eval",
                "--sae",
                "{tmp}",
                "--cache",
                "{out}",
                "--held-out-tokens",
                "500",
                "--out",
                "{tmp}/e",
            ],
            "neither an SAE folder",
        ),
        (["llm", "train", "--cache", "{out}", "--architecture", "gated"], "unknown architecture"),
        (["llm", "train", "--cache", "{out}", "--width", "16", "--k", "32"], "k = 32 exceeds"),
        (
            ["llm", "train", "--cache", "{out}", "--precision", "fp16"],
            "unknown precision 'fp16'; allowed: fp32, bf16",
        ),
        (
            ["llm", "train", "--cache", "{out}", "--held-out-tokens", "10000000"],
            "held_out_tokens = 10000000 is more than",
        ),
    ],
)
def test_bad_input_is_one_line_and_status_2(extracted, tmp_path, capsys, argv, message):
    out = extracted[3]
    argv = [a.format(tmp=tmp_path, out=out) for a in argv]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def test_hedging_runs_both_protocols_side_by_side(extracted, tmp_path):
    _, _, _, out = extracted
    argv = ["llm", "hedging", "--cache", str(out), "--widths", "8", "16", "--n-new", "4"]
    argv += ["--samples", "640", "--batch-size", "64", "--k", "3", "--l1", "0.5", "--mus"]
    argv += ["--held-out-tokens", "500", "--device", "cpu", "--protocol", "both"]
    assert main([*argv, "--out", str(tmp_path / "both")]) == 0
    table = pd.read_csv(tmp_path / "both" / "tables" / "hedging_vs_width.csv")
    assert sorted(set(table.protocol)) == ["paper", "toolkit"] and len(table) == 8
    # same cache, seeds and initialisation; only the protocol differs
    by_protocol = pd.read_csv(tmp_path / "both" / "tables" / "hedging_by_protocol.csv")
    assert len(by_protocol) == 8 and (by_protocol.seeds == 1).all()
    metrics = _read(tmp_path / "both", "metrics.json")
    assert "spearman_width_vs_hedging_batchtopk" in metrics
    assert "spearman_width_vs_hedging_batchtopk_paper" in metrics
    paper = metrics["paper_protocol"]
    assert paper["batchtopk"]["rank_by"] == "activation"
    assert paper["relu-l1"]["stage_lr"] == 7e-5 and paper["relu-l1"]["normalize"] is False
    # no paper value for this model: the toolkit's 0.5 carried to raw units
    split = split_cache(out, 500)
    scale = normalisation_scale(input_sample(split, 16_384, 0))
    assert paper["relu-l1"]["l1"] == pytest.approx(0.5 / scale)
    assert _read(tmp_path / "both", "config.json")["protocol"] == "both"
