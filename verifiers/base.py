"""Core verifier types: `Score`, the `Verifier` protocol and the weighted `Rubric`.

A verifier turns (completion text, task row) into a `Score`. Infrastructure failures
(timeouts, checker crashes) are *recorded* in `Score.error` and counted by the caller;
they must never look like an ordinary wrong answer. Every score says whose doing it was in
`Score.outcome` (see `OUTCOMES`): a trainer keeps the ones that were not the policy's out of
the gradient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Union, runtime_checkable

# One item of ``Verifier.requires``: a key, or alternative keys of which any one suffices.
Requirement = Union[str, tuple[str, ...]]  # noqa: UP007 (a runtime alias: `|` of these needs 3.10+ types)

# What became of one sample. The policy's doing (trained on as scored): the answer was right, wrong,
# not readable (no answer found, or one refused unread), the candidate program ran out of time or
# memory, the completion was cut at the token limit. Not the policy's doing (retried, then kept out of
# the baseline and the loss): the check itself failed (a verifier bug, a bad reference, a checker that
# timed out), or the machinery under it did (a sandbox worker that died, a pool that broke, a remote
# judge that answered 500).
POLICY_OUTCOMES = ("correct", "wrong", "unparsed", "policy_timeout", "truncated")
FAILURE_OUTCOMES = ("verifier_error", "infra_error")
OUTCOMES = POLICY_OUTCOMES + FAILURE_OUTCOMES


class InfraError(RuntimeError):
    """Raise from ``score`` when the machinery under the check failed, not the check or the answer (a
    worker pool that cannot start, a remote judge that answered 500): `score_batch` and `Rubric` score
    the row ``infra_error`` (any other exception is ``verifier_error``)."""


@dataclass(frozen=True)
class Score:
    """Result of checking one completion.

    reward:  scalar reward used for training.
    correct: whether the answer is right (None when the verifier does not judge correctness,
             e.g. a pure format check).
    metrics: extra named numbers to log (e.g. ``{"format": 1.0}``).
    error:   set when the check itself failed (``"timeout"``, ``"crash: ..."``); reward is 0.
    outcome: one of ``OUTCOMES``. Left out, it follows from the others: ``verifier_error`` when
             ``error`` is set, else ``correct`` / ``wrong`` from ``correct`` (from ``reward > 0``
             when ``correct`` is None), so a verifier written before outcomes existed keeps working.
             Give it to say more: ``unparsed``, ``policy_timeout``, ``infra_error``, ...
    """

    reward: float
    correct: bool | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    outcome: str | None = None

    def __post_init__(self) -> None:
        if self.outcome is None:
            if self.error is not None:
                derived = "verifier_error"
            else:
                right = self.reward > 0 if self.correct is None else self.correct
                derived = "correct" if right else "wrong"
            object.__setattr__(self, "outcome", derived)
        elif self.outcome not in OUTCOMES:
            raise ValueError(f"Score.outcome must be one of {OUTCOMES}, got {self.outcome!r}")

    @property
    def trainable(self) -> bool:
        """Whether the outcome was the policy's doing, so the score may enter its group's baseline and the loss."""
        return self.outcome in POLICY_OUTCOMES


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
