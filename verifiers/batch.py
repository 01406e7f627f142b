"""Batch scoring used by the training loop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from verifiers.base import Score, Verifier


def _safe_score(verifier: Verifier, completion: str, task: Mapping[str, Any]) -> Score:
    try:
        return verifier.score(completion, task)
    except Exception as exc:  # recorded as an error, counted by the caller
        return Score(0.0, None, {}, f"crash in {verifier.name}: {type(exc).__name__}: {exc}")


def score_batch(
    verifier: Verifier,
    completions: Sequence[str],
    tasks: Sequence[Mapping[str, Any]],
    workers: int = 1,
) -> list[Score]:
    """Score ``completions[i]`` against ``tasks[i]``; order is preserved.

    Verifiers that need hard time bounds run their own killable workers; here ``workers``
    only parallelises calls (threads), which helps verifiers that wait on subprocesses.
    """
    if len(completions) != len(tasks):
        raise ValueError(f"score_batch: {len(completions)} completions but {len(tasks)} tasks")
    if workers <= 1 or len(completions) <= 1:
        return [_safe_score(verifier, c, t) for c, t in zip(completions, tasks)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda ct: _safe_score(verifier, *ct), zip(completions, tasks)))
