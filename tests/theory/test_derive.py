"""The `derive` command: contract keys, agreement with theory, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reports.cli import main
from theory.features import from_table
from theory.optimum import global_optimum
from theory.sae import SAEParams, SAESpec, codes


def _derive(capsys, *args):
    code = main(["derive", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_contract_and_values(capsys):
    table = "00:0.6,10:0.2,01:0.05,11:0.15"
    code, out, _ = _derive(capsys, "--joint", table, "--width", "1", "--l1", "0", "--json")
    assert code == 0
    record = json.loads(out)
    for key, shape in [
        ("encoder", (1, 2)),
        ("encoder_bias", (1,)),
        ("decoder", (1, 2)),
        ("decoder_bias", (2,)),
    ]:
        assert np.shape(record[key]) == shape
    expected = global_optimum(from_table(table), SAESpec(1, 0))
    assert record["expected_loss"] == pytest.approx(expected.loss)
    assert np.allclose(record["decoder"], expected.params.decoder)


def test_scenario_shortcut_and_symbolic(capsys):
    code, out, _ = _derive(
        capsys, "--scenario", "correlated", "--p-child-given-parent", "0.3", "--symbolic", "--json"
    )
    record = json.loads(out)
    assert code == 0
    assert record["model"]["states"]["11"] == pytest.approx(0.25 * 0.3)
    assert "hedging_ratio" in record["symbolic"] and "P_{11}" in record["symbolic"]["H"]


def test_variants_select_the_sae(capsys):
    _, out, _ = _derive(
        capsys, "--scenario", "hierarchical", "--tied", "--decoder-bias", "false", "--json"
    )
    record = json.loads(out)
    assert record["spec"] == {
        "width": 1,
        "l1": 0.0,
        "tied": True,
        "decoder_bias": False,
        "architecture": "relu-l1",
        "k": 1,
        "l0": 0.0,
    }
    assert record["decoder_bias"] == [0.0, 0.0]
    assert np.allclose(record["encoder"], np.abs(record["encoder"]))


def test_fires_on_lists_exactly_the_states_with_a_positive_code(capsys):
    """The tied width-2 optimum of issue 12 has a pre-activation exactly 0 on a state: that
    state is not one the latent fires on."""
    table = "00:0.675,10:0.2,01:0.075,11:0.05"
    _, out, _ = _derive(
        capsys, "--joint", table, "--width", "2", "--tied", "--l1", "0.02", "--json"
    )
    record = json.loads(out)
    params = SAEParams(
        **{key: np.array(record[key]) for key in SAEParams.__dataclass_fields__ if key in record}
    )
    h = codes(from_table(table).numeric(), params)
    patterns = list(record["model"]["states"])
    for i, fires in enumerate(record["fires_on"]):
        assert fires == [pat for s, pat in enumerate(patterns) if h[s, i] > 0]
    assert record["expected_loss"] == pytest.approx(0.0074517, abs=1e-7)  # a limit latent
    assert np.allclose(record["encoder"], record["decoder"], rtol=0, atol=1e-9)


def test_generalised_world_options_reach_the_model_and_its_predictions(capsys):
    """Random magnitudes, a cosine and noise on the command line: the model derive describes,
    the decoder written in the features, and the catalogue's predictions at its parameters."""
    code, out, _ = _derive(
        capsys,
        *("--scenario", "hierarchical", "--magnitude-std", "0.2", "0.3"),
        *("--magnitude-correlation", "0.5", "--cosines", "0.3", "--json"),
    )
    assert code == 0
    record = json.loads(out)
    assert record["model"]["gram"] == [[1.0, 0.3], [0.3, 1.0]]
    assert "11@1.2,1.3" in record["model"]["states"]
    moments = record["predictions"]["tracking_hedging_coefficient_moments"]["value"]
    assert moments == pytest.approx(0.2 * (1 + 0.5 * 0.2 * 0.3) / (1 + 0.2**2))
    F = np.array([[1.0, 0.0], [0.3, np.sqrt(1 - 0.09)]])
    np.testing.assert_allclose(
        np.array(record["decoder_in_features"]) @ F, record["decoder"], atol=1e-12
    )
    # constant magnitudes and a cosine: the cosine prediction is recorded and is the optimum's
    _, out, _ = _derive(capsys, "--scenario", "hierarchical", "--cosines", "0.3", "--json")
    record = json.loads(out)
    alpha = record["decoder_in_features"][0]
    predicted = record["predictions"]["width1_decoder_ratio_cosine[10,11]"]["value"]
    assert alpha[1] / alpha[0] == pytest.approx(predicted, rel=1e-6)


