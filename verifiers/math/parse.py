"""From a normalised answer string to a structured value (runs in a worker process).

The top level (tuples, intervals, sets, bare lists, unions, matrices, relations) is split by
bracket and separator matching, so that the *shape* of an answer is never lost: latex2sympy
reads ``(2, 1)`` as an empty interval and ``2=2`` as ``True``, and two different answers must
not collapse into one value. Every leaf expression is parsed by ``latex2sympy2_extended``.

Before anything is evaluated, `guard` bounds the size of every power and factorial, so
``9^{9^{9^9}}`` is refused instead of computed (the worker timeout is the second line).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

import sympy
from latex2sympy2_extended import NormalizationConfig, latex2sympy

from verifiers.math.normalize import (
    ELLIPSIS,
    _matching_brace,
    is_plain_number,
    normalize,
)
from verifiers.math.plain import looks_plain, parse_plain

MAX_ANSWER_CHARS = 1000
MAX_DEPTH = 40
MAX_BITS = 200_000  # magnitude bound for any numeric sub-expression (about 60,000 digits)
MAX_FACTORIAL = 10_000

_L2S_CONFIG = NormalizationConfig(basic_latex=True, units=False, malformed_operators=False, nits=False, boxed="none", equations=False)


class Rejected(ValueError):
    """The answer is refused without (further) evaluation: ``kind`` is the error code."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


# ---- values ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Dots:
    """An ellipsis item in a sequence (``1, 2, \\ldots, n``): equal only to another ellipsis."""


@dataclass(frozen=True)
class Num:
    """An exact number written as a literal. ``tol`` is half a unit in the last written digit
    of a decimal literal (None for integers and fractions); ``percent`` marks ``50%``."""

    value: Fraction
    tol: Fraction | None = None
    percent: bool = False
    digits: int = 0  # decimal places written (for "is the prediction more precise?")
    sig: int = 0  # significant digits written (0 for integers and fractions)


@dataclass(frozen=True)
class Expr:
    expr: sympy.Basic
    percent: bool = False


@dataclass(frozen=True)
class Rel:
    """``parts[0] ops[0] parts[1] ops[1] ...`` with ops in = < <= > >= !=. ``names[i]`` is
    True when part i is written as a name (``x``, ``f(x)``, ``AB``, ``(p, q)``, ``V_1:V_2``)."""

    ops: tuple[str, ...]
    parts: tuple
    names: tuple = ()


@dataclass(frozen=True)
class Seq:
    """Bracketed or bare list: ``open``/``close`` in ``( [ { ""`` / ``) ] } ""``; ``g`` for a
    TeX group ``{1, 3}`` (a tuple against a tuple, a set against a set); ``:`` for a ratio.
    ``comma_decimal`` is the value of ``1,22`` read with a decimal comma (only for two
    integers joined by a comma without a space)."""

    open: str
    close: str
    items: tuple
    comma_decimal: Num | None = None


@dataclass(frozen=True)
class Approx:
    """An exact answer followed by a decimal approximation of it: ``\\frac{\\sqrt3}{3} \\approx 0.577``,
    ``\\frac{\\sqrt3}{3} = 0.577\\ldots``, ``x = \\frac13 \\approx 0.33``. ``exact`` is the answer; the
    approximation must be true to it (`compare.equal`)."""

    exact: object
    approx: Num


@dataclass(frozen=True)
class Matrix:
    rows: tuple


@dataclass(frozen=True)
class Union:
    parts: tuple


# ---- top-level splitting ------------------------------------------------------------------

_OPEN = {"(": ")", "[": "]", "\\{": "\\}"}
_CLOSERS = (")", "]", "\\}")


def _tokens_depth(s: str):
    """Yield (index, depth_before, token) for bracket tokens; other chars as single tokens."""
    depth, i = 0, 0
    while i < len(s):
        two = s[i : i + 2]
        if two in ("\\{", "\\}"):
            tok = two
        else:
            tok = s[i]
        if tok in ("(", "[", "\\{", "{"):
            yield i, depth, tok
            depth += 1
        elif tok in (")", "]", "\\}", "}"):
            depth -= 1
            yield i, depth, tok
        else:
            yield i, depth, tok
        i += len(tok)


def max_depth(s: str) -> int:
    best = 0
    for _, depth, _tok in _tokens_depth(s):
        best = max(best, depth + 1)
    return best


