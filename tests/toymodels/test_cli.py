"""`sae-hedging toy`: the train command's JSON contract, one-line errors, experiment wiring."""

import json

import pytest
import torch

from reports.cli import main
from toymodels.runs import read_run

DERIVE_KEYS = {"encoder", "encoder_bias", "decoder", "decoder_bias", "expected_loss"}


def run_cli(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_train_prints_the_trained_sae_next_to_derive(capsys):
    status, out, _ = run_cli(
        capsys,
        "toy",
        "train",
        "--joint",
        "00:0.6,10:0.2,01:0.05,11:0.15",
        "--width",
        "1",
        "--l1",
        "0.02",
        "--samples",
        "200000",
        "--restarts",
        "4",
        "--json",
    )
    assert status == 0
    record = json.loads(out)
    assert DERIVE_KEYS <= set(record) and DERIVE_KEYS <= set(record["theory"])
    assert {"fires_on", "spec", "model"} <= set(record["theory"])
    assert set(record["difference"]) == {
        "decoder_cosine_distance",
        "decoder_child_components",
        "loss_gap",
    }
    decoder = torch.tensor(record["decoder"], dtype=torch.float64)
    assert decoder.shape == (1, 2)
    torch.testing.assert_close(decoder.norm(dim=1), torch.ones(1, dtype=torch.float64))
    # This world hedges: theory's latent carries a child component, and training finds it.
    theory_child = record["theory"]["decoder"][0][1]
    assert theory_child > 0.1
    assert record["decoder"][0][1] == pytest.approx(theory_child, abs=0.03)
    assert record["difference"]["loss_gap"] == pytest.approx(
        record["expected_loss"] - record["theory"]["expected_loss"]
    )


@pytest.mark.parametrize(
    "argv", [["--architecture", "topk", "--k", "1"], ["--architecture", "jumprelu", "--l0", "0.01"]]
)
def test_train_trains_the_architecture_theory_solves(capsys, argv):
    status, out, _ = run_cli(
        capsys, "toy", "train", "--scenario", "hierarchical", *argv, "--samples", "20000", "--json"
    )
    assert status == 0
    record = json.loads(out)
    assert record["training"]["architecture"] == argv[1]
    assert record["theory"]["spec"]["architecture"] == argv[1]
    assert ("threshold" in record) == (argv[1] == "jumprelu")
    assert record["difference"]["loss_gap"] == pytest.approx(
        record["expected_loss"] - record["theory"]["expected_loss"]
    )


def test_train_on_a_generalised_world_reaches_its_optimum(capsys):
    """Cosine 0.3, two-point magnitudes and a little noise: the trained decoder (in the state
    coordinates) lands on derive's optimum of the same world (noiseless states)."""
    status, out, _ = run_cli(
        capsys,
        *("toy", "train", "--joint", "00:0.6,10:0.2,01:0.05,11:0.15", "--cosines", "0.3"),
        *("--magnitude-std", "0.2", "0.2", "--noise-std", "0.02", "--width", "1"),
        *("--l1", "0.02", "--samples", "200000", "--restarts", "4", "--json"),
    )
    assert status == 0
    record = json.loads(out)
    theory = record["theory"]
    assert theory["model"]["gram"] == [[1.0, 0.3], [0.3, 1.0]]
    assert theory["decoder_in_features"][0][1] > 0.3  # it hedges
    assert record["difference"]["decoder_cosine_distance"][0] < 1e-3
    assert abs(record["difference"]["loss_gap"]) < 1e-3


def test_train_scenario_tied_without_decoder_bias(capsys):
    status, out, _ = run_cli(
        capsys,
        "toy",
        "train",
        "--scenario",
        "independent",
        "--tied",
        "--decoder-bias",
        "false",
        "--samples",
        "20000",
        "--json",
    )
    assert status == 0
    record = json.loads(out)
    assert record["decoder_bias"] == [0.0, 0.0]
    assert record["theory"]["spec"] == {
        "width": 1,
        "l1": 0.0,
        "tied": True,
        "decoder_bias": False,
        "architecture": "relu-l1",
        "k": 1,
        "l0": 0.0,
    }
    # tied before folding means encoder rows parallel to decoder rows after it
    encoder = torch.tensor(record["encoder"], dtype=torch.float64)
    decoder = torch.tensor(record["decoder"], dtype=torch.float64)
    cosine = torch.nn.functional.cosine_similarity(encoder, decoder, dim=1)
    torch.testing.assert_close(cosine, torch.ones(1, dtype=torch.float64))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--joint", "00:0.6,10:0.2"], "sum to"),
        (["--scenario", "sideways"], "unknown scenario"),
        (["--scenario", "hierarchical", "--samples", "0"], "samples must be a positive integer"),
        (["--scenario", "hierarchical", "--d-in", "1"], "d_in"),
        (["--scenario", "hierarchical", "--lr", "-1"], "lr must be in (0"),
        (["--scenario", "hierarchical", "--width", "0"], "width"),
        (["--scenario", "hierarchical", "--samples", "100", "--batch-size", "1000"], "batch_size"),
        (["--scenario", "hierarchical", "--architecture", "topk", "--tied"], "tied topk"),
        (["--scenario", "hierarchical", "--architecture", "jumprelu", "--l0", "-1"], "l0 must"),
        (["--scenario", "hierarchical", "--architecture", "topk", "--l1", "0.1"], "relu-l1 only"),
        (["--scenario", "hierarchical", "--cosines", "-2"], "cosines must be in [-1, 1]"),
        (["--scenario", "hierarchical", "--magnitude-std", "2", "0"], "0 <= std < mean"),
    ],
)
def test_bad_train_input_is_one_line_with_status_two(capsys, argv, message):
    status, out, err = run_cli(capsys, "toy", "train", *argv)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and message in err


def test_experiment_command_writes_a_run_folder(capsys, tmp_path):
    status, out, _ = run_cli(
        capsys,
        "toy",
        "matryoshka",
        "--samples",
        "2048",
        "--seeds",
        "1",
        "--out",
        str(tmp_path / "m"),
    )
    assert status == 0 and "best_mu" in out
    assert "matryoshka_vs_mu" in read_run(tmp_path / "m")["tables"]
    status, _, err = run_cli(capsys, "toy", "absorption", "--seeds", "0")
    assert status == 2 and "seeds must be a positive integer" in err
