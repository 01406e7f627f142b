"""Rollouts in this process: one engine and one scoring pool (``cluster.rollout_workers: 0``).

Also what each Ray rollout worker runs inside its actor (rlvr.rollout.ray.RolloutWorker).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from rlvr.components import build_engine
from rlvr.config import TrainConfig
from rlvr.evaluate import evaluate
from rlvr.models import context_length
from rlvr.rollout.base import Drawn
from rlvr.rollout.weight_sync import InProcessSync
from rlvr.scoring import Scorer, generate_and_score
from rollouts import SamplingConfig
from verifiers import Rubric


class LocalRollouts:
    """``Rollouts`` on one engine and one scoring pool in this process; weights are copied into the engine
    (``InProcessSync``)."""

    def __init__(self, cfg: TrainConfig, model_dir: str, rubric: Rubric, threads: int, in_actor: bool = False,
                 engine_extra: dict[str, Any] | None = None):
        # a Ray actor is the engine's own process already; engine_extra: what the worker's weight-sync
        # transport needs from its engine (rlvr.rollout.weight_sync)
        self.engine = build_engine(cfg, model_dir, threads, separate_process=False if in_actor else None,
                                   **(engine_extra or {}))
        self.rubric, self.workers, self.env = rubric, cfg.rewards.workers, cfg.env
        self.context = context_length(model_dir)  # an episode's length limit beside env.max_total_tokens
        self.scorer = Scorer(rubric, cfg.rewards.workers)
        self.sync = InProcessSync(self.engine)
        self.version = 0  # pushes of new weights so far
        if hasattr(self.engine, "version"):  # the model directory's weights are version 0: every token records one
            self.engine.version = 0
        self.pids: list[int] = []  # no worker processes
        self.agents = None  # agent:, the user's agent behind a recording server on this engine (rlvr.agents)
        if cfg.agent is not None:
            from transformers import AutoTokenizer

            from rlvr.agents import AgentRunner

            try:
                self.agents = AgentRunner(cfg.agent, self.engine, AutoTokenizer.from_pretrained(model_dir),
                                          self.context, cfg.sampling.max_tokens)
            except BaseException:
                self.close()
                raise

    def generate_and_score(self, rows: Sequence[Mapping[str, Any]], sampling: SamplingConfig) -> Drawn:
        if self.agents is not None:
            return self.agents.generate_and_score(rows, sampling, self.scorer, self.version)
        return generate_and_score(self.engine, rows, sampling, self.scorer, self.env, self.version, self.context)

    def evaluate(self, rows: list[dict[str, Any]], **kwargs) -> dict[str, float]:
        return evaluate(self.engine, rows, self.rubric, workers=self.workers, env=self.env, context=self.context,
                        agents=self.agents, **kwargs)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]],
                     version: int | None = None) -> dict[str, float]:
        self.version = self.version + 1 if version is None else version
        return self.sync.push(named_tensors, self.version)

    def sleep(self) -> None:
        if hasattr(self.engine, "sleep"):
            self.engine.sleep()

    def stats(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        if getattr(self, "agents", None) is not None:
            self.agents.close()
        self.scorer.close()
        self.engine.close()
