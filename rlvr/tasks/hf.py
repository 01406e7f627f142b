"""``hf``: any ``datasets`` source with a column mapping, for data no built-in kind describes.

``task.columns`` maps row keys to source columns: ``question`` is required, every other mapped
column (``answer``, ``numbers``, ``target``, ``test``, ...) travels to the verifiers as is.
``task.verifier`` names the default reward (``math`` unless set); ``task.answer_format`` can
reduce a full solution to its reference (``gsm8k``: after ``####``; ``boxed``: the last
``\\boxed{}``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlvr.errors import DataError
from rlvr.tasks.base import Row, Splits, register_task
from rlvr.tasks.gsm8k import gsm8k_reference, is_bare_number
from rlvr.tasks.math import last_boxed
from rlvr.tasks.sources import SourceTask, load_source, prompt_of


class HFTask(SourceTask):
    kind: Literal["hf"] = "hf"
    answer_format: Literal["raw", "gsm8k", "boxed"] = Field(
        "raw", description="How the `answer` column holds the reference: as is, after '####', or in \\boxed{}.")
    verifier: str = Field("math", description="Default reward verifier when `rewards` is not given.")

    @model_validator(mode="after")
    def _needs_question(self) -> HFTask:
        if "question" not in self.columns:
            raise ValueError("task.columns.question is required for task.kind='hf' (the column holding the prompt)")
        return self


def make_row(rec: dict, i: int, where: str, columns: dict[str, str], cfg: HFTask) -> Row:
    row: Row = {key: rec.get(key) for key in cfg.columns}
    row["question"] = prompt_of(rec, i, where, columns)
    if "answer" not in row and isinstance(row["question"], list) and rec.get("answer") is not None:
        row["answer"] = rec["answer"]  # a TRL conversation's final reply (rlvr.tasks.sources.split_conversation)
    if "answer" in row and row["answer"] is not None and cfg.answer_format != "raw":
        text = str(row["answer"])
        if cfg.answer_format == "gsm8k":
            ref = gsm8k_reference(text) if "####" in text or is_bare_number(text) else None
        else:
            ref = last_boxed(text)
        if not ref:
            raise DataError(f"{where}: row {i}: no {cfg.answer_format} reference in column {columns['answer']!r}")
        row["answer"] = ref
    return row


@register_task("hf", HFTask, verifier="math")
def load(cfg: HFTask) -> Splits:
    return load_source(cfg, lambda rec, i, where, cols: make_row(rec, i, where, cols, cfg), {})
