"""Worker side of the ``math_verify`` adapter (imports math-verify; loaded only in workers)."""

from __future__ import annotations

from math_verify import parse, verify

from verifiers.base import Score


def gold_text(reference: str) -> str:
    """math-verify extracts LaTeX from ``$…$`` or ``\\boxed{}``; wrap a bare reference."""
    if "$" in reference or "\\boxed" in reference or "\\(" in reference:
        return reference
    return f"${reference}$"


def check(completion: str, reference: str) -> Score:
    gold = parse(gold_text(reference))
    # A bare LaTeX answer (no $ or \boxed) is wrapped first, so math-verify sees it as LaTeX;
    # if that finds nothing, the completion is parsed as it is.
    pred = parse(gold_text(completion)) if gold_text(completion) != completion else []
    if not pred:
        pred = parse(completion)
    if not pred:
        return Score(0.0, False, {"extracted": 0.0}, outcome="unparsed")
    ok = bool(verify(gold, pred))
    return Score(1.0 if ok else 0.0, ok, {"extracted": 1.0})


check("$1$", "1")  # warm up the parsers at import, outside any check's time limit
