"""Hedging degree against N and layer: every (layer, N) is a resumable sub-run, gathered in one
table."""

from llm.cache import ExtractConfig
from llm.hedging_scan import HedgingScanConfig, run_hedging_scan
from tests.llm.tiny_models import save_tiny_model, write_text_corpus
from toymodels.runs import read_run
from toymodels.train import TrainConfig


def test_scan_gathers_every_layer_and_n(tmp_path):
    model = save_tiny_model(tmp_path / "model", "gemma3")
    text = write_text_corpus(tmp_path / "text", n_files=12)
    extract = ExtractConfig(
        model=str(model), corpus=str(text), tokens=2400, shard_tokens=600, batch_size=8,
        context_length=16, device="cpu",
    )  # fmt: skip
    config = HedgingScanConfig(
        layers=(0, 2), n_news=(2, 4), width=16, architecture="relu-l1", seeds=1, extract=extract,
        train=TrainConfig(samples=640, batch_size=64, device="cpu", progress=False),
    )  # fmt: skip
    run = run_hedging_scan(config, tmp_path / "scan")
    table = read_run(run.folder)["tables"]["hedging_vs_n_and_layer"]
    assert sorted(set(zip(table.layer, table.n_new, strict=True))) == [
        (0, 2),
        (0, 4),
        (2, 2),
        (2, 4),
    ]
    assert table.hedging_degree.between(0, 1).all() and (table.width == 16).all()
    summary = read_run(run.folder)["tables"]["hedging_by_n_and_layer"]
    assert len(summary) == 4 and (summary.seeds == 1).all()
    caches = sorted(p.name for p in (tmp_path / "scan").glob("activations-layer*"))
    assert caches == ["activations-layer0", "activations-layer2"]
    # the layer-2 cache really is layer 2's
    assert read_run(tmp_path / "scan" / "activations-layer2")["config"]["layer"] == 2
    run.close()
    # a second call reuses every finished sub-run
    again = run_hedging_scan(config, tmp_path / "scan")
    assert read_run(again.folder)["tables"]["hedging_vs_n_and_layer"].equals(table)
