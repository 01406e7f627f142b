"""Equivalence of a predicted and a reference answer (runs in a worker process).

Rules, strictest first:

- Numbers are exact rationals. A decimal *reference* (``0.33``, ``1.5e3``) means "given to
  this many digits": a prediction that is more precise (``1/3``, ``0.333``) is accepted when
  it rounds to it (strictly within half a unit in the reference's last digit). Nothing else uses a
  floating tolerance, so ``10^{12}+1 != 10^{12}`` and ``1/2004! != 1/2006!``.
- Expressions: structural equality, then exact evaluation when both sides are rational,
  then sympy evaluation of ``a - b`` with adaptive precision (constants) or at random points
  with a strict relative tolerance (expressions with variables).
- Shapes must match: ordered tuples / intervals compare in order with the same brackets
  (``(1,2] != (1,2)``); sets and bare lists (``1, 2``) compare unordered, unless the question asks
  for an order (`ORDERED`: then a bare list compares in order, also against a tuple); ``\\ldots`` only
  equals ``\\ldots`` in the same position; relations compare side by side, or as
  ``lhs - rhs`` up to a non-zero constant factor (``2y = 4x + 2`` equals ``y = 2x + 1``);
  ``x = 3`` equals ``3``; a relation whose sides are both constants never collapses to a
  truth value.
- Plain text compares case- and space-insensitively.
- An exact value followed by a decimal approximation (``\\frac{\\sqrt3}{3} \\approx 0.577``) is the exact
  value, provided the approximation is true to it (within one unit of its last digit).
"""

from __future__ import annotations

import random
from fractions import Fraction
from itertools import permutations

import sympy

from verifiers.math.parse import Approx, Dots, Expr, Matrix, Num, Rel, Seq, Text, Union, guard, text_key

REL_TOL = sympy.Rational(1, 10**12)
# A decimal prediction of an exact reference must carry at least this many significant digits
# (``0.0833`` for 1/12, never ``0.08``); see `_rounds_to`. `check` may change it per call.
MIN_SIG_DIGITS = 3
# The question asks for its answers in order ("in increasing order", "respectively"): a bare list is then
# compared item by item, and against a tuple; sets stay unordered. `check` sets it per call.
ORDERED = False
_SAMPLE_POINTS = 6
_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "=": "=", "!=": "!="}


class Undecided(Exception):
    """Numeric evaluation could not settle the question."""


def _to_sympy(v) -> sympy.Basic | None:
    if isinstance(v, Num):
        return sympy.Rational(v.value.numerator, v.value.denominator)
    if isinstance(v, Expr):
        return v.expr
    return None


def _num_alternatives(v) -> list:
    """A percentage ``50%`` may mean 50 or 0.5."""
    if getattr(v, "percent", False):
        if isinstance(v, Num):
            return [v, Num(v.value / 100, v.tol / 100 if v.tol is not None else None, False, v.digits + 2, v.sig)]
        return [v, Expr(v.expr / 100)]
    return [v]


def _rational(e: sympy.Basic) -> Fraction | None:
    """Exact value of a constant expression that evaluates to a rational, else None."""
    if e.free_symbols:
        return None
    guard(e)
    try:
        val = e.doit()
    except Exception:
        return None
    if val.is_Rational:
        return Fraction(int(val.p), int(val.q))
    return None


def _numeric_zero(d: sympy.Basic) -> bool:
    """Is the constant ``d`` zero? sympy's evalf raises precision until it has real digits
    (up to ``maxn`` bits) or can say it found none: only then is it zero."""
    v = sympy.N(d, 20, maxn=2000)
    if v == 0:
        return True
    if v.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo):
        raise Undecided("not finite")
    re_part, im_part = v.as_real_imag()
    for part in (re_part, im_part):
        if part == 0:
            continue
        if isinstance(part, sympy.Float):
            if part._prec <= 1:  # no significant digit survived: an exact cancellation
                continue
            return False
        raise Undecided(f"cannot evaluate {part}")
    return True


def _sample_points(symbols, rng: random.Random):
    for _ in range(_SAMPLE_POINTS):
        yield {s: sympy.Rational(rng.choice([-1, 1]) * rng.randint(11, 97), rng.randint(7, 23)) for s in symbols}


def _close(a: sympy.Basic, b: sympy.Basic) -> bool:
    scale = max(abs(a), abs(b), sympy.Integer(1))
    return abs(a - b) <= REL_TOL * scale