def test_noise_gives_the_noiseless_optimum_and_what_noise_does(capsys):
    code, out, _ = _derive(
        capsys, "--scenario", "correlated", "--noise-std", "0.1", "0.3", "--json"
    )
    assert code == 0
    record = json.loads(out)
    _, clean, _ = _derive(capsys, "--scenario", "correlated", "--json")
    assert record["expected_loss"] == pytest.approx(json.loads(clean)["expected_loss"])
    assert record["model"]["noise_std"] == [0.1, 0.3]
    assert record["noise"]["noise_variance_total"] == pytest.approx(0.1)
    assert record["noise"]["exact"] is False  # the optimum fires on 3 of the 4 states
    assert "width1_decoder_ratio_noise" in record["predictions"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--scenario", "hierarchical", "--cosines", "1.5"], "cosines must be in [-1, 1]"),
        (["--scenario", "hierarchical", "--cosines", "0.1", "0.2"], "2 cosines given"),
        (["--joint", "000:1", "--cosines", "0.9", "0.9", "-0.9"], "eigenvalue"),
        (["--scenario", "hierarchical", "--magnitude-std", "1.0", "0.1"], "0 <= std < mean"),
        (["--scenario", "hierarchical", "--magnitude-std", "0.1"], "magnitude_std has 1 values"),
        (["--scenario", "hierarchical", "--magnitude-correlation", "0.5"], "needs magnitude_std"),
        (["--scenario", "hierarchical", "--magnitude-correlation", "2"], "in [-1, 1], got 2"),
        (
            ["--joint", "000:1", "--magnitude-std", "0.1", "0.1", "0.1"]
            + ["--magnitude-correlation", "-0.5"],
            "allowed: 0 <= correlation <= 1",
        ),
        (["--scenario", "hierarchical", "--magnitudes", "0", "1"], "magnitudes must be > 0"),
        (["--scenario", "hierarchical", "--noise-std", "-0.1"], "noise_std must be >= 0"),
        (["--scenario", "hierarchical", "--noise-std", "1", "2", "3"], "allowed: 1 (isotropic)"),
        (["--scenario", "hierarchical", "--noise-std", "nan"], "finite"),
    ],
)
def test_generalised_world_bad_values_are_one_line_and_status_2(capsys, args, needle):
    code, _, err = _derive(capsys, *args)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--joint", "00:0.6,10:0.5"], "sum to 1.1"),
        (["--joint", "00:0.5,1x:0.5"], "'1x'"),
        (["--joint", "00:1.2,10:-0.2"], "P(00) = 6/5"),
        (["--scenario", "sideways"], "'sideways'"),
        (["--scenario", "correlated", "--p-parent", "1.5"], "p_parent = 3/2"),
        (["--scenario", "correlated", "--width", "0"], "width must be a positive integer"),
        (["--scenario", "correlated", "--l1", "-1"], "l1 must be >= 0"),
        (["--scenario", "correlated", "--l1", "1e300"], "l1 = 1e+300 is too large: allowed"),
        (["--scenario", "correlated", "--width", "2", "--l1", "1e300"], "<= 1e+100"),
        (["--scenario", "correlated", "--width", "two"], "invalid int value: 'two'"),
        ([], "give a state table (joint) or a scenario"),
        (["--joint", "00:1", "--scenario", "correlated"], "not both"),
        (["--scenario", "correlated", "--architecture", "gated"], "unknown architecture 'gated'"),
        (["--scenario", "correlated", "--levels", "1"], "need architecture matryoshka"),
        (["--scenario", "correlated", "--balance", "true"], "balance needs architecture"),
        (["--scenario", "correlated", "--architecture", "topk", "--k", "0"], "k must be"),
        (["--scenario", "correlated", "--k", "2"], "k = 2 applies to topk and batchtopk"),
        (["--scenario", "correlated", "--architecture", "topk", "--l1", "0.1"], "relu-l1 only"),
        (["--scenario", "correlated", "--architecture", "jumprelu", "--l0", "-1"], "l0 must"),
        (["--scenario", "correlated", "--l0", "0.1"], "l0 = 0.1 applies to jumprelu only"),
        (["--scenario", "correlated", "--architecture", "topk", "--tied"], "tied topk"),
        (["--scenario", "correlated", "--method", "sampled"], "allowed: exact, numeric"),
        (["--scenario", "correlated", "--method", "numeric", "--starts", "0"], "starts must"),
    ],
)
def test_invalid_input_is_one_line_and_status_2(capsys, args, needle):
    code, _, err = _derive(capsys, *args)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1


