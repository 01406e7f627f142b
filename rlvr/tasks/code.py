"""``code``: Python problems checked by the sandboxed ``code`` verifier.

Two shapes, as in the public datasets:

* function completion (HumanEval / MBPP): ``prompt`` (signature + docstring), ``test`` and
  ``entry_point`` (or MBPP's ``test_list`` of asserts); the question shows the stub and asks
  for the whole function;
* stdin/stdout (APPS / CodeContests): ``question`` plus ``inputs`` / ``outputs`` lists (or
  APPS' ``input_output`` JSON).

Every test field travels in the row to the verifier; the policy's prompt never holds them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlvr.errors import DataError
from rlvr.tasks.base import Row, Splits, register_task
from rlvr.tasks.sources import SourceTask, load_source

CONTEXT_KEYS = ("prompt", "test", "entry_point", "test_list", "inputs", "outputs", "input_output", "compare",
                "timeout", "setup_code", "visible_tests")  # visible_tests: the code_repair environment's own
COLUMNS = {"question": "question", **{k: k for k in CONTEXT_KEYS}}

FUNCTION_QUESTION = "Write the complete Python function below (signature and body) in one code block.\n```python\n{stub}```"
STDIO_QUESTION = "{text}\nWrite a Python program that reads standard input and prints the answer, in one code block."


class CodeTask(SourceTask):
    kind: Literal["code"] = "code"
    function_question: str = Field(FUNCTION_QUESTION, description="Question for function tasks, with a {stub} slot.")
    stdio_question: str = Field(STDIO_QUESTION, description="Question for stdin/stdout tasks, with a {text} slot.")


def make_row(rec: dict, i: int, where: str, columns: dict[str, str], cfg: CodeTask) -> Row:
    row: Row = {k: rec[k] for k in CONTEXT_KEYS if rec.get(k) not in (None, "", [])}
    has_function_tests = "test" in row or "test_list" in row
    has_io_tests = ("inputs" in row and "outputs" in row) or "input_output" in row
    if not (has_function_tests or has_io_tests):
        raise DataError(f"{where}: row {i} has no tests: the code verifier needs 'test' (+ 'entry_point') or "
                        "'test_list' for function tasks, or 'inputs' + 'outputs' (or 'input_output') for "
                        f"stdin/stdout tasks (map columns with task.columns.<key>=COLUMN); keys: {sorted(rec)}")
    if "test" in row and "entry_point" not in row and "test_list" not in row:
        raise DataError(f"{where}: row {i} has a 'test' but no 'entry_point' (column "
                        f"{columns.get('entry_point', 'entry_point')!r}); keys: {sorted(rec)}")
    if has_io_tests:
        check_io_cases(row, i, where)
    text = rec.get("question") or rec.get("text")
    if isinstance(text, (list, dict)):
        raise DataError(f"{where}: row {i}: 'question' (column {columns.get('question', 'question')!r}) is not text; "
                        "the code kind puts the problem text into task.stdio_question (chat messages are not taken "
                        "here: use task.kind=hf with task.verifier=code and task.format=chat)")
    if has_function_tests and row.get("prompt"):
        row["question"] = cfg.function_question.format(stub=row["prompt"])
    elif text:
        row["question"] = cfg.stdio_question.format(text=str(text).strip()) if has_io_tests else str(text)
    else:
        raise DataError(f"{where}: row {i} has neither a 'prompt' (function stub) nor a 'question' (column "
                        f"{columns.get('question', 'question')!r}); keys: {sorted(rec)}")
    return row


def check_io_cases(row: Row, i: int, where: str) -> None:
    """The stdin/stdout cases the verifier will run, read as it reads them: one expected output per
    input (else every score of the row would be a verifier error)."""
    from verifiers.code.program import io_cases

    try:
        cases = io_cases(row)
    except (ValueError, TypeError) as exc:  # unequal counts, no cases, input_output that is not JSON
        raise DataError(f"{where}: row {i}: its stdin/stdout tests cannot run: {exc} (columns 'inputs' and "
                        "'outputs', or 'input_output'); every input needs exactly one expected output") from None
    if cases is None:
        raise DataError(f"{where}: row {i}: 'input_output' holds no 'inputs' and 'outputs' lists")


@register_task("code", CodeTask, verifier="code")
def load(cfg: CodeTask) -> Splits:
    return load_source(cfg, lambda rec, i, where, cols: make_row(rec, i, where, cols, cfg), COLUMNS)