def _symbolic_equal(a: sympy.Basic, b: sympy.Basic) -> bool:
    """Numeric sampling first (fast, and decisive when the sides differ); sympy's simplify
    only when too few sample points could be evaluated."""
    symbols = sorted(a.free_symbols | b.free_symbols, key=str)
    rng = random.Random(1234)
    agreed = 0
    for point in _sample_points(symbols, rng):
        try:
            va = sympy.N(a.subs(point), 30)
            vb = sympy.N(b.subs(point), 30)
        except Exception:
            continue
        if not (va.is_number and vb.is_number) or va.has(sympy.nan, sympy.zoo) or vb.has(sympy.nan, sympy.zoo):
            continue
        ra, ia = va.as_real_imag()
        rb, ib = vb.as_real_imag()
        if not all(isinstance(x, (sympy.Float, sympy.Integer, sympy.Rational)) for x in (ra, ia, rb, ib)):
            continue
        if not (_close(ra, rb) and _close(ia, ib)):
            return False
        agreed += 1
    if agreed >= 3:
        return True
    return sympy.simplify(a - b) == 0


def _within_tol(pred: sympy.Basic, ref: Num) -> bool:
    """|pred - ref| < ref.tol, decided with enough precision to be exact at the boundary."""
    if ref.tol is None:
        return False
    exact = _rational(pred)
    if exact is not None:
        return abs(exact - ref.value) < ref.tol
    if pred.free_symbols:
        return False
    try:
        v = sympy.N(pred, 40)
        if not v.is_real:
            return False
        return abs(sympy.Rational(str(v)) - sympy.Rational(ref.value.numerator, ref.value.denominator)) < sympy.Rational(ref.tol.numerator, ref.tol.denominator)
    except Exception:
        return False


def degenerate(v) -> bool:
    """An undefined value (``1/0``, ``zoo``, ``nan``, ``\\tan(\\pi/2)``): never equal to anything."""
    if not isinstance(v, Expr):
        return False
    e = v.expr
    if e.has(sympy.zoo, sympy.nan):
        return True
    if e.free_symbols or e.is_Atom or e.has(sympy.Integral, sympy.Sum, sympy.Product, sympy.Limit, sympy.Derivative):
        return False
    try:
        guard(e)
        return e.doit().has(sympy.zoo, sympy.nan)
    except Exception:
        return False


def _rounds_to(exact: sympy.Basic, pred: Num) -> bool:
    """Is the decimal ``pred`` the exact value rounded to ``pred``'s own last digit (within half
    a unit of it, either rounding of an exact tie), with at least `MIN_SIG_DIGITS` digits?"""
    if pred.tol is None or pred.sig < MIN_SIG_DIGITS or exact.free_symbols:
        return False
    value = _rational(exact)
    if value is not None:
        return abs(value - pred.value) <= pred.tol
    try:
        v = sympy.N(exact, pred.sig + 30)
        if not v.is_real or not isinstance(v, sympy.Float):
            return False
        diff = abs(sympy.Rational(str(v)) - sympy.Rational(pred.value.numerator, pred.value.denominator))
        return diff < sympy.Rational(pred.tol.numerator, pred.tol.denominator)
    except Exception:
        return False


def _more_precise(pred, ref: Num) -> bool:
    """Tolerance applies only when the prediction carries more precision than the reference."""
    if isinstance(pred, Num):
        return pred.tol is None or pred.digits > ref.digits
    return True


def _scalar_equal(pred, ref) -> bool:
    if degenerate(pred) or degenerate(ref):
        return False
    if isinstance(pred, Num) and isinstance(ref, Num):
        if pred.value == ref.value:
            return True
        if ref.tol is None:
            return _rounds_to(sympy.Rational(ref.value.numerator, ref.value.denominator), pred)
        return _more_precise(pred, ref) and abs(pred.value - ref.value) < ref.tol
    a, b = _to_sympy(pred), _to_sympy(ref)
    if a is None or b is None:
        return False
    guard(a)
    guard(b)
    if a == b:
        return True
    if isinstance(pred, Num) and not isinstance(ref, Num) and _rounds_to(b, pred):
        return True
    if a.free_symbols or b.free_symbols:
        return _symbolic_equal(a, b)
    ra, rb = _rational(a), _rational(b)
    if ra is not None and rb is not None:
        if ra == rb:
            return True
        return isinstance(ref, Num) and ref.tol is not None and _more_precise(pred, ref) and abs(ra - rb) < ref.tol
    if isinstance(ref, Num) and ref.tol is not None and _more_precise(pred, ref):
        if _within_tol(a, ref):
            return True
    if a.has(sympy.oo, -sympy.oo, sympy.zoo) or b.has(sympy.oo, -sympy.oo, sympy.zoo):
        return sympy.simplify(a - b) == 0 if not (a.is_infinite or b.is_infinite) else a == b
    try:
        return _numeric_zero(a - b)
    except Undecided:
        return sympy.simplify(a - b) == 0


