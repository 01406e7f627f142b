"""Where rollouts are drawn: the engine in the trainer's process, or rollout workers on Ray.

The loop talks to either through the same few calls (``generate_and_score``, ``evaluate``,
``load_weights``, ``sleep``, ``stats``, ``close``), so it reads the same whether its engine is
local or spread over actors. Async overlap (rlvr.pipeline) wraps either one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from rlvr.components import build_engine
from rlvr.config import TrainConfig
from rlvr.evaluate import evaluate
from rlvr.scoring import Scorer, generate_and_score
from rollouts import SamplingConfig
from verifiers import Rubric


class LocalRollouts:
    """One engine and one scoring pool in this process (the default, ``cluster.rollout_workers: 0``)."""

    def __init__(self, cfg: TrainConfig, model_dir: str, rubric: Rubric, threads: int, in_actor: bool = False,
                 engine_extra: dict[str, Any] | None = None):
        # a Ray actor is the engine's own process already; engine_extra: e.g. the weight-sync transport's
        # receiver (rlvr.cluster.nccl_sync)
        self.engine = build_engine(cfg, model_dir, threads, separate_process=False if in_actor else None,
                                   **(engine_extra or {}))
        self.rubric, self.workers = rubric, cfg.rewards.workers
        self.scorer = Scorer(rubric, cfg.rewards.workers)

    def generate_and_score(self, rows: Sequence[Mapping[str, Any]], sampling: SamplingConfig):
        return generate_and_score(self.engine, rows, sampling, self.scorer)

    def evaluate(self, rows: list[dict[str, Any]], **kwargs) -> dict[str, float]:
        return evaluate(self.engine, rows, self.rubric, workers=self.workers, **kwargs)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, float]:
        t0 = time.perf_counter()
        self.engine.load_weights(named_tensors)
        return {"sync_s": time.perf_counter() - t0}

    def sleep(self) -> None:
        if hasattr(self.engine, "sleep"):
            self.engine.sleep()

    def stats(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        self.scorer.close()
        self.engine.close()


def make_rollouts(cfg: TrainConfig, model_dir: str, rubric: Rubric, threads: int, cluster=None):
    """``LocalRollouts``, or ``RayRollouts`` when ``cluster.rollout_workers > 0`` (``cluster``: the
    rlvr.cluster.runtime.ClusterInfo of the connected Ray cluster)."""
    if cfg.cluster.rollout_workers == 0:
        return LocalRollouts(cfg, model_dir, rubric, threads)
    from rlvr.cluster.rollout_workers import RayRollouts

    return RayRollouts(cfg, model_dir, cluster)
