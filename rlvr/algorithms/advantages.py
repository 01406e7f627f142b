"""Advantage estimators: ``ADVANTAGES[name](inp: AdvantageInputs, cfg) -> Tensor [B, T]``.

Outcome-level estimators (grpo, dr_grpo, rloo) turn one scalar reward per completion into one
advantage per completion and broadcast it over its response tokens. Token-level estimators
(reinforce_pp, gae) read ``inp.token_rewards`` when given (e.g. with the KL subtracted in the
reward), else put the scalar reward on the last response token.

Masked positions inside a row (e.g. tool-output tokens) are *skipped* by the token-level
recursions: they are not time steps, and their advantage is 0.

Invalid samples (``inp.valid`` False: a check that failed for reasons not the policy's) are left
out of every statistic: the group mean, std and size of the outcome-level estimators, REINFORCE++'s
group baseline and batch normalisation, GAE's whitening; their advantage is 0 on every token.
With every sample valid, each estimator computes exactly what it computes without ``valid``.

A sample that spans several rows (``inp.lead``: an agent session of several exact sequences) counts
once in its group's statistics (its lead row); every one of its rows, carrying the sample's reward,
gets the sample's advantage from the outcome-level estimators; the token-level ones treat each row
as an episode ending in the sample's reward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.algorithms.config import AlgorithmConfig
from rlvr.algorithms.core import AdvantageInputs, last_token_rewards, masked_whiten, register_advantage


def group_stats(rewards: Tensor, group_ids: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-element group mean, std (unbiased like ``torch.std``; 0 for a group of 1) and size. [B] each.

    ``valid`` [B] bool: only the valid members count (in the mean, the std and the size); an invalid
    element gets its group's statistics of the valid members (mean 0 and size 0 when it has none)."""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    zeros = torch.zeros(len(counts), dtype=rewards.dtype, device=rewards.device)
    counts = counts.to(rewards.dtype)
    if valid is not None:  # where(), not a product: a failed sample's reward may be anything, NaN included
        rewards = torch.where(valid, rewards, torch.zeros_like(rewards))
        counts = zeros.index_add(0, inverse, valid.to(rewards.dtype))  # [G]
    mean = (zeros.index_add(0, inverse, rewards) / counts.clamp(min=1))[inverse]  # [B]
    dev = (rewards - mean) ** 2
    sq = zeros.index_add(0, inverse, dev if valid is None else torch.where(valid, dev, torch.zeros_like(dev)))  # [G]
    var = sq / (counts - 1).clamp(min=1)
    return mean, var.sqrt()[inverse], counts[inverse]


def _per_token(adv: Tensor, inp: AdvantageInputs) -> Tensor:
    """A scalar advantage per sample [B] on its response tokens [B, T]; 0 for invalid samples."""
    if inp.valid is not None:
        adv = torch.where(inp.valid, adv, torch.zeros_like(adv))
    return adv[:, None] * inp.valid_mask()


@register_advantage("grpo")
def grpo_advantage(inp: AdvantageInputs, cfg: AlgorithmConfig) -> Tensor:
    """(r - mean_group) / (std_group + eps), or just r - mean_group with ``scale_std`` off."""
    mean, std, _ = group_stats(inp.rewards, inp.group_ids, inp.counted())
    adv = inp.rewards - mean  # [B]
    if cfg.scale_std:
        adv = adv / (std + cfg.std_eps)
    return _per_token(adv, inp)  # [B, T]


@register_advantage("dr_grpo")
def dr_grpo_advantage(inp: AdvantageInputs, cfg: AlgorithmConfig) -> Tensor:
    """r - mean_group: Dr.GRPO drops the std division (its question-difficulty bias)."""
    mean, _, _ = group_stats(inp.rewards, inp.group_ids, inp.counted())
    return _per_token(inp.rewards - mean, inp)  # [B, T]