def split_top(s: str, seps: tuple[str, ...]) -> list[str]:
    """Split ``s`` at separators that sit outside every bracket."""
    parts, start, depth, i = [], 0, 0, 0
    while i < len(s):
        if s.startswith("\\{", i) or s.startswith("\\}", i):
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        ch = s[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            for sep in seps:
                if s.startswith(sep, i) and not (sep[0] == "\\" and i + len(sep) < len(s) and s[i + len(sep)].isalpha()):
                    parts.append(s[start:i])
                    start = i + len(sep)
                    i = start - 1
                    break
        i += 1
    parts.append(s[start:])
    return parts


def _outer_group(s: str) -> tuple[str, str, str] | None:
    """If ``s`` is one bracket group (``(…]`` allowed), return (open, inner, close)."""
    opener = "\\{" if s.startswith("\\{") else s[:1]
    if opener not in _OPEN:
        return None
    depth = 0
    for i, _d, tok in _tokens_depth(s):
        if tok in ("(", "[", "\\{", "{"):
            depth += 1
        elif tok in (")", "]", "\\}", "}"):
            depth -= 1
            if depth == 0:
                if i + len(tok) != len(s) or tok == "}":
                    return None
                return opener, s[len(opener) : i], tok
    return None


_REL_OPS = [("\\leq", "<="), ("\\le", "<="), ("\\geq", ">="), ("\\ge", ">="), ("\\neq", "!="), ("\\ne", "!="),
            ("<=", "<="), (">=", ">="), ("!=", "!="), ("=", "="), ("<", "<"), (">", ">")]
_REL_SPLIT = re.compile(r"\\leq(?![a-z])|\\le(?![a-z])|\\geq(?![a-z])|\\ge(?![a-z])|\\neq(?![a-z])|\\ne(?![a-z])|<=|>=|!=|=|<|>")
_MATRIX = re.compile(r"^\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}$", re.DOTALL)
_IN_PREFIX = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*\\in\s*")


def _split_relation(s: str) -> tuple[list[str], list[str]] | None:
    """Split at relation symbols outside brackets; None if there are none."""
    parts, ops, start, depth = [], [], 0, 0
    i = 0
    while i < len(s):
        ch = s[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            m = _REL_SPLIT.match(s, i)
            if m:
                parts.append(s[start:i])
                ops.append(dict(_REL_OPS)[m.group(0)] if m.group(0) in dict(_REL_OPS) else m.group(0))
                start = i = m.end()
                continue
        i += 1
    if not ops:
        return None
    parts.append(s[start:])
    return parts, ops


# ---- guards -------------------------------------------------------------------------------


def _bits(e: sympy.Basic) -> float:
    """Upper estimate of log2|e| for numeric sub-trees; raises `Rejected` when too large."""
    if e.is_Integer:
        n = abs(int(e))
        if n < 2:
            return 1.0
        return max(1.0, math.log2(n) if n < 2**64 else float(n.bit_length() - 1))
    if e.is_Rational:
        return float(max(abs(e.p).bit_length(), e.q.bit_length()))
    if e.is_Float or e.is_NumberSymbol or e.is_Symbol or not e.args:
        return 64.0
    if isinstance(e, sympy.Pow):
        base_bits = _bits(e.base)
        exp = e.exp
        _bits(exp)
        if exp.is_number and not exp.free_symbols:
            try:
                x = abs(complex(sympy.N(exp, 15)))
            except (TypeError, ValueError, OverflowError):
                raise Rejected("too_large", "exponent cannot be bounded") from None
            if math.isinf(x) or x * base_bits > MAX_BITS:
                raise Rejected("too_large", "power too large")
            return max(1.0, x * base_bits)
        return base_bits
    if isinstance(e, sympy.factorial) or isinstance(e, (sympy.factorial2, sympy.subfactorial)):
        arg = e.args[0]
        _bits(arg)
        if arg.is_number:
            try:
                n = abs(complex(sympy.N(arg, 15)))
            except (TypeError, ValueError, OverflowError):
                raise Rejected("too_large", "factorial cannot be bounded") from None
            if n > MAX_FACTORIAL:
                raise Rejected("too_large", "factorial too large")
            return max(1.0, n * max(1.0, math.log2(max(n, 2.0))))
        return 64.0
    total = 0.0
    for a in e.args:
        if isinstance(a, sympy.Basic):
            total += _bits(a)
    if total > MAX_BITS * 4:
        raise Rejected("too_large", "expression too large")
    return total


def guard(e: sympy.Basic) -> None:
    _bits(e)


# ---- leaves ---------------------------------------------------------------------------------

_FRACTION = re.compile(r"^([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}$|^([+-]?\d+)\s*/\s*([+-]?\d+)$")
_MIXED = re.compile(r"^([+-]?)(\d+)\s+(\d+)\s*/\s*(\d+)$|^([+-]?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}$")
_REPEATING = re.compile(r"^([+-]?)(\d*)\.(\d*)\\overline\{(\d+)\}$")
_FUNCTION_WORDS = frozenset(
    "sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln exp sqrt frac pi infty "
    "min max gcd lcm det mod binom cdot times div pm mp theta alpha beta gamma delta lambda mu phi omega "
    "sigma rho tau epsilon varepsilon psi chi eta zeta kappa nu xi circ angle deg dfrac tfrac "
    "begin end matrix pmatrix bmatrix array cup cap emptyset varnothing mathbb in notin le ge leq geq neq ne".split()
)


def _decimal(s: str, percent: bool) -> Num:
    mant, _, exp = s.partition("e")
    e = int(exp) if exp else 0
    if abs(e) > 10_000:
        raise Rejected("too_large", "exponent too large")
    digits = len(mant.split(".", 1)[1]) if "." in mant else 0
    value = Fraction(mant) * Fraction(10) ** e
    tol = None
    sig = 0
    if "." in mant or exp:
        tol = Fraction(1, 2) * Fraction(10) ** (e - digits)
        sig = len(mant.lstrip("+-").replace(".", "").lstrip("0")) or 1
    return Num(value, tol, percent, digits - e, sig)


def _is_text(s: str) -> bool:
    """Plain words (``Monday``, ``no solution``), not a product of variables like ``xy``."""
    bare = re.sub(r"\\(?:text|mbox|mathrm|textrm|textit|operatorname)\{([^{}]*)\}", r"\1", s)
    if re.fullmatch(r"\s*\\(?:text|mbox|textrm|textit)\{[^{}]*\}\s*", s) and re.search(r"[A-Za-z]{2,}", bare):
        return True
    if not re.fullmatch(r"[A-Za-z][A-Za-z\s'.\-]*", bare.strip()):
        return False
    words = re.findall(r"[A-Za-z]+", bare)
    return any(len(w) >= 3 and w.lower() not in _FUNCTION_WORDS for w in words)


def text_key(s: str) -> str:
    """Case-, space- and wrapper-insensitive form for comparing plain-text answers."""
    s = re.sub(r"\\(?:text|mbox|mathrm|textrm|textit|textbf|operatorname)\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\", "").lower()
    s = re.sub(r"\s+", " ", s).strip(" .,:;")
    m = re.fullmatch(r"\(\s*([a-z])\s*\)|([a-z])\s*[).]", s)  # (B), B), B.
    if m:
        s = m.group(1) or m.group(2)
    return s


def _sympy_leaf(s: str, percent: bool) -> Expr | Text:
    e = parse_plain(s) if looks_plain(s) else None  # pi/2, sqrt(2)/2, 2**10: see `plain`
    if e is None:
        try:
            e = latex2sympy(s, normalization_config=_L2S_CONFIG)
        except Exception:
            return Text(s)
    if not isinstance(e, sympy.Basic) or isinstance(e, (sympy.Set, sympy.Tuple)) or (
        isinstance(e, sympy.logic.boolalg.Boolean) and not isinstance(e, sympy.Expr)
    ):
        return Text(s)  # sets / tuples / relations are split at the top level, not here
    if getattr(e, "is_Matrix", False):
        return _matrix_value(e, s)
    guard(e)
    swaps = {f: sympy.Rational(str(f)) for f in e.atoms(sympy.Float)}  # decimals stay exact
    swaps.update({x: sympy.I for x in e.free_symbols if x.name == "i"})  # i is the imaginary unit
    if swaps:
        e = e.xreplace(swaps)
    return Expr(e, percent)


MAX_MATRIX_ENTRIES = 100


def _matrix_value(e, s: str):
    """A matrix expression (``A + B``, ``A B``) evaluated to its entries, within bounds."""
    for sub in sympy.preorder_traversal(e):
        if isinstance(sub, sympy.MatPow) and not (sub.exp.is_Integer and abs(int(sub.exp)) <= 64):
            raise Rejected("too_large", "matrix power")
        if isinstance(sub, sympy.MatrixBase) and sub.rows * sub.cols > MAX_MATRIX_ENTRIES:
            raise Rejected("too_large", "matrix too large")
    try:
        m = e.doit() if not isinstance(e, sympy.MatrixBase) else e
        rows = [[m[i, j] for j in range(m.cols)] for i in range(m.rows)]
    except Exception:
        return Text(s)
    for entry in (x for row in rows for x in row):
        guard(entry)
    return Matrix(tuple(tuple(Expr(sympy.nsimplify(x) if x.is_Float else x) for x in row) for row in rows))


def parse_leaf(s: str):
    s = s.strip()
    if not s:
        raise Rejected("empty")
    if s == ELLIPSIS:
        return Dots()
    if ELLIPSIS in s:
        return Text(s)
    percent = s.endswith("%")
    if percent:
        s = s[:-1].strip()
    if is_plain_number(s):
        return _decimal(s, percent)
    m = _REPEATING.match(s)
    if m:  # 0.1\overline{6} = 1/6 exactly
        sign, whole, fixed, rep = m.groups()
        head = Fraction(int(whole or "0")) + (Fraction(int(fixed), 10 ** len(fixed)) if fixed else 0)
        value = head + Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(fixed))
        return Num(-value if sign == "-" else value, None, percent)
    m = _FRACTION.match(s)
    if m:
        sign, a, b = (m.group(1), m.group(2), m.group(3)) if m.group(2) else ("", m.group(4), m.group(5))
        if int(b) == 0:
            return Expr(sympy.zoo)  # undefined: never equal to anything
        value = Fraction(int(a), int(b)) * (-1 if sign == "-" else 1)
        return Num(value, None, percent)
    m = _MIXED.match(s)
    if m:
        g = [x for x in m.groups() if x is not None]
        sign, whole, a, b = g
        if int(b) != 0:
            value = (int(whole) + Fraction(int(a), int(b))) * (-1 if sign == "-" else 1)
            return Num(value, None, percent)
    if s.lower() in ("nan", "zoo", "\\text{nan}"):
        return Expr(sympy.nan)  # a checker's "not a number": never equal to anything
    if _is_text(s):
        return Text(s)
    return _sympy_leaf(s, percent)


# ---- whole answers --------------------------------------------------------------------------


def _parse_matrix(body: str) -> Matrix:
    rows = [r for r in re.split(r"\\\\", body) if r.strip() and r.strip() != "\\hline"]
    return Matrix(tuple(tuple(parse_value(c) for c in row.split("&")) for row in rows))


_NAME_NOISE = re.compile(r"_\{[^{}]*\}|_\w|\\[a-zA-Z]+|[{}|:/(),\s']")


def is_name(s: str) -> bool:
    """Is ``s`` written as a name rather than a value: ``x``, ``f(x)``, ``AB``, ``|AB|``,
    ``\\frac{NO}{BO}``, ``V_1:V_2``, ``(p, q)``? (No digits outside subscripts, no operators.)"""
    rest = _NAME_NOISE.sub("", s)
    return bool(rest) and rest.isalpha() and rest.isascii()


def _comma_decimal(s: str) -> Num | None:
    """``1,22`` / ``0,111`` read with a decimal comma (``1,000`` was already read as 1000)."""
    m = re.fullmatch(r"-?\d+,\d+", s)
    return _decimal(s.replace(",", "."), False) if m else None


_SEPARATORS = (",", ";", "\\text{ or }", "\\text{ and }", "\\text{or}", "\\text{and}", " or ", " and ")


def _brace_group(s: str) -> str | None:
    """Inner text of a plain TeX group ``{…}`` that spans all of ``s``."""
    if not s.startswith("{") or _matching_brace(s, 0) != len(s) - 1:
        return None
    return s[1:-1]


_APPROX_NUMBER = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))\s*(\\ldots)?")