def test_matryoshka_optimum_and_balance(capsys):
    """`derive --architecture matryoshka`: the exact optimum of the level loss, and with
    --balance the mu where the inner latent's encoder turns from absorbing to hedging."""
    args = ["--scenario", "hierarchical", "--width", "2", "--l1", "0.02"]
    nested = ["--architecture", "matryoshka", "--levels", "1", "2", "--mu", "0.5"]
    code, out, _ = _derive(capsys, *args, *nested, "--balance", "true", "--json")
    assert code == 0
    record = json.loads(out)
    assert record["spec"]["levels"] == [1, 2] and record["spec"]["mu"] == 0.5
    spec = SAESpec(2, 0.02, architecture="matryoshka", levels=(1, 2), mu=0.5)
    from theory.features import scenario

    assert record["expected_loss"] == pytest.approx(
        global_optimum(scenario("hierarchical"), spec).loss
    )
    assert 0 < record["balance"]["mu"] < 0.5
    assert abs(record["balance"]["read_out_at_mu"]["encoder"]) < 1e-4
    code, out, _ = _derive(capsys, *args, *nested, "--balance", "true")
    assert "balancing mu" in out


@pytest.mark.parametrize(
    "args",
    [
        ["--architecture", "topk", "--k", "1", "--width", "2"],
        ["--architecture", "batchtopk", "--k", "1", "--width", "2"],
        ["--architecture", "jumprelu", "--l0", "0.01"],
    ],
)
def test_derive_solves_each_architecture(capsys, args):
    code, out, _ = _derive(capsys, "--scenario", "hierarchical", *args, "--json")
    assert code == 0
    record = json.loads(out)
    spec = SAESpec(
        int(args[args.index("--width") + 1]) if "--width" in args else 1,
        architecture=args[1],
        **({"k": 1} if "--k" in args else {"l0": 0.01}),
    )
    assert record["spec"]["architecture"] == spec.architecture
    model = from_table("00:0.75,10:0.2,11:0.05")
    assert record["expected_loss"] == pytest.approx(global_optimum(model, spec).loss, abs=1e-9)
    assert len(record["hedging"]) == spec.width
    if spec.architecture == "jumprelu":  # the realised threshold separates the firing states
        assert record["fires_on"] == [["10", "11"]] and record["threshold"][0] > 0
    assert ("kept_fraction" in record) == (spec.architecture == "batchtopk")


@pytest.mark.parametrize("arch", [["--l1", "0.02"], ["--architecture", "topk", "--k", "1"]])
def test_numeric_method_is_labelled_and_never_beats_the_exact_optimum(capsys, arch):
    # the numeric record has the exact record's keys, says it has no guarantee, and its loss
    # is the loss of its own parameters, never below the exact optimum (here it finds it)
    args = ["--scenario", "hierarchical", "--width", "2", *arch, "--json"]
    _, exact_out, _ = _derive(capsys, *args)
    code, numeric_out, _ = _derive(capsys, *args, "--method", "numeric", "--starts", "8")
    assert code == 0
    exact, numeric = json.loads(exact_out), json.loads(numeric_out)
    assert exact["method"] == "exact" and "no guarantee" in numeric["method"]
    assert numeric["regions_tried"] is None and exact["regions_tried"] > 0
    assert set(numeric) == set(exact)
    assert numeric["expected_loss"] >= exact["expected_loss"] - 1e-9
    assert numeric["expected_loss"] == pytest.approx(exact["expected_loss"], abs=1e-6)
    if "--l1" in arch:  # TopK has no sparsity penalty: a code shifted onto 00 ties
        assert sorted(numeric["fires_on"]) == sorted(exact["fires_on"])
