"""``math_verify``: the HuggingFace math-verify package behind our `Verifier` protocol, for
``rlvr verify --compare math_verify`` and the benchmark. Optional: needs ``pip install
math-verify``. Its checks run in our killable workers too (math-verify's own ``signal.alarm``
timeout works only in a main thread, and cannot interrupt a long C call).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from verifiers.base import Score
from verifiers.math.verifier import MAX_INPUT_CHARS, shared_pool
from verifiers.pool import DEFAULT_MEMORY_MB

_CHECK = "verifiers.math._mathverify_worker:check"
_PRELOAD = ("verifiers.math._mathverify_worker",)


class MathVerifyVerifier:
    """math-verify's ``verify(parse(reference), parse(completion))`` as a verifier."""

    name = "math_verify"

    def __init__(self, timeout: float = 5.0, workers: int = 2, answer_key: str = "answer", memory_mb: int | None = DEFAULT_MEMORY_MB):
        if importlib.util.find_spec("math_verify") is None:
            raise ImportError("the math_verify verifier needs the optional math-verify package: pip install math-verify")
        self.timeout = float(timeout)
        self.workers = int(workers)
        self.answer_key = answer_key
        self.memory_mb = memory_mb

    def score(self, completion: str, task: Mapping[str, Any]) -> Score:
        reference = str(task[self.answer_key])
        if len(completion) > MAX_INPUT_CHARS or len(reference) > MAX_INPUT_CHARS:
            return Score(0.0, None, {}, "input_too_large")
        pool = shared_pool(self.workers, self.memory_mb, _PRELOAD)
        return pool.score(_CHECK, completion, reference, timeout=self.timeout)

    def score_many(self, completions: Sequence[str], tasks: Sequence[Mapping[str, Any]], workers: int) -> list[Score]:
        shared_pool(max(self.workers, workers), self.memory_mb, _PRELOAD)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
            return list(ex.map(self.score, completions, tasks))
