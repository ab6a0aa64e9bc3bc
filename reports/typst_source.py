"""Typst source from Python values: escaped strings and sympy expressions as Typst math.

Every text that comes from a run (folder names, config values, table cells) enters the document
as a Typst string literal, so no character in it can start markup, math or code. Formulas are
printed from theory's sympy expressions straight into Typst math (no LaTeX round trip).
"""

from __future__ import annotations

import re

import sympy as sp
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.str import StrPrinter

TYPST_MATH_FUNCTIONS = {"sin", "cos", "tan", "exp", "log", "sinh", "cosh", "tanh"}
"""sympy functions Typst math knows under the same name; others become op("name")."""
GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "lambda", "mu", "nu", "pi", "rho", "sigma",
    "tau", "phi", "theta", "omega",
}  # fmt: skip


def string(text: object) -> str:
    """A Typst string literal holding `text` exactly (usable wherever content is)."""
    escaped = (
        str(text)
        .replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def content(text: object) -> str:
    """`text` as markup that shows it verbatim."""
    return f"#{string(text)}"


def _symbol(name: str) -> str:
    base, _, sub = name.partition("_")
    base = base if len(base) == 1 or base in GREEK else string(base)
    if not sub:
        return base
    if re.fullmatch(r"[A-Za-z]|\d+", sub) or sub in GREEK:
        return f"{base}_({sub})"
    return f"{base}_{string(sub)}"


class TypstMathPrinter(StrPrinter):
    """sympy's string printer with Typst math spellings (products by juxtaposition, powers
    with ^, fractions with frac)."""

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        return _symbol(expr.name)

    def _print_Mul(self, expr: sp.Mul) -> str:
        numerator, denominator = sp.fraction(expr)
        if denominator != 1:  # frac(), not "/": a slash would take a call's arguments alone
            return f"frac({self._print(numerator)}, {self._print(denominator)})"
        return super()._print_Mul(expr).replace("*", " ")

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        if expr.exp == sp.S.Half:
            return f"sqrt({self._print(expr.base)})"
        if expr.exp.is_negative:
            return f"frac(1, {self._print(1 / expr)})"
        base = self.parenthesize(expr.base, PRECEDENCE["Pow"], strict=True)
        return f"{base}^({self._print(expr.exp)})"

    def _print_Function(self, expr: sp.Function) -> str:
        name = expr.func.__name__
        head = name if name in TYPST_MATH_FUNCTIONS else f"op({string(name)})"
        return f"{head}({', '.join(self._print(a) for a in expr.args)})"

    def _print_Max(self, expr: sp.Max) -> str:
        return f"max({', '.join(self._print(a) for a in expr.args)})"

    def _print_Min(self, expr: sp.Min) -> str:
        return f"min({', '.join(self._print(a) for a in expr.args)})"


def math(expr: sp.Expr) -> str:
    """The expression as Typst math source (without the dollar signs)."""
    return TypstMathPrinter().doprint(expr)
