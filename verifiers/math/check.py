"""The check that runs inside a worker process: extract, parse, compare -> `Score`.

Importing this module imports sympy and latex2sympy2_extended; the trainer process never
needs to (it talks to workers through `verifiers.pool`). `is_equivalent` runs the same logic
in-process, for tests and notebooks, *without* a time bound.
"""

from __future__ import annotations

from verifiers.base import Score
from verifiers.math import compare
from verifiers.math.choice import choice_letter
from verifiers.math.compare import degenerate, equal
from verifiers.math.extract import DEFAULT_PRIORITY, extract
from verifiers.math.normalize import normalize
from verifiers.math.parse import MAX_ANSWER_CHARS, Rejected, parse_answer, parse_value

# A reference is usually a bare answer; it may also be a full solution (its boxed, ``####`` or
# "final answer" answer is used).
REFERENCE_PRIORITY = ("boxed", "hash", "bare", "final_answer", "answer_is", "last_math")


def reference_answer(reference: str) -> str:
    """The answer a dataset reference states (the reference itself when it is bare)."""
    found = extract(reference, REFERENCE_PRIORITY)
    return found.answer if found is not None else reference


def same_choice(prediction: str, r_norm: str) -> bool | None:
    """When the reference is an option letter and the prediction names one (``C. x = 42``, ``(C) 42``):
    whether they are the same letter; None when either is not a choice (compared as values instead)."""
    r_letter = choice_letter(r_norm)
    if r_letter is None or len(prediction) > MAX_ANSWER_CHARS:
        return None
    p_letter = choice_letter(normalize(prediction))
    return None if p_letter is None else p_letter == r_letter


def is_equivalent(prediction: str, reference: str, ordered: bool = False) -> bool:
    """In-process equivalence of two bare answers (no extraction, no time bound); ``ordered``: the
    question asks for its answers in order (`choice.asks_for_order`)."""
    compare.ORDERED = ordered
    r_norm, r_val = parse_answer(reference_answer(reference))
    choice = same_choice(prediction, r_norm)
    if choice is not None:
        return choice
    p_norm, p_val = parse_answer(prediction)
    return (p_norm == r_norm and not degenerate(p_val)) or equal(p_val, r_val)


def check(
    completion: str, reference: str, priority: tuple[str, ...] = DEFAULT_PRIORITY, min_sig_digits: int = 3,
    ordered: bool = False,
) -> Score:
    compare.MIN_SIG_DIGITS = min_sig_digits  # a worker runs one check at a time
    compare.ORDERED = ordered
    try:
        r_norm, r_val = parse_answer(reference_answer(reference))
    except Rejected as exc:
        return Score(0.0, None, {"extracted": 0.0}, f"reference {exc.kind}")
    found = extract(completion, priority)
    if found is None:
        return Score(0.0, False, {"extracted": 0.0}, outcome="unparsed")
    choice = same_choice(found.answer, r_norm)
    if choice is not None:
        return Score(1.0 if choice else 0.0, choice, {"extracted": 1.0})
    try:
        p_norm, p_val = parse_answer(found.answer)
    except Rejected as exc:
        if exc.kind == "empty":
            return Score(0.0, False, {"extracted": 0.0}, outcome="unparsed")
        return Score(0.0, None, {"extracted": 1.0}, exc.kind, "unparsed")  # the policy's answer, refused unread
    if p_norm == r_norm and not degenerate(p_val):
        ok = True
    else:
        try:
            ok = equal(p_val, r_val)
        except Rejected as exc:
            return Score(0.0, None, {"extracted": 1.0}, exc.kind)
        except (RecursionError, MemoryError):
            raise
        except Exception as exc:  # a sympy failure is the checker's, counted as an error
            return Score(0.0, None, {"extracted": 1.0}, f"compare_failed: {type(exc).__name__}: {str(exc)[:200]}")
    return Score(1.0 if ok else 0.0, ok, {"extracted": 1.0})


def _warm_up() -> None:
    # First use of the ANTLR parser builds its tables; do it at import (in the forkserver),
    # so no worker pays for it inside a check's time limit.
    try:
        equal(parse_value("\\frac{1}{2}+x"), parse_value("x+0.5"))
    except Exception:
        pass


_warm_up()
