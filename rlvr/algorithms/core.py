"""Advantage estimators, policy losses, loss aggregation and KL estimators.

Two registries, one signature each:

* ``ADVANTAGES[name](inp: AdvantageInputs, cfg: AlgorithmConfig) -> Tensor [B, T]``
* ``POLICY_LOSSES[name](inp: LossInputs, cfg: AlgorithmConfig) -> (Tensor [B, T], dict[str, Tensor])``

Per-token policy losses are reduced by ``agg_loss(values, mask, mode)``; nothing else
branches on algorithm names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rlvr.algorithms.config import AlgorithmConfig


@dataclass
class AdvantageInputs:
    rewards: Tensor  # [B] one scalar reward per completion
    group_ids: Tensor  # [B] long; completions of the same prompt share an id
    mask: Tensor  # [B, T] 1.0 on response tokens
    values: Tensor | None = None  # [B, T] critic values (gae only)


@dataclass
class LossInputs:
    logp: Tensor  # [B, T] current policy log-probs of the taken tokens
    old_logp: Tensor  # [B, T] log-probs at sampling time (behaviour policy)
    advantages: Tensor  # [B, T]
    mask: Tensor  # [B, T]


AdvantageFn = Callable[[AdvantageInputs, AlgorithmConfig], Tensor]
PolicyLossFn = Callable[[LossInputs, AlgorithmConfig], tuple[Tensor, dict[str, Tensor]]]
ADVANTAGES: dict[str, AdvantageFn] = {}
POLICY_LOSSES: dict[str, PolicyLossFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    def deco(fn: AdvantageFn) -> AdvantageFn:
        ADVANTAGES[name] = fn
        return fn

    return deco


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    def deco(fn: PolicyLossFn) -> PolicyLossFn:
        POLICY_LOSSES[name] = fn
        return fn

    return deco


def group_stats(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Per-element mean and (unbiased, like torch.std) std of its group. Shapes [B]."""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=rewards.dtype).index_add_(0, inverse, rewards)
    mean = (sums / counts)[inverse]  # [B]
    sq = torch.zeros(len(counts), dtype=rewards.dtype).index_add_(0, inverse, (rewards - mean) ** 2)
    var = sq / (counts - 1).clamp(min=1)  # a group of 1 has std 0
    return mean, var.sqrt()[inverse]


@register_advantage("grpo")
def grpo_advantage(inp: AdvantageInputs, cfg: AlgorithmConfig) -> Tensor:
    """(r - mean_group) / (std_group + eps), or just r - mean_group with scale_std off."""
    mean, std = group_stats(inp.rewards, inp.group_ids)
    adv = inp.rewards - mean  # [B]
    if cfg.scale_std:
        adv = adv / (std + cfg.std_eps)
    return adv[:, None] * inp.mask  # [B, T]


@register_policy_loss("ppo_clip")
def ppo_clip_loss(inp: LossInputs, cfg: AlgorithmConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """-min(ratio * A, clip(ratio, 1-eps_low, 1+eps_high) * A) per token."""
    ratio = (inp.logp - inp.old_logp).exp()  # [B, T]
    clipped = ratio.clamp(1 - cfg.clip_eps_low, 1 + cfg.clip_eps_high)
    loss = -torch.minimum(ratio * inp.advantages, clipped * inp.advantages)  # [B, T]
    with torch.no_grad():
        was_clipped = ((ratio * inp.advantages) > (clipped * inp.advantages)).float()
        clip_frac = masked_mean(was_clipped, inp.mask)
    return loss, {"clip_frac": clip_frac}


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def agg_loss(values: Tensor, mask: Tensor, mode: str, norm_const: float | None = None) -> Tensor:
    """Reduce per-token ``values`` [B, T] over ``mask`` [B, T] to a scalar.

    token-mean:              sum(v*m) / sum(m)              (every token weighs the same)
    seq-mean-token-mean:     mean_b( sum_t(v*m) / sum_t(m) ) (every sequence weighs the same)
    seq-mean-token-sum:      mean_b( sum_t(v*m) )
    seq-mean-token-sum-norm: sum(v*m) / (B * norm_const)    (Dr.GRPO; norm_const defaults to T)
    """
    if mode == "token-mean":
        return masked_mean(values, mask)
    seq_sum = (values * mask).sum(-1)  # [B]
    if mode == "seq-mean-token-mean":
        return (seq_sum / mask.sum(-1).clamp(min=1)).mean()
    if mode == "seq-mean-token-sum":
        return seq_sum.mean()
    if mode == "seq-mean-token-sum-norm":
        norm = float(values.shape[-1]) if norm_const is None else norm_const
        return seq_sum.sum() / (values.shape[0] * norm)
    raise ValueError(f"unknown loss aggregation mode {mode!r}")


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1/k2/k3)."""
    log_ratio = logp - ref_logp  # log pi/pi_ref
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return (-log_ratio).exp() - 1 + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}")
