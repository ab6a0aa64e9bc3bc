"""Typst source: strings that cannot start markup, sympy expressions as Typst math."""

from __future__ import annotations

import io

import pypdf
import sympy as sp
import typst

from reports.typst_source import content, math, string


def _typeset(source: str, tmp_path) -> str:
    path = tmp_path / "t.typ"
    path.write_text("#set page(width: 40cm, height: auto)\n" + source, encoding="utf-8")
    pdf = typst.compile(str(path), root=str(tmp_path), ignore_system_fonts=True)
    return pypdf.PdfReader(io.BytesIO(pdf)).pages[0].extract_text()


def test_strings_show_verbatim(tmp_path):
    text = 'a #b $c$ *d* _e_ [f] \\g "h" <i> @j = k // l /* m'
    assert string("x\ny") == '"x\\ny"'
    assert " ".join(_typeset(content(text), tmp_path).split()) == text


def test_math_products_powers_fractions_and_functions():
    p, a, b, lam = sp.symbols("p a b lambda")
    assert math(a * p - b) == "a p - b"
    assert math(p**2) == "p^(2)"
    assert math(sp.sqrt(a + 1)) == "sqrt(a + 1)"
    assert math(a / (2 * b)) == "frac(a, 2 b)"
    assert math(sp.Symbol("P_11") * lam) == "P_(11) lambda"
    assert math(sp.Symbol("p_rand")) == 'p_"rand"'
    # a call's arguments stay with the call inside a fraction
    assert math(sp.atan2(a, b) / 2) == 'frac(op("atan2")(a, b), 2)'
    assert math(sp.Max(0, a)) == "max(0, a)"


def test_math_compiles(tmp_path):
    p, a = sp.symbols("p a", positive=True)
    expr = sp.sin(sp.atan2(2 * p, 1 - a) / 2) + p / sp.sqrt(a**2 + 1)
    text = _typeset(f"$ {math(expr)} $", tmp_path)
    assert "atan2" in text and "sin" in text
