"""Countdown checker (`countdown`): reach ``target`` with the given ``numbers``, each used at
most once (TinyZero's task, ``verl/utils/reward_score/countdown.py``).

``verifiers.get("countdown").score(completion, {"numbers": [25, 5, 3], "target": 60})``.

**Extraction.** The last closed ``<answer>…</answer>`` block; with no ``<answer>`` tag at
all, the whole completion as a bare answer (or, if that does not parse, its last line).
TinyZero reads only ``<answer>`` and evaluates the block with ``eval``; we accept what models
actually write there:

* an expression, ``(25 - 5) * 3``, optionally stating its value: ``(25 - 5) * 3 = 60``
  (a stated value must be true);
* a chain of steps, ``25 - 5 = 20, 20 * 3 = 60`` (``,``, ``;`` or new lines): every step must
  be true, and a step may use the *results* of earlier steps as well as given numbers;
* ``×``, ``·``, ``÷``, ``\\times``, ``\\cdot``, ``\\div``, ``\\frac{a}{b}``, Unicode minus and
  dashes, ``[ ]`` and ``\\left( \\right)`` as brackets, ``$`` math delimiters, ``\\boxed{}``,
  a leading ``Answer:`` and a trailing full stop.

**Safety.** Parsed with ``ast`` and evaluated by a whitelist (number literals, ``+ - * /``,
unary ``+ -``, brackets); never ``eval``. ``**``, ``//``, names, calls and scientific notation
are refused, so no value can explode. Inputs are bounded before parsing (answer length,
bracket depth, number count) and every value is an exact ``Fraction`` (``1/3*3`` is 1;
division by zero makes the answer wrong, never a crash).

**Numbers.** The literals an answer uses must be a sub-multiset of ``numbers`` (plus earlier
step results in a chain): each given number at most once, a number not given, or a float
such as ``2.5`` that is not given, makes the answer wrong. ``use_all=True`` is TinyZero's
rule: every given number exactly once (and every intermediate result used).

Reward 1.0 when correct, else 0.0; ``metrics["extracted"]`` says whether an equation was
found and parsed, ``metrics["numbers_ok"]`` whether it used only the given numbers.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from verifiers.base import Score

MAX_ANSWER_CHARS = 1_000  # an answer block or bare answer longer than this is no answer
MAX_DEPTH = 24  # bracket nesting
MAX_LITERALS = 64  # number literals in one answer
MAX_STEPS = 16
MAX_ABS = 10**30  # bound on every value (numerator and denominator)

_REPLACE = [  # order matters: LaTeX commands before the bare-character rules
    (re.compile(r"\\left\s*[(\[]|\\right\s*[)\]]"), lambda m: "(" if "left" in m.group() else ")"),
    (re.compile(r"\\(?:times|cdot|ast)\b"), "*"),
    (re.compile(r"\\div\b"), "/"),
    (re.compile(r"[×✕✖⋅·∙∗]"), "*"),
    (re.compile(r"[÷∕⁄]"), "/"),
    (re.compile(r"[−–—‒﹣－]"), "-"),
    (re.compile(r"[＋]"), "+"),
    (re.compile(r"[＝]"), "="),
    (re.compile(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])"), "*"),  # 3 x 5
    (re.compile(r"\\[,;!: ]|\\quad|\\qquad|\$|\\\(|\\\)|\\\[|\\\]"), " "),
]
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_BOXED = re.compile(r"^\\boxed\s*\{(.*)\}$", re.S)
_LABEL = re.compile(r"^\s*(?:final\s+)?(?:answer|equation|solution|expression)\s*(?:is)?\s*[:：]?\s*", re.I)
_ALLOWED = re.compile(r"[0-9+\-*/(). ]*")
_BARE_NUMBER = re.compile(r"\s*[+-]?\s*(\d+(?:\.\d*)?|\.\d+)\s*")


class Invalid(ValueError):
    """The answer is not a well-formed, safe countdown equation."""


# --------------------------------------------------------------------------- extraction


def extract_equation(completion: str) -> str | None:
    """The answer text: the last closed ``<answer>`` block (found with ``rfind``, linear in
    the completion's length whatever it holds), else the whole completion when it has no
    ``<answer>`` tag. None when there is no answer or it is over ``MAX_ANSWER_CHARS``."""
    end = completion.rfind("</answer>")
    if end >= 0:
        start = completion.rfind("<answer>", 0, end)
        if start < 0:
            return None
        text = completion[start + len("<answer>"):end].strip()
    elif "<answer>" in completion:
        return None  # an unclosed (truncated) answer is no answer
    else:
        text = completion.strip()
        if len(text) > MAX_ANSWER_CHARS:  # a long bare completion: its last line may be the answer
            text = text[-MAX_ANSWER_CHARS - 1:].rsplit("\n", 1)[-1].strip()
    return text if text and len(text) <= MAX_ANSWER_CHARS else None


def normalize(text: str) -> str:
    """Map the notations models write onto ``+ - * / ( ) =`` and step separators."""
    text = text.strip()
    m = _BOXED.match(text)
    if m:
        text = m.group(1)
    for _ in range(MAX_DEPTH):  # \frac{a}{b} -> ((a)/(b)), innermost first
        text, n = _FRAC.subn(r"((\1)/(\2))", text)
        if not n:
            break
    for pattern, repl in _REPLACE:
        text = pattern.sub(repl, text)
    text = text.replace("[", "(").replace("]", ")").replace("{", "(").replace("}", ")")
    text = _LABEL.sub("", text)
    return text.strip().rstrip(".").strip()


# --------------------------------------------------------------------------- evaluation


def _bounded(x: Fraction) -> Fraction:
    if abs(x.numerator) > MAX_ABS or x.denominator > MAX_ABS:
        raise Invalid("value out of bounds")
    return x


def _literal(node: ast.Constant, source: str) -> Fraction:
    text = ast.get_source_segment(source, node)
    if text is None or type(node.value) not in (int, float):
        raise Invalid("unsupported literal")
    try:
        return _bounded(Fraction(Decimal(text)))  # exact: "0.1" is 1/10, not a float
    except (InvalidOperation, ValueError) as exc:
        raise Invalid(f"bad number {text!r}") from exc


def _eval(node: ast.AST, source: str, used: list[Fraction]) -> Fraction:
    if isinstance(node, ast.Constant):
        value = _literal(node, source)
        used.append(value)
        return value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _eval(node.operand, source, used)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a, b = _eval(node.left, source, used), _eval(node.right, source, used)
        if isinstance(node.op, ast.Add):
            return _bounded(a + b)
        if isinstance(node.op, ast.Sub):
            return _bounded(a - b)
        if isinstance(node.op, ast.Mult):
            return _bounded(a * b)
        if b == 0:
            raise ZeroDivisionError("division by zero")  # a wrong answer, not an unparsed one
        return _bounded(a / b)
    raise Invalid(f"not allowed: {type(node).__name__}")


def evaluate(expr: str) -> tuple[Fraction, list[Fraction]]:
    """(exact value, number literals used) of a ``+ - * /`` expression; `Invalid` otherwise."""
    expr = expr.strip()
    if not expr or not _ALLOWED.fullmatch(expr):
        raise Invalid("characters outside digits, + - * / ( ) and .")
    depth = best = 0
    for ch in expr:
        depth += (ch == "(") - (ch == ")")
        best = max(best, depth)
    if best > MAX_DEPTH or len(re.findall(r"\d+(?:\.\d*)?|\.\d+", expr)) > MAX_LITERALS:
        raise Invalid("too deep or too many numbers")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise Invalid("does not parse") from exc
    used: list[Fraction] = []
    return _eval(tree.body, expr, used), used


def _steps(text: str) -> list[list[str]]:
    """Steps, each a list of ``=``-separated sides. Commas separate steps only in a chain
    (text with ``=``); elsewhere a comma makes the answer invalid."""
    parts = re.split(r"[;\n]" + ("|," if "=" in text else ""), text)
    steps = [[side.strip() for side in p.split("=")] for p in parts if p.strip()]
    if not steps or len(steps) > MAX_STEPS:
        raise Invalid("no steps or too many")
    return steps


def check(text: str, numbers: Sequence[int], target: Fraction, use_all: bool = False) -> tuple[bool, bool]:
    """(correct, numbers_ok) for a normalised answer; raises `Invalid` if it does not parse.

    The pool starts as the given numbers; each step takes its literals from the pool and
    puts its result back, so a chain may reuse results but never a number twice."""
    pool: Counter[Fraction] = Counter(Fraction(n) for n in numbers)
    steps = _steps(text)
    value = None
    for i, sides in enumerate(steps):
        if any(not s for s in sides):
            raise Invalid("empty side of '='")
        if len(sides) > 1 and _BARE_NUMBER.fullmatch(sides[0]) and not _BARE_NUMBER.fullmatch(sides[-1]):
            sides = sides[::-1]  # "60 = (25 - 5) * 3"
        value, used = evaluate(sides[0])
        for stated in sides[1:]:  # "= 20": a stated result, not a use of 20
            if not _BARE_NUMBER.fullmatch(stated) or evaluate(stated)[0] != value:
                return False, True  # a false or malformed stated result: wrong, but parsed
        if len(sides) == 1 and i != len(steps) - 1:
            raise Invalid("a step in a chain states no result")
        need = Counter(used)
        if any(pool[v] < k for v, k in need.items()):
            return False, False
        pool -= need
        if len(sides) > 1:
            pool[value] += 1
    if use_all:
        leftover = +pool
        if len(steps[-1]) > 1:  # the chain's final result stays in the pool
            leftover[value] -= 1
        if +leftover:
            return False, False
    return value == target, True


# --------------------------------------------------------------------------- task parsing


def parse_numbers(raw: Any) -> list[int]:
    """``[1, 2, 3]``, ``(1, 2, 3)``, ``"[1, 2, 3]"`` or ``"1 2 3"`` as a list of ints."""
    if isinstance(raw, str):
        # digits and separators are disjoint classes: no backtracking blow-up on bad input
        if not re.fullmatch(r"[\s\[\](),]*(?:-?\d+(?:[\s\[\](),]+|\Z))*", raw):
            raise ValueError(f"numbers {raw[:100]!r} is not a list of integers")
        items: list[Any] = re.findall(r"-?\d+", raw)
    elif isinstance(raw, Sequence) or hasattr(raw, "__iter__"):
        items = list(raw)
    else:
        raise ValueError(f"numbers must be a list of integers, got {type(raw).__name__}")
    out = []
    for x in items:
        value = Fraction(str(x).strip()) if isinstance(x, (str, float)) else Fraction(int(x))
        if value.denominator != 1:
            raise ValueError(f"numbers must be integers, got {x!r}")
        out.append(int(value))
    if not out:
        raise ValueError("numbers is empty")
    return out


def parse_target(raw: Any) -> Fraction:
    try:
        return Fraction(str(raw).strip()) if isinstance(raw, (str, float)) else Fraction(int(raw))
    except (ValueError, TypeError, ZeroDivisionError) as exc:
        raise ValueError(f"target {str(raw)[:100]!r} is not a number") from exc


class CountdownVerifier:
    """Reward 1 when the answer reaches ``task["target"]`` with ``task["numbers"]``.

    use_all: require every number exactly once (TinyZero) instead of at most once.
    """

    name = "countdown"
    requires: tuple = ("numbers", "target")

    def __init__(self, use_all: bool = False):
        self.use_all = bool(use_all)

    def score(self, completion: str, task: Mapping[str, Any]) -> Score:
        for key in self.requires:
            if key not in task:
                raise KeyError(f"task has no {key!r} field (keys: {sorted(task)})")
        numbers, target = parse_numbers(task["numbers"]), parse_target(task["target"])
        if not isinstance(completion, str):
            raise TypeError(f"completion must be a str, got {type(completion).__name__}")
        text = extract_equation(completion)
        candidates = [] if text is None else [text]
        if text is not None and "<answer>" not in completion and "\n" in text:
            candidates.append(text.rsplit("\n", 1)[-1])  # prose, then the answer on the last line
        for candidate in candidates:
            try:
                ok, numbers_ok = check(normalize(candidate), numbers, target, self.use_all)
            except Invalid:
                continue
            except ZeroDivisionError:
                ok, numbers_ok = False, False
            return Score(1.0 if ok else 0.0, ok, {"extracted": 1.0, "numbers_ok": float(numbers_ok)})
        return Score(0.0, False, {"extracted": 0.0, "numbers_ok": 0.0}, outcome="unparsed")
