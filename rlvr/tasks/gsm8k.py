"""``gsm8k``: grade-school word problems whose reference solution ends in ``#### <number>``.

The reference is the number after ``####`` (thousands separators removed); the ``math``
verifier checks equivalence. A reference without ``####`` is used only when it is a bare number
(``72``, ``-1,234.5``, ``3/4``); any other text is a load error naming the row, since the math
verifier would read the last number in it ("8 clips, 3 left" would make 3 the answer).
"""

from __future__ import annotations

import re
from typing import Literal

from rlvr.errors import DataError
from rlvr.tasks.base import Row, Splits, register_task
from rlvr.tasks.sources import SourceTask, load_source, need, prompt_of

COLUMNS = {"question": "question", "answer": "answer"}


class GSM8KTask(SourceTask):
    kind: Literal["gsm8k"] = "gsm8k"


_BARE_NUMBER = re.compile(r"^[-+]?\$?(\d[\d,]*(\.\d+)?|\.\d+)(/\d+)?\.?$")


def is_bare_number(text: str) -> bool:
    """``72``, ``-1,234.5``, ``$18``, ``3/4``: a reference that needs no ``####``."""
    return bool(_BARE_NUMBER.match(text.strip()))


def gsm8k_reference(solution: str) -> str:
    """``... #### 1,234`` -> ``1234``; text without ``####`` comes back stripped."""
    text = str(solution)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    text = text.strip()
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text).rstrip(".").strip()


def to_row(rec: dict, i: int, where: str, columns: dict[str, str]) -> Row:
    question = prompt_of(rec, i, where, columns)
    solution = str(need(rec, "answer", i, where, columns))
    column = columns.get("answer", "answer")
    if "####" not in solution and not is_bare_number(solution):
        raise DataError(f"{where}: row {i}: the answer (column {column!r}) has no '####' before the final number and "
                        f"is not a bare number: {solution.strip()[:80]!r}; a GSM8K solution ends in '#### <number>' "
                        "(task.kind=hf with task.columns.answer=COLUMN takes a reference as it is)")
    answer = gsm8k_reference(solution)
    if not answer:
        raise DataError(f"{where}: row {i}: nothing after '####' in column {column!r}")
    return {"question": question, "answer": answer, "solution": solution}


@register_task("gsm8k", GSM8KTask, verifier="math")
def load(cfg: GSM8KTask) -> Splits:
    return load_source(cfg, to_row, COLUMNS)
