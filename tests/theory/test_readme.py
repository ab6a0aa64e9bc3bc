"""The README's script example runs and shows what it says it shows."""

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_prediction_example_computes_the_optimums_own_ratio():
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(block, namespace)
    decoder, ratio, best = namespace["decoder"], namespace["ratio"], namespace["best"]
    assert decoder[1] / decoder[0] == pytest.approx(0.2276, abs=1e-4)
    assert float(ratio(0.25, 0.2, 0.1)) == pytest.approx(decoder[1] / decoder[0], rel=1e-9)
    patterns = ["".join(map(str, p)) for p in namespace["model"].patterns]
    fires_on = {p for p, on in zip(patterns, best.active[0], strict=True) if on}
    assert fires_on == {"10", "01", "11"}
