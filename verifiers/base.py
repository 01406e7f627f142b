"""Core verifier types: `Score`, the `Verifier` protocol and the weighted `Rubric`.

A verifier turns (completion text, task row) into a `Score`. Infrastructure failures
(timeouts, checker crashes) are *recorded* in `Score.error` and counted by the caller;
they must never look like an ordinary wrong answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Union, runtime_checkable

# One item of ``Verifier.requires``: a key, or alternative keys of which any one suffices.
Requirement = Union[str, tuple[str, ...]]  # noqa: UP007 (a runtime alias: `|` of these needs 3.10+ types)


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
    """Anything with a ``name`` and ``score(completion, task) -> Score``.

    Optionally, ``requires``: the task keys it reads, as a tuple whose items are a key or a
    tuple of alternative keys (``("numbers", "target")``, ``(("test", "test_list"),)``), or
    a ``missing_keys(task) -> list[str]`` method when a tuple cannot say it. A task loader
    calls `missing_keys` on every row, so a dataset without the reference fails at load
    time, naming the row and the key, instead of as crash scores in the middle of a run.
    """

    name: str

    def score(self, completion: str, task: Mapping[str, Any]) -> Score: ...


def _present(task: Mapping[str, Any], key: str) -> bool:
    """A key counts as given when it holds something: a null column or an empty string or
    list (how a missing field usually reaches us from a dataset) does not."""
    if key not in task:
        return False
    value = task[key]
    return value is not None and not (isinstance(value, (str, bytes, list, tuple, dict)) and len(value) == 0)


def missing_from(requires: Sequence[Requirement], task: Mapping[str, Any]) -> list[str]:
    """Names of the requirements ``task`` does not meet; alternatives read ``"a | b"``."""
    missing = []
    for item in requires:
        options = (item,) if isinstance(item, str) else tuple(item)
        if not any(_present(task, key) for key in options):
            missing.append(" | ".join(options))
    return missing


def missing_keys(verifier: Any, task: Mapping[str, Any]) -> list[str]:
    """Human-readable names of the task keys ``verifier`` needs and ``task`` lacks (empty
    when the row is complete): the verifier's own ``missing_keys(task)`` if it has one,
    else its ``requires``; a verifier that declares neither needs nothing."""
    if not isinstance(task, Mapping):
        return [f"a mapping of task fields (got {type(task).__name__})"]
    own = getattr(verifier, "missing_keys", None)
    if callable(own):
        return list(own(task))
    return missing_from(getattr(verifier, "requires", None) or (), task)


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
        from verifiers.batch import score_batch  # batch imports this module

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
