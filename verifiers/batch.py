"""Batch scoring used by the training loop (with retries of the rows whose check failed), and the
error and outcome counts a run logs."""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from verifiers.base import OUTCOMES, InfraError, Score, Verifier


@runtime_checkable
class BatchVerifier(Protocol):
    """Optional: a verifier that scores many rows itself (e.g. on its own worker processes)."""

    name: str

    def score_many(self, completions: Sequence[str], tasks: Sequence[Mapping[str, Any]], workers: int) -> list[Score]: ...


def _name(verifier: Any) -> str:
    return getattr(verifier, "name", type(verifier).__name__)


def crash_score(verifier: Verifier, exc: BaseException) -> Score:
    """A verifier that raised: the check failed (``verifier_error``; ``infra_error`` for an `InfraError`),
    whatever the answer was."""
    outcome = "infra_error" if isinstance(exc, InfraError) else "verifier_error"
    return Score(0.0, None, {}, f"crash in {_name(verifier)}: {type(exc).__name__}: {exc}", outcome)


def _checked(verifier: Verifier, s: Any) -> Score:
    if isinstance(s, Score):
        return s
    return Score(0.0, None, {}, f"crash in {_name(verifier)}: returned {type(s).__name__}, not Score", "verifier_error")


def _safe_score(verifier: Verifier, completion: str, task: Mapping[str, Any]) -> Score:
    try:
        s = verifier.score(completion, task)
    except Exception as exc:  # recorded as an error, counted by the caller
        return crash_score(verifier, exc)
    return _checked(verifier, s)


def score_rows(verifier: Verifier, completions: Sequence[str], tasks: Sequence[Mapping[str, Any]],
               workers: int = 1) -> list[Score]:
    """``verifier.score`` on each row, on ``workers`` threads (order kept); a row that raises, or returns
    something else than a ``Score``, gets its own error score. What a ``score_many`` whose own work runs
    elsewhere (worker processes) calls to feed them."""
    if workers <= 1 or len(completions) <= 1:
        return [_safe_score(verifier, c, t) for c, t in zip(completions, tasks)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda ct: _safe_score(verifier, *ct), zip(completions, tasks)))


def score_batch(
    verifier: Verifier,
    completions: Sequence[str],
    tasks: Sequence[Mapping[str, Any]],
    workers: int = 1,
    retries: int = 0,
) -> list[Score]:
    """Score ``completions[i]`` against ``tasks[i]``; order is preserved; never raises for a
    verifier's failure (it becomes ``Score.error``, see `summarize`).

    ``retries``: rows whose outcome was not the policy's doing (``verifier_error``,
    ``infra_error``: a crashed check, a dead sandbox worker) are scored again, together, up to
    this many more times; a row that needed any gets ``metrics["retries"]`` (the extra tries),
    whatever its last outcome. The rows that score cleanly the first time are not touched.

    A verifier with ``score_many`` (``math``, ``code``, a `Rubric`) gets the whole batch
    and runs it on its own workers; for any other verifier ``workers`` threads call
    ``score``. Errors are per row: if ``score_many`` raises or returns the wrong number of
    scores, the batch is scored again row by row, so one bad row gets its own error and
    the others their normal scores (a batch call cannot say which row broke it).
    """
    if len(completions) != len(tasks):
        raise ValueError(f"score_batch: {len(completions)} completions but {len(tasks)} tasks")
    scores = _score_all(verifier, completions, tasks, workers)
    for attempt in range(1, retries + 1):
        redo = [i for i, s in enumerate(scores) if not s.trainable]
        if not redo:
            break
        again = _score_all(verifier, [completions[i] for i in redo], [tasks[i] for i in redo], workers)
        for i, s in zip(redo, again):
            scores[i] = dataclasses.replace(s, metrics={**s.metrics, "retries": float(attempt)})
    return scores


def _score_all(verifier: Verifier, completions: Sequence[str], tasks: Sequence[Mapping[str, Any]],
               workers: int) -> list[Score]:
    if not completions:
        return []
    if isinstance(verifier, BatchVerifier):
        try:
            scores = list(verifier.score_many(completions, tasks, max(1, workers)))
        except Exception as exc:
            warnings.warn(f"{_name(verifier)}.score_many raised {type(exc).__name__}: {exc}; scoring row by row",
                          RuntimeWarning, stacklevel=3)
        else:
            if len(scores) == len(completions):
                return [_checked(verifier, s) for s in scores]
            warnings.warn(f"{_name(verifier)}.score_many returned {len(scores)} scores for {len(completions)} rows; "
                          "scoring row by row", RuntimeWarning, stacklevel=3)
    return score_rows(verifier, completions, tasks, workers)


_KINDS = ("timeout", "worker_died", "memory", "input_too_large", "answer_too_large", "too_large", "too_deep", "compare_failed")


def error_kind(error: str) -> str:
    """``"crash"``, ``"timeout"``, ``"too_large"``, ... or ``"other"``, for counting."""
    if error.startswith("crash") or ": crash" in error:
        return "crash"
    for kind in _KINDS:
        if kind in error:
            return kind
    return "other"


def summarize(scores: Sequence[Score], prefix: str = "") -> dict[str, float]:
    """Counts to log for a batch: reward mean, accuracy over judged rows, the errors and the outcomes.

    ``errors`` counts every row whose check failed (timeouts, crashes, refused inputs), so a
    crashing verifier shows up as a number, never as a run of silent zero rewards;
    ``outcome/<outcome>`` counts the rows of each outcome (every one of ``OUTCOMES``, 0 included).
    """
    n = len(scores)
    judged = [s for s in scores if s.correct is not None and s.error is None]
    kinds = Counter(error_kind(s.error) for s in scores if s.error is not None)
    out = {
        "n": float(n),
        "reward_mean": sum(s.reward for s in scores) / n if n else 0.0,
        "accuracy": sum(bool(s.correct) for s in judged) / n if n else 0.0,
        "errors": float(sum(kinds.values())),
        "error_rate": sum(kinds.values()) / n if n else 0.0,
        "timeouts": float(kinds.get("timeout", 0)),
    }
    out.update({f"errors/{k}": float(v) for k, v in kinds.items()})
    out.update(outcome_counts(scores))
    return {prefix + k: v for k, v in out.items()}


def outcome_counts(scores: Sequence[Score]) -> dict[str, float]:
    """``outcome/<outcome>``: how many of ``scores`` ended with each of ``OUTCOMES`` (0 included)."""
    counts = Counter(s.outcome for s in scores)
    return {f"outcome/{o}": float(counts.get(o, 0)) for o in OUTCOMES}
