"""Typed settings for advantages, policy losses, aggregation and KL."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


class AlgorithmConfig(BaseModel):
    """Which advantage estimator and policy loss the learner uses, and their constants."""

    model_config = ConfigDict(extra="forbid")

    advantage: str = Field("grpo", description="Advantage estimator name in ADVANTAGES.")
    scale_std: bool = Field(True, description="GRPO: divide group-centred rewards by the group std.")
    std_eps: float = Field(1e-6, ge=0, description="Added to the std before dividing.")
    policy_loss: str = Field("ppo_clip", description="Policy loss name in POLICY_LOSSES.")
    clip_eps_low: float = Field(0.2, ge=0, description="PPO clip: lower bound is 1 - clip_eps_low.")
    clip_eps_high: float = Field(0.2, ge=0, description="PPO clip: upper bound is 1 + clip_eps_high.")
    loss_agg: AggMode = Field("token-mean", description="How per-token losses reduce to a scalar.")
    kl_coef: float = Field(0.0, ge=0, description="Weight of the KL penalty to the reference (0: no reference model).")
    kl_kind: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator used in the loss.")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus weight (0: off).")