def _is_scalar(v) -> bool:
    return isinstance(v, (Num, Expr))


def _single_symbol(v) -> bool:
    if isinstance(v, Expr):
        e = v.expr
        return e.is_Symbol or (isinstance(e, sympy.core.function.AppliedUndef)) or isinstance(e, sympy.Indexed)
    return False


def _rel_difference(r: Rel) -> sympy.Basic | None:
    if len(r.parts) != 2:
        return None
    a, b = _to_sympy(r.parts[0]), _to_sympy(r.parts[1])
    if a is None or b is None:
        return None
    return a - b


def _proportional(d1: sympy.Basic, d2: sympy.Basic, positive: bool) -> bool:
    """Is ``d1 = c * d2`` for a constant c != 0 (c > 0 when ``positive``)?"""
    symbols = sorted(d1.free_symbols | d2.free_symbols, key=str)
    if not symbols:
        return False
    rng = random.Random(99)
    ratio = None
    seen = 0
    for point in _sample_points(symbols, rng):
        try:
            v1 = sympy.N(d1.subs(point), 30)
            v2 = sympy.N(d2.subs(point), 30)
        except Exception:
            continue
        if not (v1.is_real and v2.is_real) or v2 == 0 or abs(v2) < sympy.Rational(1, 10**20):
            continue
        r = v1 / v2
        if ratio is None:
            ratio = r
        elif not _close(r, ratio):
            return False
        seen += 1
    if ratio is None or seen < 3 or abs(ratio) < sympy.Rational(1, 10**20):
        return False
    return ratio > 0 if positive else True


def _rel_equal(p: Rel, r: Rel) -> bool:
    if len(p.parts) != len(r.parts):
        return False
    # Side by side, or mirrored (``3 < x`` equals ``x > 3``).
    if p.ops == r.ops and all(equal(a, b) for a, b in zip(p.parts, r.parts)):
        return True
    mirrored = tuple(_FLIP[o] for o in reversed(p.ops))
    if mirrored == r.ops and all(equal(a, b) for a, b in zip(reversed(p.parts), r.parts)):
        return True
    if len(p.parts) != 2:
        return False
    d1, d2 = _rel_difference(p), _rel_difference(r)
    if d1 is None or d2 is None or not (d1.free_symbols and d2.free_symbols):
        return False  # a relation between constants is compared side by side only
    if p.ops == r.ops:
        return _proportional(d1, d2, positive=p.ops[0] not in ("=", "!="))
    if mirrored == r.ops:
        return _proportional(-d1, d2, positive=True)
    return False


def _named(r: Rel, i: int) -> bool:
    return bool(r.names and r.names[i]) or _single_symbol(r.parts[i])


def _assigned_value(v):
    """``x = 3`` -> 3: a name (``x``, ``f(x)``, ``AB``, ``(p, q)``) on one side, a value on
    the other; in a chain ``x = 2 + 3 = 5`` (or ``1 = z = 0``) the last part is the value."""
    if not isinstance(v, Rel) or any(o != "=" for o in v.ops):
        return None
    if len(v.parts) == 2:
        lhs, rhs = v.parts
        if _named(v, 0) and not isinstance(rhs, Rel):
            return rhs
        if _named(v, 1) and _is_scalar(lhs) and not _named(v, 0):
            return lhs
        return None
    last = v.parts[-1]
    if _named(v, 0) or (_is_scalar(last) and not (_to_sympy(last) is not None and _to_sympy(last).free_symbols)):
        return last
    return None


def _same_assignment(p: Rel, r: Rel) -> bool:
    """``x = 5 + 6 = 11`` equals ``x = 11``: the same name, equal values."""
    a, b = _assigned_value(p), _assigned_value(r)
    return a is not None and b is not None and _named(p, 0) and _named(r, 0) and equal(p.parts[0], r.parts[0]) and equal(a, b)


def _named_values(s: Seq) -> tuple | None:
    """``a = 4, b = 5`` -> (4, 5): every item names a different component."""
    if not s.items or not all(isinstance(it, Rel) and _named(it, 0) and _assigned_value(it) is not None for it in s.items):
        return None
    names = [str(it.parts[0]) for it in s.items]
    if len(set(names)) != len(names):
        return None
    return tuple(_assigned_value(it) for it in s.items)


def _dedupe(items: tuple) -> tuple:
    out: list = []
    for it in items:
        if not any(equal(it, o) for o in out):
            out.append(it)
    return tuple(out)