def _approximation(s: str):
    """``A \\approx d`` or ``A = d\\ldots`` / ``A = 0.577`` (``d`` a decimal, ``A`` a value, not a plain number)
    as `Approx`; a name before it (``x \\approx 0.33``, ``x = 0.33\\ldots``) makes the decimal the answer
    (``x = 0.33``). None when ``s`` is no such form."""
    parts = split_top(s, ("\\approx",))
    if len(parts) > 1:
        head, tail = "\\approx".join(parts[:-1]).strip(), parts[-1].strip()
        m = _APPROX_NUMBER.fullmatch(tail)
        if not (head and m):
            return None
    else:
        rel = _split_relation(s)
        if rel is None or any(op != "=" for op in rel[1]) or not all(p.strip() for p in rel[0]):
            return None
        *heads, tail = (p.strip() for p in rel[0])
        m = _APPROX_NUMBER.fullmatch(tail)
        if not m or not ("." in m.group(1) or m.group(2)) or is_plain_number(heads[-1]):
            return None  # 2 + 3 = 5 is a relation between constants, 0.5 = 0.50 as well
        head = " = ".join(heads)
    value = _decimal(m.group(1), False)
    if is_name(head):
        return Rel(("=",), (parse_value(head), value), (True, False))
    return Approx(parse_value(head), value)


