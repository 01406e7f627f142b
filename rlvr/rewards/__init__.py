"""Reward verifiers that need torch, which the ``verifiers`` package never imports: ``reward_model``.

Importing this package (``import rlvr`` does) registers them with `verifiers.register`; rlvr's
pyproject also declares them in the ``rlvr.verifiers`` entry-point group, so ``verifiers.get("reward_model",
model=...)`` finds them in any process where rlvr is installed. Neither imports torch: the model runs in
a worker process of its own (see `rlvr.rewards.reward_model`).
"""

from rlvr.rewards.reward_model import RewardModelVerifier
from verifiers import register

register("reward_model")(RewardModelVerifier)

__all__ = ["RewardModelVerifier"]
