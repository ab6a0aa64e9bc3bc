"""Matryoshka theory: exact optima vs the independent numeric minimiser on the paper's four
scenarios (width 2, levels [1, 2]), the same model's plain optimum as the peer for the matryoshka
path's cost, and the balance on the hedging paper's 17-state toy. Prints one JSON object.

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_matryoshka.py
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from theory.features import SCENARIOS, hierarchical, scenario  # noqa: E402
from theory.matryoshka import balancing_mu, basin_optimum  # noqa: E402
from theory.numeric import numeric_optimum  # noqa: E402
from theory.optimum import global_optimum  # noqa: E402
from theory.sae import SAESpec  # noqa: E402


def timed(call):  # noqa: ANN001, ANN201
    start = time.process_time()
    result = call()
    return result, time.process_time() - start


def scenarios(mu_values: tuple[float, ...] = (0.0, 0.25, 1.0)) -> dict:
    rows = []
    for name in SCENARIOS:
        model = scenario(name)
        plain, plain_s = timed(lambda model=model: global_optimum(model, SAESpec(2, 2e-2)))
        for mu in mu_values:
            spec = SAESpec(2, 2e-2, architecture="matryoshka", levels=(1, 2), mu=mu)
            exact, exact_s = timed(lambda model=model, spec=spec: global_optimum(model, spec))
            numeric, numeric_s = timed(
                lambda model=model, spec=spec: numeric_optimum(model, spec, n_starts=32)
            )
            rows.append(
                {
                    "scenario": name,
                    "mu": mu,
                    "exact_s": exact_s,
                    "numeric_s": numeric_s,
                    "plain_s": plain_s,
                    "exact_minus_numeric": exact.loss - numeric.loss,
                    "mu0_minus_plain": exact.loss - plain.loss if mu == 0 else None,
                }
            )
    return {
        "rows": rows,
        "max_exact_minus_numeric": max(r["exact_minus_numeric"] for r in rows),
        "median_exact_s": sorted(r["exact_s"] for r in rows)[len(rows) // 2],
        "exact_over_plain": sum(r["exact_s"] for r in rows) / sum(r["plain_s"] for r in rows),
    }


def paper_toy() -> dict:
    world = hierarchical(0.25, [0.15] * 3 + [0.55])
    out = {}
    for level_sparsity in (False, True):
        spec = SAESpec(4, 3e-2, architecture="matryoshka", levels=(1, 4), mu=0.25,
                       level_sparsity=level_sparsity)  # fmt: skip
        basin, basin_s = timed(lambda spec=spec: basin_optimum(world, spec, 0, (1, 2, 3)))
        numeric, numeric_s = timed(lambda spec=spec: numeric_optimum(world, spec, n_starts=32))
        balance, balance_s = timed(lambda spec=spec: balancing_mu(world, spec, 0, (1, 2, 3)))
        out["per_level_l1" if level_sparsity else "l1_once"] = {
            "basin_loss_mu_0.25": basin.loss,
            "numeric_loss_mu_0.25": numeric.loss,
            "basin_s": basin_s,
            "numeric_s": numeric_s,
            "balancing_mu": balance.mu,
            "balancing_s": balance_s,
        }
    return out


def main() -> None:
    print(json.dumps({"scenarios": scenarios(), "paper_toy": paper_toy()}, indent=2))


if __name__ == "__main__":
    main()
