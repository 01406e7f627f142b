"""``math``: competition problems (MATH / MATH-500 style) with LaTeX references.

The reference is the row's ``answer`` column when the data has one, else the last
``\\boxed{...}`` of its ``solution``; the ``math`` verifier checks equivalence.
"""

from __future__ import annotations

from typing import Literal

from rlvr.errors import DataError
from rlvr.tasks.base import Row, Splits, register_task
from rlvr.tasks.sources import SourceTask, load_source, prompt_of

COLUMNS = {"question": "problem", "answer": "answer", "solution": "solution"}


class MathTask(SourceTask):
    kind: Literal["math"] = "math"


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def to_row(rec: dict, i: int, where: str, columns: dict[str, str]) -> Row:
    question = prompt_of(rec, i, where, columns)
    answer = rec.get("answer")
    if answer is None or not str(answer).strip():
        solution = rec.get("solution")
        answer = last_boxed(str(solution)) if solution else None
        if not answer:
            raise DataError(f"{where}: row {i} has no 'answer' (column {columns.get('answer')!r}) and no "
                            f"\\boxed{{}} in its 'solution' (column {columns.get('solution')!r}); keys: {sorted(rec)}")
    row = {"question": question, "answer": str(answer).strip()}
    if rec.get("solution"):
        row["solution"] = str(rec["solution"])
    return row


@register_task("math", MathTask, verifier="math")
def load(cfg: MathTask) -> Splits:
    return load_source(cfg, to_row, COLUMNS)
