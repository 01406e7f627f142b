"""The policy side of a run: the policy (LoRA-wrapped when configured), the frozen reference, the
``Learner`` and PPO's ``Critic``, built the same way in the trainer and in every learner rank."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlvr.config import TrainConfig


@dataclass
class PolicySide:
    """What learns: the policy (LoRA-wrapped when configured), the frozen reference (only when the
    algorithm's KL needs it), the policy's ``Learner`` and PPO's ``Critic`` (only for ``gae``)."""

    policy: Any  # transformers PreTrainedModel (or a peft model)
    ref: Any | None
    learner: Any  # rlvr.train.learner.Learner
    critic: Any | None  # rlvr.train.critic.Critic


def build_policy_side(cfg: TrainConfig, model_dir: str, device: str, plan: Any = None) -> PolicySide:
    """The policy side of a run, built the same way in the trainer and in every learner rank, so
    the ranks hold the same models and optimisers (``LearnerGroup.broadcast_state`` then makes
    their state equal). ``plan``: the rank's parallel plan (rlvr.train.parallel; default one
    process), which prepares the models before their optimisers are built. Seeding is the
    caller's: LoRA's initialisation draws from torch's RNG."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlvr import lora
    from rlvr.train.critic import Critic
    from rlvr.train.learner import Learner
    from rlvr.train.parallel import SINGLE

    plan = SINGLE if plan is None else plan
    algo = cfg.algorithm
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    if cfg.lora is not None:
        policy = lora.wrap(policy, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules)
    ref = None
    if algo.needs_reference:  # KL to a frozen copy of the starting policy
        ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval().requires_grad_(False)
    learner = Learner(policy, algo, cfg.optim, cfg.train, ref_model=ref, plan=plan)
    critic = Critic.for_policy(policy, algo, cfg.optim, cfg.train, plan) if algo.needs_critic else None
    return PolicySide(learner.model, learner.ref_model, learner, critic)
