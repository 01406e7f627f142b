"""Core verifier types: `Score`, the `Verifier` protocol and the weighted `Rubric`.

A verifier turns (completion text, task row) into a `Score`. Infrastructure failures
(timeouts, checker crashes) are *recorded* in `Score.error` and counted by the caller;
they must never look like an ordinary wrong answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Score:
    """Result of checking one completion.

    reward:  scalar reward used for training.
    correct: whether the answer is right (None when the verifier does not judge correctness,
             e.g. a pure format check).
    metrics: extra named numbers to log (e.g. ``{"format": 1.0}``).
    error:   set when the check itself failed (``"timeout"``, ``"crash: ..."``); reward is 0.
    """

    reward: float
    correct: bool | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@runtime_checkable
class Verifier(Protocol):
    """Anything with a ``name`` and ``score(completion, task) -> Score``."""

    name: str

    def score(self, completion: str, task: Mapping[str, Any]) -> Score: ...


class Rubric:
    """Weighted sum of verifiers.

    ``Rubric([(get("arith"), 1.0), (get("r1_format"), 0.1)])``. A weight of 0 logs the
    verifier's reward as a metric without rewarding it. ``correct`` comes from the first
    verifier that judges correctness. An exception raised by a verifier is recorded as
    ``Score.error`` (and reward 0 for the whole rubric) so the run counts it.
    """

    name = "rubric"

    def __init__(self, parts: Sequence[tuple[Verifier, float]]):
        if not parts:
            raise ValueError("Rubric needs at least one (verifier, weight) pair")
        names = [v.name for v, _ in parts]
        if len(set(names)) != len(names):
            raise ValueError(f"Rubric verifiers must have distinct names, got {names}")
        self.parts = list(parts)

    def score(self, completion: str, task: Mapping[str, Any]) -> Score:
        reward, correct, metrics, errors = 0.0, None, {}, []
        for verifier, weight in self.parts:
            try:
                s = verifier.score(completion, task)
            except Exception as exc:  # recorded, counted, never a silent 0
                s = Score(0.0, None, {}, f"crash in {verifier.name}: {type(exc).__name__}: {exc}")
            metrics[verifier.name] = float(s.reward)
            metrics.update({f"{verifier.name}/{k}": float(v) for k, v in s.metrics.items()})
            if s.error is not None:
                errors.append(s.error)
            reward += weight * float(s.reward)
            if correct is None and s.correct is not None:
                correct = bool(s.correct)
        if errors:
            return Score(0.0, correct, metrics, "; ".join(errors))
        return Score(reward, correct, metrics, None)