def _unordered_equal(ps: tuple, rs: tuple) -> bool:
    """Set equality: ``1, 2, 2`` equals ``2, 1`` (a repeated solution is one solution)."""
    if len(ps) <= 12 and len(rs) <= 12:
        ps, rs = _dedupe(ps), _dedupe(rs)
    if len(ps) != len(rs):
        return False
    if len(ps) > 8:  # greedy matching; exact matching is factorial in the length
        remaining = list(rs)
        for p in ps:
            for i, r in enumerate(remaining):
                if equal(p, r):
                    del remaining[i]
                    break
            else:
                return False
        return True
    table = [[equal(p, r) for r in rs] for p in ps]
    return any(all(table[i][j] for i, j in enumerate(perm)) for perm in permutations(range(len(rs))))


def _flatten_solutions(s: Seq) -> Seq:
    """``x = 1, 2`` and ``x = 1, x = 2`` both mean the values 1 and 2 (``a = 1, b = 2`` does not)."""
    names = {str(it.parts[0].expr) for it in s.items if _assigned_value(it) is not None and isinstance(it.parts[0], Expr)}
    if len(names) > 1:
        return s
    items = []
    for it in s.items:
        value = _assigned_value(it)
        items.append(value if value is not None else it)
    return Seq(s.open, s.close, tuple(items))


def _seq_equal(p: Seq, r: Seq) -> bool:
    if p.open == "" or r.open == "":
        pv, rv = _named_values(p) if p.open == "" else None, _named_values(r) if r.open == "" else None
        if (pv is None) != (rv is None) and {p.open, r.open} <= {"", "(", "g"}:
            a, b = pv if pv is not None else p.items, rv if rv is not None else r.items
            return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))  # a=4, b=5 vs (4, 5)
    if "g" in (p.open, r.open):  # {1, 3}: a tuple against a tuple, a set against anything else
        other = r.open if p.open == "g" else p.open
        kind = ("(", ")") if other == "(" else ("{", "}")
        p, r = Seq(*kind, p.items) if p.open == "g" else p, Seq(*kind, r.items) if r.open == "g" else r
    unordered = {"{"} if ORDERED else {"", "{"}
    has_dots = any(isinstance(x, Dots) for x in p.items + r.items)
    if ORDERED and {p.open, r.open} <= {"", "("} and "" in (p.open, r.open):  # 3, 1 against (3, 1): in order
        p, r = _flatten_solutions(Seq("", "", p.items)), _flatten_solutions(Seq("", "", r.items))
    if p.open in unordered and r.open in unordered and not has_dots:
        if p.open == "" or r.open == "":
            p, r = _flatten_solutions(p), _flatten_solutions(r)
        return _unordered_equal(p.items, r.items)
    if (p.open, p.close) != (r.open, r.close) or len(p.items) != len(r.items):
        return False
    return all(equal(a, b) for a, b in zip(p.items, r.items))


def _matrix_equal(p: Matrix, r: Matrix) -> bool:
    if len(p.rows) != len(r.rows) or any(len(a) != len(b) for a, b in zip(p.rows, r.rows)):
        return False
    return all(equal(a, b) for ra, rb in zip(p.rows, r.rows) for a, b in zip(ra, rb))


def _vector_items(m: Matrix) -> tuple | None:
    if all(len(row) == 1 for row in m.rows):
        return tuple(row[0] for row in m.rows)
    if len(m.rows) == 1:
        return tuple(m.rows[0])
    return None


def _real_set(v) -> sympy.Set | None:
    """Interval / union of intervals / one-variable inequality as a sympy set, else None."""
    try:
        if isinstance(v, Union):
            parts = [_real_set(x) for x in v.parts]
            return None if any(x is None for x in parts) else sympy.Union(*parts)
        if isinstance(v, Seq) and v.open in "([" and v.close in ")]" and v.open and len(v.items) == 2:
            lo, hi = (_to_sympy(x) for x in v.items)
            if lo is None or hi is None or lo.free_symbols or hi.free_symbols:
                return None
            if not bool(lo < hi):
                return None
            return sympy.Interval(lo, hi, v.open == "(", v.close == ")")
        if isinstance(v, Rel) and all(o in ("<", "<=", ">", ">=") for o in v.ops):
            values = [_to_sympy(x) for x in v.parts]
            if any(x is None for x in values):
                return None
            syms = [i for i, x in enumerate(values) if x.free_symbols]
            if len(syms) != 1 or len(values[syms[0]].free_symbols) != 1:
                return None
            x = values[syms[0]]
            if not x.is_Symbol:
                if isinstance(x, sympy.core.function.AppliedUndef):  # 0 < f(x) < 1: the range of f
                    x = values[syms[0]] = sympy.Dummy("t", real=True)
                else:  # 1 <= |z| <= 3/2: the set of z
                    x = next(iter(x.free_symbols))
            result = sympy.S.Reals
            for (a, op, b) in zip(values, v.ops, values[1:]):
                result = result.intersect(sympy.solveset(sympy.sympify(f"a {op} b", locals={"a": a, "b": b}), x, sympy.S.Reals))
            return result
    except (TypeError, ValueError, NotImplementedError, AttributeError):
        return None
    return None


