from rlvr.algorithms.config import AlgorithmConfig
from rlvr.algorithms.core import (
    ADVANTAGES,
    POLICY_LOSSES,
    AdvantageInputs,
    LossInputs,
    agg_loss,
    kl_penalty,
    masked_mean,
    register_advantage,
    register_policy_loss,
)

__all__ = [
    "AlgorithmConfig", "ADVANTAGES", "POLICY_LOSSES", "AdvantageInputs", "LossInputs",
    "agg_loss", "kl_penalty", "masked_mean", "register_advantage", "register_policy_loss",
]
