"""``Rubric``: weighted verifiers scored as one (rewards composed from small named checks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from verifiers.base import Requirement, Score, Verifier, missing_keys
from verifiers.batch import crash_score, score_batch


class Rubric:
    """Weighted sum of verifiers.

    ``Rubric([(get("arith"), 1.0), (get("r1_format"), 0.1)])``. A weight of 0 logs the
    verifier's reward as a metric without rewarding it. ``correct`` comes from the first
    verifier that judges correctness. An exception raised by a verifier, or an error it
    reports (a timeout), is recorded as ``Score.error`` (reward 0 for the whole rubric, and
    ``metrics["<name>/error"] = 1``) so the run counts it.

    The outcome is a part's failure that was not the policy's doing (``infra_error`` before
    ``verifier_error``), else the outcome of the first verifier that judged the answer (gave
    ``correct``, or said ``unparsed``, ``policy_timeout``, ...), else ``correct`` / ``wrong`` by
    the summed reward. ``retries``: how often `score_many` (and rlvr's scoring) scores a part's
    failed rows again (see `score_batch`); ``metrics["retries"]`` is the most any part needed.
    """

    name = "rubric"

    def __init__(self, parts: Sequence[tuple[Verifier, float]], retries: int = 0):
        if not parts:
            raise ValueError("Rubric needs at least one (verifier, weight) pair")
        names = [v.name for v, _ in parts]
        if len(set(names)) != len(names):
            raise ValueError(f"Rubric verifiers must have distinct names, got {names}")
        if retries < 0:
            raise ValueError(f"Rubric retries must be >= 0, got {retries}")
        self.parts, self.retries = list(parts), int(retries)

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
                scores.append(crash_score(verifier, exc))
        return self.combine(scores)

    def score_many(self, completions: Sequence[str], tasks: Sequence[Mapping[str, Any]], workers: int) -> list[Score]:
        """Batch form of `score`: each part scores the whole batch (in parallel where it can).
        `score_batch` never raises and gives every row its own error, so one bad row costs
        only that row."""
        per_part = [score_batch(verifier, completions, tasks, workers, self.retries) for verifier, _ in self.parts]
        return [self.combine(list(row)) for row in zip(*per_part)]

    def combine(self, scores: Sequence[Score]) -> Score:
        reward, correct, outcome, metrics, errors, failures, retries = 0.0, None, None, {}, [], [], 0.0
        for (verifier, weight), s in zip(self.parts, scores):
            if not isinstance(s, Score):
                s = Score(0.0, None, {}, f"crash in {verifier.name}: score() returned {type(s).__name__}, not Score",
                          "verifier_error")
            metrics[verifier.name] = float(s.reward)
            metrics.update({f"{verifier.name}/{k}": float(v) for k, v in s.metrics.items()})
            error = s.error if s.error is not None or s.trainable else s.outcome  # a failure without a message
            if error is not None:
                errors.append(error if error.startswith("crash in") else f"{verifier.name}: {error}")
                metrics[f"{verifier.name}/error"] = 1.0
            if not s.trainable:
                failures.append(s.outcome)
            retries = max(retries, float(s.metrics.get("retries", 0.0)))
            reward += weight * float(s.reward)
            if correct is None and s.correct is not None:
                correct = bool(s.correct)
            if outcome is None and s.trainable and (s.correct is not None or s.outcome not in ("correct", "wrong")):
                outcome = s.outcome  # the first part that judged the answer (or could not read it)
        if retries:
            metrics["retries"] = retries
        if failures:
            outcome = "infra_error" if "infra_error" in failures else "verifier_error"
        if errors:
            return Score(0.0, correct, metrics, "; ".join(errors), outcome or "wrong")
        return Score(reward, correct, metrics, None, outcome)
