"""JumpReLU toy SAEs against theory's exact optimum, by the L0 term's estimator.

Trains width-1 JumpReLU SAEs (l0 = 0.01, 8 restarts, the scenarios' default schedule) on the
paper's four two-feature scenarios twice, with the same seeds: the L0 pseudo-gradient on the
thresholds only (Gemma Scope's estimator) and on the pre-activations too (the toolkit's
default), and prints the best restart's loss gap to `theory.optimum.global_optimum` and its
decoder cosine with the optimum's, per scenario.

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_jumprelu_toy.py
"""

from __future__ import annotations

import json
import time

from theory.features import SCENARIOS, scenario
from theory.optimum import global_optimum
from theory.sae import SAESpec
from toymodels.experiments.scenarios import FitConfig, compare, train_saes


def main() -> None:
    spec = SAESpec(architecture="jumprelu", l0=0.01)
    worlds = [scenario(name) for name in SCENARIOS]
    optima = [global_optimum(world, spec) for world in worlds]
    rows = {}
    for to_pre in (False, True):
        start = time.process_time()
        fits = train_saes(
            worlds,
            [(w, 0.0, 1) for w in range(len(worlds))],
            FitConfig(restarts=8),
            spec,
            {"l0_gradient_to_pre": to_pre},
        )
        seconds = time.process_time() - start
        label = "pre-activations too" if to_pre else "thresholds only"
        rows[label] = {"train_cpu_seconds": seconds}
        for name, world, params, optimum in zip(SCENARIOS, worlds, fits.best, optima, strict=True):
            result = compare(world, spec, params, optimum)
            cosine = abs(float(result["params"].decoder[0] @ optimum.params.decoder[0]))
            rows[label][name] = {"loss_gap": result["loss_gap"], "decoder_cosine": cosine}
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
