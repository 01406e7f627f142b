"""Integer-arithmetic answer checker (`arith`) for the procedural R1-Zero task.

The answer is read from the single ``<answer>`` block (or, with no tags at all, the whole
completion) and parsed with ``ast`` — never ``eval`` — under a size limit, a depth limit and
magnitude bounds on every intermediate value, so ``9**9**9`` or 10,000 nested brackets
return promptly with reward 0. Values are exact ``Fraction``s; no float rounding.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from verifiers.base import Score
from verifiers.format import extract_answer

MAX_ANSWER_CHARS = 200
MAX_DEPTH = 32
MAX_ABS = 10**15
_ALLOWED_CHARS = re.compile(r"[0-9+\-*/(). ,_]*")


class UnsafeExpression(ValueError):
    pass


def _depth(s: str) -> int:
    depth = best = 0
    for ch in s:
        depth += ch == "("
        depth -= ch == ")"
        best = max(best, depth)
    return best


def _bounded(x: Fraction) -> Fraction:
    if abs(x.numerator) > MAX_ABS * max(1, x.denominator) or x.denominator > MAX_ABS:
        raise UnsafeExpression("value out of bounds")
    return x


def _eval(node: ast.AST, allow_ops: bool) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body, allow_ops)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return _bounded(Fraction(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand, allow_ops)
        return -v if isinstance(node.op, ast.USub) else v
    if allow_ops and isinstance(node, ast.BinOp):
        a, b = _eval(node.left, allow_ops), _eval(node.right, allow_ops)
        if isinstance(node.op, ast.Add):
            return _bounded(a + b)
        if isinstance(node.op, ast.Sub):
            return _bounded(a - b)
        if isinstance(node.op, ast.Mult):
            return _bounded(a * b)
        if isinstance(node.op, ast.Div):
            if b == 0:
                raise UnsafeExpression("division by zero")
            return _bounded(a / b)
    raise UnsafeExpression(f"unsupported syntax: {type(node).__name__}")


def parse_value(text: str, allow_ops: bool = False) -> Fraction | None:
    """Exact value of a number (or, with ``allow_ops``, a +-*/ expression); None if invalid."""
    text = text.strip().replace(",", "").replace("_", "")
    if not text or len(text) > MAX_ANSWER_CHARS or not _ALLOWED_CHARS.fullmatch(text):
        return None
    if _depth(text) > MAX_DEPTH:
        return None
    try:
        tree = ast.parse(text, mode="eval")
        return _eval(tree, allow_ops)
    except (SyntaxError, UnsafeExpression, RecursionError, ValueError, MemoryError):
        return None


class ArithVerifier:
    """Reward 1 when the answer equals ``task["answer"]`` exactly, else 0."""

    name = "arith"
    requires: tuple = ("answer",)

    def __init__(self, allow_expressions: bool = False, answer_key: str = "answer"):
        self.allow_expressions = allow_expressions
        self.answer_key = answer_key
        self.requires = (answer_key,)

    def score(self, completion: str, task: Mapping[str, Any]) -> Score:
        if self.answer_key not in task:
            raise KeyError(f"task has no {self.answer_key!r} field (keys: {sorted(task)})")
        reference = parse_value(str(task[self.answer_key]), allow_ops=True)
        if reference is None:
            raise ValueError(f"reference {task[self.answer_key]!r} is not a number")
        if "<answer>" in completion or "</answer>" in completion:
            answer = extract_answer(completion)
        else:
            answer = completion
        if answer is None:
            return Score(0.0, False, {"extracted": 0.0}, outcome="unparsed")
        value = parse_value(answer, self.allow_expressions)
        if value is None:
            return Score(0.0, False, {"extracted": 0.0}, outcome="unparsed")
        ok = value == reference
        return Score(1.0 if ok else 0.0, ok, {"extracted": 1.0})
