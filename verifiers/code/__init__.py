"""Code verifier: run model-written Python against tests in a local, isolated sandbox.

``verifiers.get("code").score(completion, task)`` with either

* a function task (HumanEval / MBPP): ``prompt``, ``test``, ``entry_point`` (or
  ``test_list``); the completion is the body that continues the prompt, or a whole program,
  possibly in a fenced block (the last one wins);
* a stdin/stdout task (APPS / CodeContests): ``inputs`` and ``outputs`` lists (or APPS'
  ``input_output``), compared ``exact``, ``whitespace`` (default) or ``float``.

Every Score carries ``metrics["status/<status>"] = 1.0`` with status one of ``STATUSES``,
plus ``tests_passed`` / ``tests_total``. A sandbox failure is ``Score.error``, never a
silent 0. Isolation model and fallbacks: ``docs/code_sandbox.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from verifiers.base import Score
from verifiers.batch import crash_score
from verifiers.code.client import DEMOTE_AFTER_S, ForkServer, SandboxUnavailable, shared_server
from verifiers.code.program import build_program, extract_code, function_test, io_cases, missing_task_keys

STATUSES = ("passed", "failed", "timeout", "memory", "runtime_error", "syntax_error", "sandbox_error")
COMPARE_MODES = ("exact", "whitespace", "float")
# The candidate's own statuses are the policy's doing: its infinite loop or memory blow-up is a
# policy_timeout (trained as the low reward it earned), a program that does not compile is unparsed.
# sandbox_error is not: a task that cannot run is a verifier_error, a dead runner, a fork that failed or
# a sandbox that cannot start is an infra_error (retried, then kept out of training).
OUTCOME_OF_STATUS = {"passed": "correct", "failed": "wrong", "runtime_error": "wrong", "syntax_error": "unparsed",
                     "timeout": "policy_timeout", "memory": "policy_timeout"}


def status_of(score: Score) -> str:
    """The sandbox status recorded in a Score from ``CodeVerifier``."""
    for key in score.metrics:
        if key.startswith("status/"):
            return key[len("status/"):]
    return "sandbox_error" if score.error else "unknown"


class CodeVerifier:
    """Scores Python completions by running them in the sandbox.

    timeout:    wall-clock seconds per sample (function tests) or per case (stdin/stdout);
                a task's own ``timeout`` field overrides it. CPU time is capped at
                ``ceil(timeout) + 1`` seconds per process.
    memory_mb:  address-space limit of the candidate process.
    reward:     ``binary`` (1 only if every test passes) or ``fraction`` (share of tests).
    compare:    default stdin/stdout comparison (a task's ``compare`` overrides).
    isolation:  ``auto`` (strongest available), ``root``, ``userns`` or ``none``.
    max_parallel: samples in flight at once (default: enough for a batch's infinite loops
                to time out together, bounded by memory; see ``client.ForkServer``).
    cpu_slots:  samples at full CPU priority (default: CPU count, at most max_parallel);
                a sample older than ``min(0.1 s, timeout / 4)`` gives its slot back and
                runs at nice 19 until its deadline, so loops do not slow honest samples.
                Given explicitly, either makes the verifier a fork server of its own
                instead of the shared one.
    nproc:      RLIMIT_NPROC of the candidate (processes *and threads* of its uid). Default:
                1 for function tests (no threads, no subprocesses: killing the candidate
                ends the sample), 32 for stdin/stdout programs (threads allowed, e.g. the
                usual ``threading.stack_size`` trick for deep recursion).
    guard:      the in-process audit-hook layer (default on). Turning it off is for tests
                that check what the OS layer alone holds.
    """

    name = "code"
    # coarse declaration; `missing_keys` is the exact rule (pairs and entry_point)
    requires: tuple = (("test", "test_list", "inputs", "input_output"),)

    def __init__(self, timeout: float = 5.0, memory_mb: int = 1024, reward: str = "binary",
                 compare: str = "whitespace", float_tol: float = 1e-6, isolation: str = "auto",
                 max_output_bytes: int = 1 << 20, file_mb: int = 16, nproc: int | None = None,
                 max_parallel: int | None = None, cpu_slots: int | None = None, guard: bool = True):
        if reward not in ("binary", "fraction"):
            raise ValueError(f"reward must be 'binary' or 'fraction', got {reward!r}")
        if compare not in COMPARE_MODES:
            raise ValueError(f"compare must be one of {COMPARE_MODES}, got {compare!r}")
        if timeout <= 0 or memory_mb < 64:
            raise ValueError("timeout must be > 0 and memory_mb >= 64")
        self.timeout, self.memory_mb, self.reward = float(timeout), int(memory_mb), reward
        self.compare, self.float_tol = compare, float(float_tol)
        self.max_output_bytes, self.file_mb = int(max_output_bytes), int(file_mb)
        self.nproc = None if nproc is None else int(nproc)
        self.isolation, self.guard = isolation, bool(guard)
        if max_parallel is None and cpu_slots is None:
            self._server = shared_server(isolation)
        else:
            self._server = ForkServer(isolation, max_parallel, cpu_slots)

    # -- public API ------------------------------------------------------------------------
    def score(self, completion: str, task: Mapping[str, Any]) -> Score:
        return _score(self.verdict(completion, task), task.get("reward") or self.reward)

    def verdict(self, completion: str, task: Mapping[str, Any]) -> dict:
        """The sandbox's raw verdict: ``status``, ``passed``, ``total`` and ``detail`` (the
        first failure, for debugging; it can quote expected values, so keep it away from
        the policy's prompts)."""
        try:
            job, budget = self._job(completion, task)
        except (ValueError, TypeError, SyntaxError) as exc:
            return {"status": "sandbox_error", "passed": 0, "total": 0,
                    "detail": f"bad task: {type(exc).__name__}: {exc}", "cause": "task"}
        try:
            return self._server.run(job, budget)
        except SandboxUnavailable as exc:
            return {"status": "sandbox_error", "passed": 0, "total": 0, "detail": str(exc)}

    def run(self, program: str, stdin: str = "", timeout: float | None = None, memory_mb: int | None = None,
            max_output_bytes: int | None = None) -> dict:
        """Run ``program`` as a script on ``stdin`` in the sandbox (a tool call, not a test): ``status``
        (``ok``, ``runtime_error``, ``syntax_error``, ``timeout``, ``memory``, or ``sandbox_error`` when the
        sandbox itself failed), ``stdout`` (at most ``max_output_bytes``; ``truncated`` says it was cut),
        ``stderr`` (its tail) and ``detail``. The sandbox's guarantees are those of a test run: nothing
        outlives the call, no network, nothing outside its temporary directory."""
        if not isinstance(program, str):
            raise TypeError(f"program must be a str, got {type(program).__name__}")
        timeout = float(timeout or self.timeout)
        limits = {"cpu_s": math.ceil(timeout) + 1, "memory_mb": int(memory_mb or self.memory_mb),
                  "file_mb": self.file_mb, "nofile": 64, "nproc": self.nproc or 32,
                  "max_output_bytes": int(max_output_bytes or self.max_output_bytes)}
        job = {"timeout": timeout, "limits": limits, "reward": "binary", "guard": self.guard, "demote_after": 0.0,
               "mode": "io", "program": program, "inputs": [stdin], "outputs": [""], "compare": "exact",
               "float_tol": 0.0, "capture": True}
        try:
            verdict = self._server.run(job, timeout + 22.0)  # + fork and sandbox entry under load
        except SandboxUnavailable as exc:
            return {"status": "sandbox_error", "stdout": "", "stderr": "", "truncated": False, "detail": str(exc)}
        cases = verdict.get("cases") or []
        if verdict.get("status") == "sandbox_error" or not cases:
            return {"status": "sandbox_error", "stdout": "", "stderr": "", "truncated": False,
                    "detail": str(verdict.get("detail") or "no result from the sandbox")}
        case = cases[0]
        status = "ok" if case["status"] in ("passed", "failed") else case["status"]
        return {"status": status, "stdout": case["stdout"], "stderr": case["stderr"], "truncated": case["overflow"],
                "detail": str(verdict.get("detail") or "")}

    def score_many(self, completions: Sequence[str], tasks: Sequence[Mapping[str, Any]],
                   workers: int | None = None) -> list[Score]:
        """Score many samples concurrently (order preserved); each sample runs in fresh
        processes. The fork server's gates decide how many run at once (``workers`` may
        only raise the number of feeding threads), so the default call lets a batch's
        infinite loops time out together. A row that cannot be scored gets its own error."""
        if len(completions) != len(tasks):
            raise ValueError(f"{len(completions)} completions but {len(tasks)} tasks")
        threads = min(len(completions), max(int(workers or 1), self._server.max_parallel))
        if threads <= 1:
            return [self._score_row(c, t) for c, t in zip(completions, tasks)]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(self._score_row, completions, tasks))

    def _score_row(self, completion: str, task: Mapping[str, Any]) -> Score:
        try:
            return self.score(completion, task)
        except Exception as exc:  # this row's error, not the batch's
            return crash_score(self, exc)

    def missing_keys(self, task: Mapping[str, Any]) -> list[str]:
        """Task keys this row lacks (for `verifiers.missing_keys`, checked at load time)."""
        return missing_task_keys(task)

    def capabilities(self) -> dict:
        self._server.start()
        return dict(self._server.capabilities, attempts=dict(self._server.attempts))

    # -- internals -------------------------------------------------------------------------
    def _job(self, completion: str, task: Mapping[str, Any]) -> tuple[dict, float]:
        if not isinstance(completion, str):
            raise TypeError(f"completion must be a str, got {type(completion).__name__}")
        timeout = float(task.get("timeout") or self.timeout)
        reward = task.get("reward") or self.reward
        if reward not in ("binary", "fraction"):
            raise ValueError(f"reward must be 'binary' or 'fraction', got {reward!r}")
        limits = {"cpu_s": math.ceil(timeout) + 1, "memory_mb": int(task.get("memory_mb") or self.memory_mb),
                  "file_mb": self.file_mb, "nofile": 64, "nproc": self.nproc,
                  "max_output_bytes": self.max_output_bytes}
        job = {"timeout": timeout, "limits": limits, "reward": reward, "guard": self.guard,
               # no demotion when the server admits no more samples than CPU slots anyway
               "demote_after": min(DEMOTE_AFTER_S, timeout / 4) if self._server.max_parallel > self._server.cpu_slots
               else 0.0}
        cases = io_cases(task)
        if limits["nproc"] is None:
            limits["nproc"] = 32 if cases is not None else 1
        if cases is not None:
            compare = task.get("compare") or self.compare
            if compare not in COMPARE_MODES:
                raise ValueError(f"compare must be one of {COMPARE_MODES}, got {compare!r}")
            job.update(mode="io", program=extract_code(completion), inputs=cases[0], outputs=cases[1],
                       compare=compare, float_tol=float(task.get("float_tol") or self.float_tol))
            return job, (timeout + 2.0) * len(cases[0]) + 10.0
        test = function_test(task)
        if test is None:
            raise ValueError("task has neither tests (test / test_list) nor inputs/outputs")
        job.update(mode="function", program=build_program(completion, task), prompt=str(task.get("prompt") or ""),
                   test=test[0], names=test[1], entry_point=task.get("entry_point"))
        return job, timeout + 10.0