def _approx_true(a: Approx) -> bool:
    """Is ``a.approx`` the exact value rounded or cut to its own last digit (within one unit of it)?"""
    exact = _assigned_value(a.exact) if isinstance(a.exact, Rel) else a.exact
    e = _to_sympy(exact) if exact is not None else None
    if e is None or e.free_symbols:
        return False
    guard(e)
    unit = sympy.Rational(1, 10**a.approx.digits) if a.approx.digits >= 0 else sympy.Integer(10) ** -a.approx.digits
    approx = sympy.Rational(a.approx.value.numerator, a.approx.value.denominator)
    value = _rational(e)
    if value is not None:
        return abs(sympy.Rational(value.numerator, value.denominator) - approx) < unit
    try:
        v = sympy.N(e, 40)
        return bool(v.is_real) and abs(sympy.Rational(str(v)) - approx) < unit
    except Exception:
        return False


def equal(pred, ref) -> bool:
    """Is the predicted value equivalent to the reference value?"""
    if isinstance(ref, Approx):  # a reference that states its approximation: the exact value is the answer
        ref = ref.exact
    if isinstance(pred, Approx):  # the exact part is the answer, and the approximation must be true to it
        if not _approx_true(pred):
            return False
        decimal_ref = isinstance(ref, Num) and ref.tol is not None
        return equal(pred.exact, ref) or (decimal_ref and equal(pred.approx, ref))
    if isinstance(ref, Dots) or isinstance(pred, Dots):
        return isinstance(ref, Dots) and isinstance(pred, Dots)
    if isinstance(ref, Text) or isinstance(pred, Text):
        pk = text_key(pred.text) if isinstance(pred, Text) else None
        rk = text_key(ref.text) if isinstance(ref, Text) else None
        if pk is not None and rk is not None:
            return pk == rk
        return False
    if isinstance(pred, Seq) and pred.comma_decimal is not None and _is_scalar(ref):
        return equal(pred.comma_decimal, ref)  # 1,22 vs 1.22
    if isinstance(ref, Seq) and ref.comma_decimal is not None and _is_scalar(pred):
        return equal(pred, ref.comma_decimal)
    if _is_scalar(pred) and _is_scalar(ref):
        return any(_scalar_equal(p, r) for p in _num_alternatives(pred) for r in _num_alternatives(ref))
    if isinstance(pred, Rel) and isinstance(ref, Rel):
        if _rel_equal(pred, ref) or _same_assignment(pred, ref):
            return True
    if isinstance(pred, Rel) and not isinstance(ref, Rel):
        value = _assigned_value(pred)
        if value is not None and equal(value, ref):
            return True
    if isinstance(ref, Rel) and not isinstance(pred, Rel):
        value = _assigned_value(ref)
        if value is not None and equal(pred, value):
            return True
    if isinstance(pred, Seq) and isinstance(ref, Seq):
        if _seq_equal(pred, ref):
            return True
    if isinstance(pred, Matrix) and isinstance(ref, Matrix):
        return _matrix_equal(pred, ref)
    if isinstance(pred, Matrix) and isinstance(ref, Seq) and ref.open == "(":
        items = _vector_items(pred)
        return items is not None and _seq_equal(Seq("(", ")", items), ref)
    if isinstance(ref, Matrix) and isinstance(pred, Seq) and pred.open == "(":
        items = _vector_items(ref)
        return items is not None and _seq_equal(pred, Seq("(", ")", items))
    if isinstance(pred, Union) and isinstance(ref, Union) and _unordered_equal(pred.parts, ref.parts):
        return True
    if isinstance(pred, (Union, Seq, Rel)) and isinstance(ref, (Union, Seq, Rel)):
        a, b = _real_set(pred), _real_set(ref)
        if a is not None and b is not None:
            return bool(a == b) or sympy.Complement(a, b) == sympy.S.EmptySet and sympy.Complement(b, a) == sympy.S.EmptySet
    if isinstance(ref, Seq) and ref.open == "" and len(ref.items) == 1:
        return equal(pred, ref.items[0])
    return False
