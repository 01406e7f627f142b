"""``code_repair``: the model writes a program, the environment runs the row's *visible* tests in the
sandbox and shows the first failure, and the model tries again, up to ``max_turns`` attempts.

A row's tests are split once, when the task loads (``prepare_row``, called for every row before any
model loads): the first ``visible`` tests are the environment's, the rest stay in the row's own test
fields (``test`` / ``test_list`` / ``inputs`` + ``outputs``), where the run's rubric (the ``code``
verifier) reads them. So the reward runs the hidden tests only, and the visible ones never reach the
rubric's row nor the hidden ones an observation. A row may bring its own ``visible_tests`` (function
rows: a list of test sources such as ``"assert f(2) == 5"``; stdin/stdout rows: ``{"inputs": [...],
"outputs": [...]}``); then every test of its own is hidden.

What is a "test": one ``assert`` (a top-level statement that holds one) of HumanEval's
``check(candidate)`` body or of a module-level test, one entry of MBPP's ``test_list``, one
stdin/stdout case. Statements without an assert (imports, helpers, constants) are kept on both sides.
A visible test from ``check`` is shown with the entry point's name in place of ``candidate``.

Each attempt (a model turn) is run on the visible tests in order by the sandbox's own verdict (a fresh
process per run; nothing the candidate prints decides a pass). The first failing test comes back as
the next observation (``feedback_template``): the test, the expected value and what the program gave
(an ``assert f(x) == y`` is evaluated once more as a script to show the value), or the error's last
line, cut to ``max_feedback_chars``. An attempt that passes every visible test ends the episode; the
rubric then grades the episode's *last attempt* (``graded_text``: the last model turn, not the whole
episode, whose earlier attempts would otherwise be what the code verifier extracts) on the hidden tests.

A sandbox that cannot run raises: the episode ends with ``env_error`` and is not scored.

``info`` per step: ``attempt`` (1-based), ``visible_passed`` / ``visible_total`` (tests before the first
failure), ``status`` (the sandbox's status of the first failure, or ``passed``), ``tool_call`` (1: each
attempt is one use of the sandbox) and ``tool_error`` (1 when the program did not run to a verdict:
no code, a syntax error, an exception, a timeout, memory).
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from rlvr.envs.base import Encode, EnvBase, Observation, prompt_observation, register_env
from rlvr.envs.trajectory import ModelSegment, Trajectory
from rlvr.errors import DataError

# row keys copied into the task of one visible test (how to build and run the program, never tests)
RUN_KEYS = ("prompt", "entry_point", "compare", "float_tol", "timeout", "memory_mb", "test_setup_code")
RAN_NOT = ("syntax_error", "runtime_error", "timeout", "memory")  # the attempt did not run to a verdict
GOT = "<<code_repair got>>"  # marks what the feedback script printed, after whatever the program printed


class CodeRepairConfig(EnvBase):
    """Write a program, read the first failing visible test, repair it; the reward runs the hidden tests."""

    kind: Literal["code_repair"] = "code_repair"
    # a task this environment runs is one the `code` verifier checks (its rows carry tests)
    task_verifiers: ClassVar[tuple[str, ...]] = ("code",)
    max_turns: int = Field(3, ge=1, description="Most attempts in one episode.")
    visible: int = Field(1, ge=1, description="How many of a row's tests (its first ones) the environment runs "
                         "and shows failures of; the rest are hidden, run only by the reward. A row with a "
                         "'visible_tests' column runs those instead, and all its own tests are hidden.")
    feedback_template: str = Field(
        "\nUser: The program fails a test.\n{feedback}\nWrite the corrected program.\nAssistant: <think>",
        description="How a failure is shown to the model; {feedback} is the test, expected and got (or the "
        "error). The default continues the R1 template, so the next attempt is written as the first was.")
    max_feedback_chars: int = Field(400, ge=40, description="{feedback} is cut to this many characters.")
    timeout_s: float = Field(5.0, gt=0, description="Wall-clock seconds per visible test run (a row's own "
                             "'timeout' overrides it, as for the code verifier).")
    memory_mb: int = Field(512, ge=64, description="Address-space limit of an attempt's process, in MiB.")

    @model_validator(mode="after")
    def _template(self) -> CodeRepairConfig:
        if "{feedback}" not in self.feedback_template:
            raise ValueError("env.feedback_template must contain '{feedback}'")
        return self

    def prepare_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The row with its tests split: ``visible_tests`` for the environment, the hidden rest in the row's
        own test fields for the rubric. A ValueError says what the row lacks. Idempotent: a prepared row
        carries ``visible_tests`` in the form a row may bring them in."""
        return split_tests(row, self.visible)

    def graded_text(self, traj: Trajectory) -> str:
        """The last attempt: what the rubric grades (the earlier ones failed a visible test and are history)."""
        last = [s for s in traj.segments if isinstance(s, ModelSegment)]
        return last[-1].text if last else ""