def _score(verdict: dict, reward_mode: str) -> Score:
    status = verdict.get("status")
    if status not in STATUSES:
        status, verdict = "sandbox_error", {"detail": f"malformed verdict {verdict!r}"[:300]}
    passed, total = int(verdict.get("passed", 0)), int(verdict.get("total", 0))
    metrics = {f"status/{status}": 1.0, "tests_passed": float(passed), "tests_total": float(total)}
    if isinstance(verdict.get("cpu_s"), (int, float)):  # the candidate process's CPU time
        metrics["cpu_s"] = float(verdict["cpu_s"])
    if status == "sandbox_error":  # a task that cannot run is the check's fault; anything else, the machinery's
        outcome = "verifier_error" if verdict.get("cause") == "task" else "infra_error"
        return Score(0.0, None, metrics, f"sandbox_error: {verdict.get('detail', '')}", outcome)
    ok = status == "passed"
    if reward_mode == "fraction":
        reward = passed / total if total else float(ok)
    else:
        reward = float(ok)
    return Score(reward, ok, metrics, None, OUTCOME_OF_STATUS[status])


def sandbox_capabilities(isolation: str = "auto") -> dict:
    """What the sandbox achieves on this machine: ``mode`` (root / userns / none) and which
    layers are active (netns, mountns, chroot, uid_isolation, rlimits, audit_guard), plus
    ``attempts``: why stronger modes were not used."""
    server = shared_server(isolation)
    try:
        server.start()
    except SandboxUnavailable as exc:
        return {"mode": None, "error": str(exc), "attempts": dict(server.attempts)}
    return dict(server.capabilities, attempts=dict(server.attempts))


__all__ = ["CodeVerifier", "sandbox_capabilities", "status_of", "STATUSES", "build_program", "extract_code"]