def parse_value(s: str):
    """Structured value of an (already normalised) answer string."""
    s = s.strip()
    if not s:
        raise Rejected("empty")
    m = _MATRIX.match(s)
    if m and m.group(1) not in ("vmatrix", "Vmatrix") and "\\begin{" not in m.group(2):  # |A| is a determinant: a number
        return _parse_matrix(m.group(2))
    s = _IN_PREFIX.sub("", s)
    union = split_top(s, ("\\cup",))
    if len(union) > 1:
        return Union(tuple(parse_value(p) for p in union))
    groups = [p for p in split_top(s, (";",)) if p.strip()]
    if len(groups) > 1 and any(len(split_top(g, (",",))) > 1 for g in groups):
        return Seq("", "", tuple(parse_value(g) for g in groups))  # p=5,q=2; p=7,q=2
    items = [p for p in split_top(s, _SEPARATORS) if p.strip()]
    if len(items) > 1:
        return Seq("", "", tuple(parse_value(p) for p in items), _comma_decimal(s))
    group = _outer_group(s)
    if group is not None:
        opener, inner, closer = group
        inner_items = split_top(inner, (",", ";"))
        if len(inner_items) > 1 or opener == "\\{":
            values = tuple(parse_value(p) for p in inner_items if p.strip())
            return Seq(opener.lstrip("\\"), closer.lstrip("\\"), values)
        if (opener, closer) in (("(", ")"), ("[", "]")) and (opener == "(" or _MATRIX.match(inner.strip())):
            return parse_value(inner)  # (x + 1), [\begin{array}…\end{array}]
    inner = _brace_group(s)
    if inner is not None:
        inner_items = [p for p in split_top(inner, (",", ";")) if p.strip()]
        if len(inner_items) > 1:
            return Seq("g", "g", tuple(parse_value(p) for p in inner_items))
        return parse_value(inner)
    if s.count("\\pm") == 1 and split_top(s, ("\\pm",)) != [s]:
        # a \pm b  ->  the two values a + b, a - b (an unordered pair)
        plus, minus = s.replace("\\pm", "+"), s.replace("\\pm", "-")
        return Seq("", "", (parse_value(plus), parse_value(minus)))
    approx = _approximation(s)
    if approx is not None:
        return approx
    rel = _split_relation(s)
    if rel is not None:
        parts, ops = rel
        if all(p.strip() for p in parts):
            return Rel(tuple(ops), tuple(parse_value(p) for p in parts), tuple(is_name(p) for p in parts))
    ratio = split_top(s, (":",))
    if len(ratio) > 1 and all(p.strip() for p in ratio):
        return Seq(":", ":", tuple(parse_value(p) for p in ratio))  # 7:32, 12:00
    return parse_leaf(s)


def parse_answer(raw: str):
    """Normalise and parse; raises `Rejected` for answers that must not be evaluated."""
    if len(raw) > MAX_ANSWER_CHARS:
        raise Rejected("answer_too_large", f"{len(raw)} chars > {MAX_ANSWER_CHARS}")
    s = normalize(raw)
    if max_depth(s) > MAX_DEPTH:
        raise Rejected("too_deep", f"nesting deeper than {MAX_DEPTH}")
    return s, parse_value(s)
