"""Advantages, policy losses, aggregation, KL, DAPO extras, the PPO critic and presets.

Importing this package registers every estimator and loss (see docs/algorithms.md).
"""

from rlvr.algorithms.advantages import (  # noqa: E402  (registers the estimators)
    compute_gae,
    discounted_returns,
    gae_advantages_and_returns,
    group_stats,
)
from rlvr.algorithms.config import AlgorithmConfig, resolve_algorithm
from rlvr.algorithms.core import (
    ADVANTAGES,
    POLICY_LOSSES,
    AdvantageInputs,
    LossInputs,
    agg_loss,
    drop_thin_groups,
    last_token_rewards,
    masked_mean,
    masked_whiten,
    register_advantage,
    register_policy_loss,
)
from rlvr.algorithms.dapo import dynamic_sampling_filter, overlong_mask, soft_overlong_penalty
from rlvr.algorithms.importance import IS_MODES, importance_weights, register_is_mode
from rlvr.algorithms.kl import kl_penalty, kl_reward_penalty
from rlvr.algorithms.losses import MAX_LOG_RATIO, policy_objective, truncated_is_weights
from rlvr.algorithms.presets import PRESETS
from rlvr.algorithms.value import CriticModel, ValueHead, value_loss

__all__ = [
    "AlgorithmConfig", "ADVANTAGES", "POLICY_LOSSES", "AdvantageInputs", "LossInputs",
    "agg_loss", "kl_penalty", "masked_mean", "masked_whiten", "register_advantage", "register_policy_loss",
    "last_token_rewards", "kl_reward_penalty", "compute_gae", "discounted_returns",
    "gae_advantages_and_returns", "group_stats", "MAX_LOG_RATIO", "policy_objective", "truncated_is_weights",
    "dynamic_sampling_filter", "overlong_mask", "soft_overlong_penalty", "CriticModel", "ValueHead",
    "value_loss", "PRESETS", "resolve_algorithm", "drop_thin_groups", "IS_MODES", "importance_weights",
    "register_is_mode",
]
