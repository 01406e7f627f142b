"""KL to the reference policy: per-token estimators, and the "KL in the reward" variant.

Two places a KL penalty can go (``AlgorithmConfig.kl_in_reward`` picks one):

* in the loss (GRPO, the default): ``loss += loss_kl_coef * agg_loss(kl_penalty(logp, ref_logp, kind), mask, agg)``,
  differentiated through ``logp``;
* in the reward (PPO-RLHF, REINFORCE++): before advantages are computed, token-level rewards
  lose ``beta * kl_t``, where kl_t compares the *sampling-time* log-probs to the reference and
  carries no gradient. Only token-reward estimators (gae, reinforce_pp) accept it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1/k2/k3). [B, T]

    With x = log pi - log pi_ref on a token sampled from pi:
    k1 = x (unbiased, can be negative), k2 = x^2 / 2 (biased, low variance),
    k3 = exp(-x) - 1 + x (unbiased, always >= 0).
    """
    log_ratio = logp - ref_logp  # [B, T] log pi/pi_ref
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return (-log_ratio).exp() - 1 + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}")


def kl_reward_penalty(
    token_rewards: Tensor, old_logp: Tensor, ref_logp: Tensor, mask: Tensor, coef: float, kind: str
) -> Tensor:
    """Token rewards minus ``coef * KL_t`` on response tokens: [B, T], no gradient."""
    with torch.no_grad():
        kl = kl_penalty(old_logp, ref_logp, kind)  # [B, T]
        return token_rewards - coef * kl * mask
