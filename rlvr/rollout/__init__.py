"""The rollout side of the trainer: where scored groups come from and how new weights reach the engines.

* ``Rollouts`` (rlvr.rollout.base): the calls the training loop makes; ``LocalRollouts``
  (rlvr.rollout.local: one engine in this process) and ``RayRollouts`` (rlvr.rollout.ray: rollout
  workers as Ray actors) implement it, and ``make_rollouts`` picks one from the config.
* ``WeightSync`` (rlvr.rollout.weight_sync): one class per transport (in process, shared memory,
  object store, NCCL in rlvr.rollout.nccl), ``push`` at the learner's end, ``load_into`` at the engine's.

Ray is imported only by rlvr.rollout.ray, and only when the config asks for rollout workers.
"""

from __future__ import annotations

from rlvr.config import TrainConfig
from rlvr.rollout.base import Drawn, Rollouts
from rlvr.rollout.local import LocalRollouts
from verifiers import Rubric

__all__ = ["Drawn", "LocalRollouts", "Rollouts", "make_rollouts"]


def make_rollouts(cfg: TrainConfig, model_dir: str, rubric: Rubric, threads: int, cluster=None) -> Rollouts:
    """``LocalRollouts``, or ``RayRollouts`` when ``cluster.rollout_workers > 0`` (``cluster``: the
    rlvr.cluster.runtime.ClusterInfo of the connected Ray cluster)."""
    if cfg.cluster.rollout_workers == 0:
        return LocalRollouts(cfg, model_dir, rubric, threads)
    from rlvr.rollout.ray import RayRollouts

    return RayRollouts(cfg, model_dir, cluster)
