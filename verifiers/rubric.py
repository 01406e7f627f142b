"""``Rubric``: weighted verifiers scored as one (rewards composed from small named checks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from verifiers.base import Requirement, Score, Verifier, missing_keys
from verifiers.batch import score_batch


class Rubric:
    """Weighted sum of verifiers.

    ``Rubric([(get("arith"), 1.0), (get("r1_format"), 0.1)])``. A weight of 0 logs the
    verifier's reward as a metric without rewarding it. ``correct`` comes from the first
    verifier that judges correctness. An exception raised by a verifier, or an error it
    reports (a timeout), is recorded as ``Score.error`` (reward 0 for the whole rubric, and
    ``metrics["<name>/error"] = 1``) so the run counts it.
    """

    name = "rubric"

    def __init__(self, parts: Sequence[tuple[Verifier, float]]):
        if not parts:
            raise ValueError("Rubric needs at least one (verifier, weight) pair")
        names = [v.name for v, _ in parts]
        if len(set(names)) != len(names):
            raise ValueError(f"Rubric verifiers must have distinct names, got {names}")
        self.parts = list(parts)

    @property
    def requires(self) -> tuple[Requirement, ...]:
        """Union of the parts' declared ``requires`` (see `missing_keys` for the exact check)."""
        out: list[Requirement] = []
        for verifier, _ in self.parts:
            out += [r for r in getattr(verifier, "requires", None) or () if r not in out]
        return tuple(out)

    def missing_keys(self, task: Mapping[str, Any]) -> list[str]:
        """What any part misses in ``task``, each name once, in part order."""
        out: list[str] = []
        for verifier, _ in self.parts:
            out += [k for k in missing_keys(verifier, task) if k not in out]
        return out

    def score(self, completion: str, task: Mapping[str, Any]) -> Score:
        scores = []
        for verifier, _ in self.parts:
            try:
                scores.append(verifier.score(completion, task))
            except Exception as exc:  # recorded, counted, never a silent 0
                scores.append(Score(0.0, None, {}, f"crash in {verifier.name}: {type(exc).__name__}: {exc}"))
        return self.combine(scores)

    def score_many(self, completions: Sequence[str], tasks: Sequence[Mapping[str, Any]], workers: int) -> list[Score]:
        """Batch form of `score`: each part scores the whole batch (in parallel where it can).
        `score_batch` never raises and gives every row its own error, so one bad row costs
        only that row."""
        per_part = [score_batch(verifier, completions, tasks, workers) for verifier, _ in self.parts]
        return [self.combine(list(row)) for row in zip(*per_part)]

    def combine(self, scores: Sequence[Score]) -> Score:
        reward, correct, metrics, errors = 0.0, None, {}, []
        for (verifier, weight), s in zip(self.parts, scores):
            if not isinstance(s, Score):
                s = Score(0.0, None, {}, f"crash in {verifier.name}: score() returned {type(s).__name__}, not Score")
            metrics[verifier.name] = float(s.reward)
            metrics.update({f"{verifier.name}/{k}": float(v) for k, v in s.metrics.items()})
            if s.error is not None:
                errors.append(s.error if s.error.startswith("crash in") else f"{verifier.name}: {s.error}")
                metrics[f"{verifier.name}/error"] = 1.0
            reward += weight * float(s.reward)
            if correct is None and s.correct is not None:
                correct = bool(s.correct)
        if errors:
            return Score(0.0, correct, metrics, "; ".join(errors))
        return Score(reward, correct, metrics, None)
