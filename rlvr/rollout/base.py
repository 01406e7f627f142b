"""The ``Rollouts`` protocol: where the training loop gets its scored groups and sends its weights.

Two implementations, with the same calls, so the loop reads the same whether its engine is in this
process (``rlvr.rollout.local.LocalRollouts``) or spread over Ray actors
(``rlvr.rollout.ray.RayRollouts``). Async overlap (rlvr.pipeline) wraps either one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from rollouts import Group, SamplingConfig
from verifiers import Score

# What a draw returns: the groups in row order, the rubric's scores per group, and the draw's timings
# (``generate_s``, ``score_s``, ...).
Drawn = tuple[list[Group], list[list[Score]], dict[str, float]]


@runtime_checkable
class Rollouts(Protocol):
    pids: list[int]  # the processes that draw (Ray workers; empty in process), for cluster.json

    def generate_and_score(self, rows: Sequence[Mapping[str, Any]], sampling: SamplingConfig) -> Drawn:
        """Groups for ``rows`` (prompted by their ``prompt_ids``), sampled as ``sampling`` says, and scored."""
        ...

    def evaluate(self, rows: list[dict[str, Any]], **kwargs: Any) -> dict[str, float]:
        """rlvr.evaluate.evaluate on the rollouts' engine (``kwargs``: its keyword arguments)."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]],
                     version: int | None = None) -> dict[str, float]:
        """Push new weights to every engine (``version``: the policy version, default the next); the
        sync's stats (``sync_s``, ...)."""
        ...

    def sleep(self) -> None:
        """Free the engines' GPU memory while the learner steps (where the engine can sleep)."""
        ...

    def stats(self) -> dict[str, float]:
        """Counters for the step's metrics (e.g. ``rollout_worker_restarts``)."""
        ...

    def close(self) -> None: ...