@register_advantage("rloo")
def rloo_advantage(inp: AdvantageInputs, cfg: AlgorithmConfig) -> Tensor:
    """r_i - mean_{j != i} r_j over the group, = n/(n-1) * (r_i - mean); 0 for a group of one."""
    mean, _, n = group_stats(inp.rewards, inp.group_ids, inp.counted())
    loo = torch.where(n > 1, (inp.rewards - mean) * n / (n - 1).clamp(min=1), torch.zeros_like(mean))  # [B]
    return _per_token(loo, inp)  # [B, T]


def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """G_t = r_t + gamma * G_{t+1} over masked tokens (masked-out positions skipped). [B, T]"""
    out = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[:, 0])  # [B]
    for t in reversed(range(token_rewards.shape[1])):
        m = mask[:, t]
        running = m * (token_rewards[:, t] + gamma * running) + (1 - m) * running
        out[:, t] = running * m
    return out


def _token_rewards(inp: AdvantageInputs, mask: Tensor) -> Tensor:
    """Per-token rewards [B, T] on ``mask`` (0 elsewhere, whatever an invalid row held)."""
    if inp.token_rewards is not None:
        return inp.token_rewards * mask
    rewards = inp.rewards if inp.valid is None else torch.where(inp.valid, inp.rewards, torch.zeros_like(inp.rewards))
    return last_token_rewards(rewards, mask)


@register_advantage("reinforce_pp")
def reinforce_pp_advantage(inp: AdvantageInputs, cfg: AlgorithmConfig) -> Tensor:
    """REINFORCE++: discounted returns-to-go, normalised over all response tokens of the batch.

    With ``group_baseline`` the group mean reward is first subtracted at the last token
    (REINFORCE++-baseline), so the global normalisation only rescales.
    """
    mask = inp.valid_mask()  # [B, T]
    token_rewards = _token_rewards(inp, mask)  # [B, T]
    if cfg.group_baseline:
        mean, _, _ = group_stats(inp.rewards, inp.group_ids, inp.counted())
        token_rewards = token_rewards - last_token_rewards(mean, mask)
    returns = discounted_returns(token_rewards, mask, cfg.gamma)  # [B, T]
    return masked_whiten(returns, mask, cfg.std_eps)


def compute_gae(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation and value targets, both [B, T], no gradient.

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last token is 0: the episode ends),
    A_t = delta_t + gamma * lam * A_{t+1}, returns_t = A_t + V_t.
    """
    with torch.no_grad():
        adv = torch.zeros_like(values)
        next_value = torch.zeros_like(values[:, 0])  # [B]
        next_adv = torch.zeros_like(values[:, 0])  # [B]
        for t in reversed(range(values.shape[1])):
            m = mask[:, t]
            delta = token_rewards[:, t] + gamma * next_value - values[:, t]
            a = delta + gamma * lam * next_adv
            adv[:, t] = a * m
            next_value = m * values[:, t] + (1 - m) * next_value
            next_adv = m * a + (1 - m) * next_adv
        returns = (adv + values) * mask
    return adv, returns


def gae_advantages_and_returns(inp: AdvantageInputs, cfg: AlgorithmConfig) -> tuple[Tensor, Tensor]:
    """PPO's (advantages, value targets) [B, T]; advantages whitened when ``cfg.whiten_advantages``."""
    if inp.values is None:
        raise ValueError("gae needs critic values: AdvantageInputs.values [B, T]")
    mask = inp.valid_mask()  # [B, T]
    adv, returns = compute_gae(_token_rewards(inp, mask), inp.values, mask, cfg.gamma, cfg.gae_lambda)
    if cfg.whiten_advantages:
        adv = masked_whiten(adv, mask, cfg.std_eps)
    return adv, returns


@register_advantage("gae")
def gae_advantage(inp: AdvantageInputs, cfg: AlgorithmConfig) -> Tensor:
    """GAE advantages for PPO; the value targets come from ``gae_advantages_and_returns``."""
    return gae_advantages_and_returns(inp, cfg)[0]
