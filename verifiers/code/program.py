"""Turning a completion and a task row into a job for the sandbox. Text only: nothing the
candidate wrote is parsed or run in the trainer process (regexes, no ``ast``)."""

from __future__ import annotations

import ast
import builtins
import json
import re
from collections.abc import Mapping
from typing import Any

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_PY_LANGS = {"", "python", "py", "python3", "py3"}
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)


def extract_code(completion: str) -> str:
    """The code of a completion. An R1-style completion's last closed ``<answer>...</answer>``
    block wins (a fenced block inside it, else its raw content); otherwise the last fenced
    Python block (an unterminated last fence counts, as a truncated generation), else the
    completion itself."""
    answers = _ANSWER.findall(completion)
    if answers:  # "<answer>\ndef f..." or "<answer> def f...": the code starts at its first line
        first, _, rest = answers[-1].partition("\n")
        completion = (rest if not first.strip() else first.lstrip(" \t") + "\n" + rest).rstrip() + "\n"
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(completion)]
    py = [body for lang, body in blocks if lang in _PY_LANGS]
    return py[-1] if py else completion


def defines(code: str, name: str) -> bool:
    """Whether ``code`` defines ``name`` at top level (def, async def, class or assignment)."""
    n = re.escape(name)
    return re.search(rf"^(?:async[ \t]+def|def|class)[ \t]+{n}\b|^{n}[ \t]*(?::[^=\n]*)?=(?!=)", code, re.M) is not None


def build_program(completion: str, task: Mapping[str, Any]) -> str:
    """HumanEval convention: the completion continues the prompt, unless it defines the
    entry point itself (a whole program), in which case the prompt is not prepended."""
    code = extract_code(completion)
    entry, prompt = task.get("entry_point"), task.get("prompt") or ""
    if entry and prompt and not defines(code, entry):
        return prompt + code
    return code


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(map(str, value)) + "\n"
    return str(value)


def io_cases(task: Mapping[str, Any]) -> tuple[list[str], list[str]] | None:
    """stdin/stdout cases from ``inputs``/``outputs`` or APPS' ``input_output`` JSON."""
    spec: Any = task
    if "inputs" not in task and task.get("input_output"):
        spec = task["input_output"]
        if isinstance(spec, str):
            spec = json.loads(spec)
    if "inputs" not in spec or "outputs" not in spec:
        return None
    inputs, outputs = [_as_text(x) for x in spec["inputs"]], [_as_text(x) for x in spec["outputs"]]
    if len(inputs) != len(outputs) or not inputs:
        raise ValueError(f"task has {len(inputs)} inputs and {len(outputs)} outputs")
    return inputs, outputs


def function_test(task: Mapping[str, Any]) -> tuple[str, list[str]] | None:
    """(test source, names of candidate functions it calls) for function-style tasks.

    ``test`` (HumanEval: defines ``check(candidate)``; MBPP: module-level asserts) or
    ``test_list`` (MBPP). Without an ``entry_point``, the candidate functions are the
    names the (trusted) test calls but neither defines nor gets from builtins.
    """
    if task.get("test"):
        test = str(task["test"])
    elif task.get("test_list"):
        test = "\n".join(map(str, task["test_list"]))
    else:
        return None
    setup = task.get("test_setup_code") or ""
    test = f"{setup}\n{test}" if setup else test
    if task.get("entry_point"):
        return test, [str(task["entry_point"])]
    tree = ast.parse(test)
    if humaneval_style(tree):  # without the entry point nothing would call check: a free pass
        raise ValueError("the test defines check(candidate) but the task has no entry_point")
    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))}
    defined |= {t.id for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.For, ast.comprehension))
                for t in ast.walk(n.target if not isinstance(n, ast.Assign) else n) if isinstance(t, ast.Name)
                and isinstance(t.ctx, ast.Store)}
    defined |= {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names}
    called = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    names = sorted({c for c in called if c not in defined and not hasattr(builtins, c)})
    if not names:
        raise ValueError("task has no entry_point and its test calls no undefined function")
    return test, names


def humaneval_style(test: str | ast.Module) -> bool:
    """Whether the test defines ``check`` at top level and never calls it there (HumanEval:
    the harness calls ``check(entry_point)``), so it needs the task's ``entry_point``."""
    tree = ast.parse(test) if isinstance(test, str) else test
    defines_check = any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body)
    calls_check = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "check"
                      for stmt in tree.body if not isinstance(stmt, ast.FunctionDef) for n in ast.walk(stmt))
    return defines_check and not calls_check


def missing_task_keys(task: Mapping[str, Any]) -> list[str]:
    """What a code task lacks to be run: stdin/stdout cases (``inputs`` + ``outputs``, or
    ``input_output``) or function tests (``test`` or ``test_list``; a HumanEval-style
    ``test`` also needs ``entry_point``)."""
    def given(key: str) -> bool:
        value = task.get(key)
        return value is not None and not (isinstance(value, (str, list, tuple, dict)) and len(value) == 0)

    if given("inputs") or given("outputs"):
        return [k for k in ("inputs", "outputs") if not given(k)]
    if given("input_output"):
        return []
    if given("test"):
        try:
            needs_entry = humaneval_style(str(task["test"]))
        except (SyntaxError, ValueError):
            return []  # a broken test is reported when it runs (sandbox_error), not as a missing key
        return ["entry_point"] if needs_entry and not given("entry_point") else []
    if given("test_list"):
        return []
    return ["test | test_list | inputs + outputs | input_output"]