# -- splitting a row's tests ------------------------------------------------------------------------------

def split_tests(row: Mapping[str, Any], visible: int) -> dict[str, Any]:
    from verifiers.code.program import io_cases

    out = dict(row)
    try:
        cases = io_cases(row)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"its stdin/stdout tests cannot be read: {exc}") from None
    given = row.get("visible_tests")
    if cases is not None:
        if given is not None:
            shown = io_cases(given) if isinstance(given, Mapping) else None
            if shown is None:
                raise ValueError("'visible_tests' of a stdin/stdout row must be {'inputs': [...], 'outputs': [...]}")
            hidden = cases
        else:
            if len(cases[0]) <= visible:
                raise ValueError(f"it has {len(cases[0])} stdin/stdout case(s) and env.visible={visible} leaves "
                                 "none hidden for the reward (lower env.visible, or give the row 'visible_tests')")
            shown = (cases[0][:visible], cases[1][:visible])
            hidden = (cases[0][visible:], cases[1][visible:])
        out.pop("input_output", None)
        out.update(inputs=list(hidden[0]), outputs=list(hidden[1]),
                   visible_tests={"inputs": list(shown[0]), "outputs": list(shown[1])})
        return out
    if row.get("test"):
        tests, rebuild = _split_source(str(row["test"]), row.get("entry_point"))
        key = "test"
    elif row.get("test_list"):
        tests = [str(t) for t in row["test_list"]]
        rebuild, key = list, "test_list"
    else:
        raise ValueError("it has no tests: code_repair needs 'test' (+ 'entry_point') or 'test_list' for function "
                         "rows, or 'inputs' + 'outputs' (or 'input_output') for stdin/stdout rows")
    if given is not None:
        if not isinstance(given, (list, tuple)) or not given or not all(isinstance(t, str) and t.strip() for t in given):
            raise ValueError("'visible_tests' of a function row must be a non-empty list of test sources, "
                             "e.g. ['assert f(2) == 5']")
        shown_tests, hidden_tests = list(given), list(range(len(tests)))
    else:
        if len(tests) <= visible:
            raise ValueError(f"its {key!r} holds {len(tests)} test(s) and env.visible={visible} leaves none hidden "
                             "for the reward (lower env.visible, or give the row 'visible_tests')")
        shown_tests = [shown for shown, _ in tests[:visible]] if key == "test" else tests[:visible]
        hidden_tests = list(range(visible, len(tests)))
    out[key] = rebuild(hidden_tests) if key == "test" else [tests[i] for i in hidden_tests]
    out["visible_tests"] = shown_tests
    return out


def _has_assert(stmt: ast.stmt) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(stmt))


class _Rename(ast.NodeTransformer):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.copy_location(ast.Name(self.new, node.ctx), node) if node.id == self.old else node


