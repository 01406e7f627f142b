"""``gsm8k``: grade-school word problems whose reference solution ends in ``#### <number>``.

The reference is the number after ``####`` (thousands separators removed); the ``math``
verifier checks equivalence. A bare reference without ``####`` is used as is.
"""

from __future__ import annotations

import re
from typing import Literal

from rlvr.tasks.base import Row, Splits, register_task
from rlvr.tasks.sources import SourceTask, load_source, need

COLUMNS = {"question": "question", "answer": "answer"}


class GSM8KTask(SourceTask):
    kind: Literal["gsm8k"] = "gsm8k"


def gsm8k_reference(solution: str) -> str:
    """``... #### 1,234`` -> ``1234``; text without ``####`` comes back stripped."""
    text = str(solution)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    text = text.strip()
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text).rstrip(".").strip()


def to_row(rec: dict, i: int, where: str, columns: dict[str, str]) -> Row:
    question = str(need(rec, "question", i, where, columns))
    solution = str(need(rec, "answer", i, where, columns))
    answer = gsm8k_reference(solution)
    if not answer:
        raise ValueError(f"{where}: row {i}: nothing after '####' in column {columns.get('answer', 'answer')!r}")
    return {"question": question, "answer": answer, "solution": solution}


@register_task("gsm8k", GSM8KTask, verifier="math")
def load(cfg: GSM8KTask) -> Splits:
    return load_source(cfg, to_row, COLUMNS)
