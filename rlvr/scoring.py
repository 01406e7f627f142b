"""Generation with scoring overlapped: each group is scored the moment the engine finishes it.

The engine calls back with every finished group (``on_group``); the group goes to a pool of
``rewards.workers`` scoring threads, which feed the verifiers' own worker processes (math) or
sandbox (code), while the remaining groups still generate. Only the scoring left when
generation ends is on the step's critical path (``score_wait_s``); the rest is hidden
(``score_hidden_share``).

Each part of the rubric scores a failed check again (``rewards.retries``: outcomes verifier_error
and infra_error, see verifiers.score_batch). A completion the engine cut at ``max_tokens`` (finish
reason ``length``) that did not earn its answer is labelled ``truncated`` here: the verifier sees
only text and cannot know it was cut; the reward is unchanged.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from rollouts import Engine, Group, SamplingConfig
from verifiers import Rubric, Score, score_batch
from verifiers.batch import BatchVerifier


class Scorer:
    """A pool of scoring threads for one rubric; ``generate_and_score`` uses it per draw."""

    def __init__(self, rubric: Rubric, workers: int):
        self.rubric, self.workers = rubric, workers
        # Overlap pays only for verifiers that work outside this process (math's workers, the code
        # sandbox); in-process checks (arith, format) take microseconds, and scoring them on threads
        # beside the engine's Python loop costs more in GIL hand-offs than it hides.
        self.overlaps = any(isinstance(v, BatchVerifier) for v, _ in rubric.parts)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="score")
        self._lock = threading.Lock()
        self._spans: list[tuple[float, float]] = []

    def _score(self, group: Group, row: Mapping[str, Any]) -> list[Score]:
        t0 = time.perf_counter()
        try:
            texts, rows = [c.text for c in group.completions], [row] * len(group.completions)
            # Verifiers with their own worker processes (math, code) get the group in parallel; cheap
            # in-process ones (arith, format) run inline: groups already run on `workers` threads.
            per_part = [score_batch(v, texts, rows, self.workers if isinstance(v, BatchVerifier) else 1,
                                    self.rubric.retries) for v, _ in self.rubric.parts]
            return [label_truncated(self.rubric.combine(list(scores)), c.finish_reason)
                    for scores, c in zip(zip(*per_part), group.completions)]
        finally:
            with self._lock:
                self._spans.append((t0, time.perf_counter()))

    def submit(self, group: Group, row: Mapping[str, Any]) -> Future:
        if not self.overlaps:  # inline, in the caller's thread
            fut: Future = Future()
            fut.set_result(self._score(group, row))
            return fut
        return self._pool.submit(self._score, group, row)

    def busy_s(self, since: float) -> float:
        """Seconds in which at least one scoring job ran, since ``since`` (overlaps counted once)."""
        with self._lock:
            spans = sorted((max(a, since), b) for a, b in self._spans if b > since)
            self._spans = [s for s in self._spans if s[1] > since]
        total, end = 0.0, since
        for a, b in spans:
            if b > end:
                total += b - max(a, end)
                end = b
        return total

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def label_truncated(score: Score, finish_reason: str | None) -> Score:
    """``score`` with outcome ``truncated`` when the completion was cut at the token limit and its answer was
    not right (``wrong`` or ``unparsed``); any other outcome says more and is kept."""
    if finish_reason == "length" and score.outcome in ("wrong", "unparsed"):
        return dataclasses.replace(score, outcome="truncated")
    return score


def generate_and_score(engine: Engine, rows: Sequence[Mapping[str, Any]], sampling: SamplingConfig,
                       scorer: Scorer) -> tuple[list[Group], list[list[Score]], dict[str, float]]:
    """Groups for ``rows`` (prompted by their ``prompt_ids``), the rubric's scores per group, and timings:
    ``generate_s``; ``score_s`` (time with scoring running); ``score_wait_s`` (scoring left after
    generation ended, on the critical path); ``score_hidden_s``."""
    futures: dict[int, Future] = {}
    t0 = time.perf_counter()
    on_group = (lambda i, g: futures.__setitem__(i, scorer.submit(g, rows[i]))) if scorer.overlaps else None
    groups = engine.generate([r["prompt_ids"] for r in rows], sampling, on_group=on_group)
    t1 = time.perf_counter()
    for i, g in enumerate(groups):  # an engine without callbacks: score everything now
        if i not in futures:
            futures[i] = scorer.submit(g, rows[i])
    scores = [futures[i].result() for i in range(len(groups))]
    t2 = time.perf_counter()
    busy = scorer.busy_s(t0)
    timings = {"generate_s": t1 - t0, "score_s": busy, "score_wait_s": t2 - t1,
               "score_hidden_s": max(0.0, busy - (t2 - t1))}
    return groups, scores, timings