def _split_source(test: str, entry: Any) -> tuple[list[tuple[str, int]], Any]:
    """The tests of a test source, each as ``(standalone module-level source, index)``, and a function
    that rebuilds the source with only the tests of the given indices (everything else kept, in order)."""
    try:
        tree = ast.parse(test)
    except SyntaxError as exc:
        raise ValueError(f"its 'test' does not parse: {exc}") from None
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    body = check.body if check is not None else tree.body
    slots = [k for k, stmt in enumerate(body) if _has_assert(stmt) and stmt is not check]
    if check is not None and not entry:
        raise ValueError("its 'test' defines check(candidate) but the row has no 'entry_point'")

    def rebuild(keep: list[int]) -> str:
        new = copy.deepcopy(tree)
        target = next(n for n in new.body if isinstance(n, ast.FunctionDef) and n.name == "check") \
            if check is not None else new
        kept = {slots[i] for i in keep}
        target.body = [s for k, s in enumerate(target.body) if k not in slots or k in kept] or [ast.Pass()]
        return ast.unparse(new) + "\n"

    def standalone(i: int) -> str:
        if check is None:
            return rebuild([i])
        arg = check.args.args[0].arg if check.args.args else "candidate"
        top = [s for s in tree.body if s is not check and not _is_check_call(s)]
        inner = [s for k, s in enumerate(check.body) if k not in slots or k == slots[i]]
        module = ast.Module(body=[copy.deepcopy(s) for s in top + inner], type_ignores=[])
        return ast.unparse(ast.fix_missing_locations(_Rename(arg, str(entry)).visit(module))) + "\n"

    return [(standalone(i), i) for i in range(len(slots))], rebuild


def _is_check_call(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and \
        isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "check"


# -- the environment --------------------------------------------------------------------------------------

def _error_line(stderr: str) -> str:
    lines = [x for x in stderr.strip().splitlines() if x.strip()]
    return lines[-1].strip() if lines else ""


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 12)] + " ...[cut]"


def _compared_value(test: str) -> tuple[str, str, str] | None:
    """``(prelude, expression, expected)`` of a test whose last statement is ``assert EXPR == EXPECTED``
    (the usual shape), else None."""
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return None
    last = tree.body[-1] if tree.body else None
    if not (isinstance(last, ast.Assert) and isinstance(last.test, ast.Compare) and len(last.test.ops) == 1
            and isinstance(last.test.ops[0], ast.Eq)):
        return None
    prelude = ast.unparse(ast.Module(body=tree.body[:-1], type_ignores=[]))
    return prelude, ast.unparse(last.test.left), ast.unparse(last.test.comparators[0])


