"""Plain (non-LaTeX) expressions as models write them: ``pi/2``, ``-2*pi``, ``exp(3) - 1``,
``sqrt(2)/2``, ``14.0 + -1.0i``, ``2**10``, ``3^2``.

latex2sympy reads ``pi/2`` as ``p*i/2`` and ``sqrt(2)`` as a product of letters, so such an
answer goes through sympy's own expression parser instead. That parser builds Python code
from its input, so nothing reaches it unless *every* token is whitelisted first: numbers,
``+ - * / ^ ** ( )``, one-letter variables and the function and constant names below. No
attribute access, string, subscript, keyword or any other name can get through, and the
result is built unevaluated (``evaluate=False``) so that `parse.guard` bounds its size before
anything is computed (``2**10**10**10`` is refused, not evaluated).
"""

from __future__ import annotations

import re

import sympy
from sympy.parsing.sympy_parser import auto_number, auto_symbol, convert_xor, parse_expr

FUNCTIONS = {
    "sqrt": sympy.sqrt, "exp": sympy.exp, "log": sympy.log, "ln": sympy.log, "abs": sympy.Abs,
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "cot": sympy.cot, "sec": sympy.sec, "csc": sympy.csc,
    "asin": sympy.asin, "acos": sympy.acos, "atan": sympy.atan,
    "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan,
}  # fmt: skip
CONSTANTS = {"pi": sympy.pi, "e": sympy.E, "E": sympy.E, "I": sympy.I, "i": sympy.I, "oo": sympy.oo, "inf": sympy.oo}
_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|([A-Za-z]+)|(\*\*|[-+*/^()]))")
_WORDS = re.compile(r"(?<![A-Za-z\\])(?:" + "|".join(sorted({*FUNCTIONS, "pi"}, key=len, reverse=True)) + r")(?![A-Za-z])")
_GLOBALS = {
    "__builtins__": {}, "Integer": sympy.Integer, "Float": sympy.Float, "Rational": sympy.Rational,
    "Symbol": sympy.Symbol, "Add": sympy.Add, "Mul": sympy.Mul, "Pow": sympy.Pow,
}  # fmt: skip
MAX_TOKENS = 200


def looks_plain(s: str) -> bool:
    """A plain expression: no LaTeX command, and a function or constant word or ``**``."""
    return "\\" not in s and "{" not in s and ("**" in s or bool(_WORDS.search(s)))


def _tokens(s: str) -> list[tuple[str, str]] | None:
    """(kind, text) tokens, or None when anything is not whitelisted."""
    out, i = [], 0
    while i < len(s):
        m = _TOKEN.match(s, i)
        if m is None or m.end() == i:
            return None if s[i:].strip() else out
        number, name, op = m.groups()
        if name is not None:
            if name not in FUNCTIONS and name not in CONSTANTS and len(name) != 1:
                return None
            out.append(("name", name))
        else:
            out.append(("num", number) if number is not None else ("op", op))
        i = m.end()
        if len(out) > MAX_TOKENS:
            return None
    return out


def _with_products(tokens: list[tuple[str, str]]) -> str:
    """Spell implicit products: ``2pi`` -> ``2*pi``, ``1.0i`` -> ``1.0*i``, ``(a)(b)``."""
    out: list[str] = []
    prev = None
    for kind, text in tokens:
        if prev is not None:
            pk, pt = prev
            ends_value = pk in ("num", "name") and pt not in FUNCTIONS or pt == ")"
            starts_value = kind in ("num", "name") or text == "("
            if ends_value and starts_value and not (pk == "num" and kind == "num"):
                out.append("*")
        out.append(text)
        prev = (kind, text)
    return " ".join(out)


def parse_plain(s: str) -> sympy.Basic | None:
    """The sympy value of a plain expression, unevaluated; None when it is not one."""
    tokens = _tokens(s)
    if not tokens:
        return None
    code = _with_products(tokens)
    local = {**FUNCTIONS, **CONSTANTS}
    local.update({t: sympy.Symbol(t) for k, t in tokens if k == "name" and t not in local})
    try:
        return parse_expr(
            code, local_dict=local, global_dict=dict(_GLOBALS),
            transformations=(auto_symbol, auto_number, convert_xor), evaluate=False,
        )  # fmt: skip
    except (SyntaxError, TypeError, ValueError, AttributeError, ZeroDivisionError):
        return None
