"""`MathVerifier`: the ``math`` verifier. Parses nothing itself: each check runs in a
killable worker process (`verifiers.pool`), so the caller never imports sympy and never
waits longer than ``timeout`` (+ a few milliseconds) for a verdict.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from verifiers.base import Score
from verifiers.batch import score_rows
from verifiers.math.choice import asks_for_order
from verifiers.math.extract import DEFAULT_PRIORITY, check_priority
from verifiers.pool import DEFAULT_MEMORY_MB, WorkerPool

MAX_INPUT_CHARS = 200_000  # completions or references longer than this are refused unread
_CHECK = "verifiers.math.check:check"

_pools: dict[tuple, WorkerPool] = {}
_pools_lock = threading.Lock()


def shared_pool(
    workers: int, memory_mb: int | None = DEFAULT_MEMORY_MB, preload: tuple[str, ...] = ("verifiers.math.check",)
) -> WorkerPool:
    """One pool per process (per preload and memory limit), grown to the largest size asked
    for, so that calling ``verifiers.get("math")`` many times does not start many pools."""
    key = (preload, memory_mb)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = WorkerPool(size=workers, preload=preload, memory_mb=memory_mb)
            _pools[key] = pool
            return pool
    pool.grow(workers)
    return pool


class MathVerifier:
    """Reward 1 when the completion's final answer is equivalent to ``task["answer"]``.

    completion: a full completion (``<answer>``, ``\\boxed{}``, "the answer is", ``####``)
        or a bare answer such as ``\\frac{1}{2}``.
    timeout: seconds per check; a check that runs longer returns ``Score(error="timeout")``.
    workers: worker processes started on first use (``score_batch`` may grow the pool).
    priority: order in which answer sources are tried (see `verifiers.math.extract`).
    question_key: the task key holding the question (optional in a task): when it asks for its answers
        in an order ("in increasing order", "respectively"), a bare list answer is compared in order.
    min_sig_digits: a decimal prediction of an exact reference (``0.0833`` for ``1/12``) is
        accepted when it is the reference rounded to its own last digit and carries at least
        this many significant digits (docs/verifiers.md, "decimals against exact values").

    ``metrics["extracted"]`` is 0 when no answer was found (an ordinary wrong answer);
    ``error`` is set for timeouts, refused inputs (``input_too_large``, ``answer_too_large``,
    ``too_deep``, ``too_large``) and checker failures, which the caller counts.
    """

    name = "math"
    requires: tuple[str, ...] = ("answer",)  # task keys `score` reads (see `verifiers.missing_keys`)

    def __init__(
        self,
        timeout: float = 5.0,
        workers: int = 2,
        priority: Sequence[str] = DEFAULT_PRIORITY,
        answer_key: str = "answer",
        memory_mb: int | None = DEFAULT_MEMORY_MB,
        min_sig_digits: int = 3,
        question_key: str = "question",
    ):
        if min_sig_digits < 1:
            raise ValueError(f"min_sig_digits must be >= 1, got {min_sig_digits}")
        self.min_sig_digits = int(min_sig_digits)
        self.timeout = float(timeout)
        self.workers = int(workers)
        self.priority = check_priority(tuple(priority))
        self.answer_key = answer_key
        self.question_key = question_key
        if answer_key != "answer":
            self.requires = (answer_key,)
        self.memory_mb = memory_mb

    def _pool(self, workers: int | None = None) -> WorkerPool:
        return shared_pool(max(self.workers, workers or 0), self.memory_mb)

    def score(self, completion: str, task: Mapping[str, Any]) -> Score:
        if self.answer_key not in task:
            raise KeyError(f"task has no {self.answer_key!r} field (keys: {sorted(task)})")
        reference = str(task[self.answer_key])
        if not isinstance(completion, str):
            raise TypeError(f"completion must be str, got {type(completion).__name__}")
        if len(completion) > MAX_INPUT_CHARS:
            return Score(0.0, None, {"extracted": 0.0}, "input_too_large", "unparsed")
        if len(reference) > MAX_INPUT_CHARS:
            return Score(0.0, None, {"extracted": 0.0}, "reference input_too_large")
        ordered = asks_for_order(task.get(self.question_key))  # "in increasing order": a list in that order
        return self._pool().score(_CHECK, completion, reference, self.priority, self.min_sig_digits, ordered,
                                  timeout=self.timeout)

    def score_many(self, completions: Sequence[str], tasks: Sequence[Mapping[str, Any]], workers: int) -> list[Score]:
        """Score in parallel on ``workers`` processes (used by `verifiers.score_batch`).

        Errors are per row: a row that raises (a task without an answer, a completion that is
        not a string) gets its own ``Score(error="crash in math: ...")``; the others are scored.
        """
        workers = max(1, workers)
        self._pool(workers)
        return score_rows(self, completions, tasks, workers)