class CodeRepair:
    def __init__(self, cfg: CodeRepairConfig, encode: Encode):
        from verifiers.code import CodeVerifier

        self.cfg, self.encode = cfg, encode
        self.sandbox = CodeVerifier(timeout=cfg.timeout_s, memory_mb=cfg.memory_mb)
        self.row: dict[str, Any] | None = None
        self.attempts = 0

    def reset(self, row: Mapping[str, Any]) -> Observation:
        try:  # rows of a run were prepared when the task loaded (a no-op again); a bare row is split here
            self.row = self.cfg.prepare_row(row)
        except ValueError as exc:
            raise DataError(f"environment 'code_repair': the row cannot be run: {exc}; row keys: {sorted(row)}") from None
        self.attempts = 0
        return prompt_observation(row, "code_repair")

    def step(self, model_turn_ids: list[int], model_turn_text: str) -> tuple[Observation | None, bool, dict[str, Any]]:
        if self.row is None:
            raise RuntimeError("code_repair: step before reset")
        self.attempts += 1
        passed, total, status, feedback = self._first_failure(model_turn_text)
        info = {"attempt": self.attempts, "visible_passed": passed, "visible_total": total, "status": status,
                "tool_call": 1, "tool_error": int(status in RAN_NOT)}
        if feedback is None:
            return None, True, info
        text = self.cfg.feedback_template.format(feedback=_cut(feedback, self.cfg.max_feedback_chars))
        text = text.replace("<answer>", "&lt;answer&gt;").replace("</answer>", "&lt;/answer&gt;")
        return Observation(self.encode(text), text), False, info

    # -- running the visible tests ------------------------------------------------------------------
    def _verdict(self, attempt: str, tests: Mapping[str, Any]) -> dict:
        task = {k: self.row[k] for k in RUN_KEYS if self.row.get(k) not in (None, "")}  # type: ignore[index]
        verdict = self.sandbox.verdict(attempt, {**task, **tests, "reward": "binary"})
        if verdict["status"] == "sandbox_error":  # the sandbox's or the row's fault, never the policy's
            raise RuntimeError(f"code_repair: the sandbox could not run the visible tests: {verdict.get('detail')}")
        return verdict

    def _first_failure(self, attempt: str) -> tuple[int, int, str, str | None]:
        """(visible tests passed before the first failure, visible tests, status, feedback or None)."""
        visible = self.row["visible_tests"]  # type: ignore[index]
        if isinstance(visible, Mapping):  # stdin/stdout cases: one binary run stops at the first failure
            inputs, outputs = list(visible["inputs"]), list(visible["outputs"])
            verdict = self._verdict(attempt, {"inputs": inputs, "outputs": outputs})
            if verdict["status"] == "passed":
                return len(inputs), len(inputs), "passed", None
            k = min(int(verdict["passed"]), len(inputs) - 1)
            return k, len(inputs), verdict["status"], self._io_feedback(attempt, inputs[k], outputs[k], verdict["status"])
        for k, test in enumerate(visible):  # function tests: one run each, in order, to name the failing one
            verdict = self._verdict(attempt, {"test": test})
            if verdict["status"] != "passed":
                return k, len(visible), verdict["status"], self._function_feedback(attempt, test, verdict["status"])
        return len(visible), len(visible), "passed", None

    def _run(self, program: str, stdin: str = "") -> dict:
        result = self.sandbox.run(program, stdin=stdin, timeout=float(self.row.get("timeout") or self.cfg.timeout_s),  # type: ignore[union-attr]
                                  max_output_bytes=4 * self.cfg.max_feedback_chars)
        if result["status"] == "sandbox_error":
            raise RuntimeError(f"code_repair: the sandbox could not run the attempt: {result['detail']}")
        return result

    def _problem(self, status: str, result: dict | None = None) -> str:
        if status == "timeout":
            return f"error: timed out after {float(self.row.get('timeout') or self.cfg.timeout_s):g} s"  # type: ignore[union-attr]
        if status == "memory":
            return f"error: out of memory ({self.cfg.memory_mb} MiB)"
        line = _error_line(result["stderr"]) if result else ""
        return f"error: {line or status}"

    def _function_feedback(self, attempt: str, test: str, status: str) -> str:
        from verifiers.code.program import build_program

        program = build_program(attempt, self.row)  # type: ignore[arg-type]
        shown = f"test: {test.strip()}"
        compared = _compared_value(test)
        if compared is None or status in ("syntax_error", "timeout", "memory"):
            result = None if status in ("timeout", "memory") else self._run(f"{program}\n{test}")
            return f"{shown}\n{self._problem(status, result)}"
        prelude, expr, expected = compared
        result = self._run(f"{program}\n{prelude}\nprint({GOT!r})\nprint(repr({expr}))")
        if result["status"] != "ok" or GOT not in result["stdout"]:
            return f"{shown}\n{self._problem(result['status'] if result['status'] != 'ok' else status, result)}"
        got = result["stdout"].rsplit(GOT, 1)[1].strip()
        return f"{shown}\nexpected: {expected}\ngot: {got}"

    def _io_feedback(self, attempt: str, stdin: str, expected: str, status: str) -> str:
        from verifiers.code.program import extract_code

        shown = f"input:\n{stdin.rstrip()}\nexpected output:\n{expected.rstrip()}"
        if status in ("timeout", "memory"):
            return f"{shown}\n{self._problem(status)}"
        result = self._run(extract_code(attempt), stdin)
        if result["status"] != "ok" and status != "failed":
            return f"{shown}\n{self._problem(result['status'], result)}"
        return f"{shown}\ngot:\n{result['stdout'].rstrip()}"


@register_env("code_repair", CodeRepairConfig)
def build(cfg: CodeRepairConfig, encode: Encode) -> CodeRepair:
    return CodeRepair(cfg, encode)


__all__ = ["CodeRepair", "CodeRepairConfig", "split_tests"]
