"""Registries, their input records, masked reductions and loss aggregation.

Two registries, one signature each:

* ``ADVANTAGES[name](inp: AdvantageInputs, cfg: AlgorithmConfig) -> Tensor [B, T]``
* ``POLICY_LOSSES[name](inp: LossInputs, cfg: AlgorithmConfig) -> (Tensor [B, T], dict[str, Tensor])``

Per-token policy losses are reduced by ``agg_loss(values, mask, mode)``; nothing else
branches on algorithm names. The estimators live in ``advantages.py``, the losses in
``losses.py``; importing ``rlvr.algorithms`` registers them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rlvr.algorithms.kl import kl_penalty  # noqa: F401  (re-exported: its historical home)

if TYPE_CHECKING:  # (the config's validators read the registries here: a run-time import would be a cycle)
    from rlvr.algorithms.config import AlgorithmConfig


@dataclass
class AdvantageInputs:
    rewards: Tensor  # [B] one scalar reward per completion
    group_ids: Tensor  # [B] long; completions of the same prompt share an id
    mask: Tensor  # [B, T] 1.0 on response tokens
    values: Tensor | None = None  # [B, T] critic values V(s_t) at sampling time (gae only)
    token_rewards: Tensor | None = None  # [B, T] per-token rewards (gae, reinforce_pp); None: reward at last token
    # [B] bool: False for a sample kept out of training (its check failed for reasons not the policy's, or its
    # group was left with too few); it counts in no group statistic and its advantage is 0. None: all valid
    valid: Tensor | None = None
    # [B] bool: the rows that count in group statistics when one sample spans several rows (an agent session
    # of several exact sequences: each row carries the sample's reward and gets its advantage). None: every row
    lead: Tensor | None = None

    def counted(self) -> Tensor | None:
        """[B] bool: the rows that enter group statistics (valid and lead); None when that is every row."""
        if self.lead is None:
            return self.valid
        return self.lead if self.valid is None else self.valid & self.lead

    def valid_mask(self) -> Tensor:
        """``mask`` [B, T] with the rows of invalid samples zeroed (``mask`` itself when every sample is valid)."""
        return self.mask if self.valid is None else self.mask * self.valid.to(self.mask.dtype)[:, None]


@dataclass
class LossInputs:
    logp: Tensor  # [B, T] current policy log-probs of the taken tokens
    old_logp: Tensor  # [B, T] log-probs at sampling time (behaviour policy, as the trainer computes them)
    advantages: Tensor  # [B, T]
    mask: Tensor  # [B, T]
    ref_logp: Tensor | None = None  # [B, T] reference log-probs (policy_objective's KL term)
    entropy: Tensor | None = None  # [B, T] per-token policy entropy (policy_objective's bonus)
    is_weights: Tensor | None = None  # [B, T] IS weights (tis/mis) multiplying the per-token loss; None: 1


AdvantageFn = Callable[[AdvantageInputs, "AlgorithmConfig"], Tensor]
PolicyLossFn = Callable[[LossInputs, "AlgorithmConfig"], tuple[Tensor, dict[str, Tensor]]]
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


def drop_thin_groups(valid: Tensor, group_ids: Tensor, lead: Tensor | None = None) -> Tensor:
    """``valid`` [B] bool with every member of a group cleared when the group has fewer than two valid
    samples left (no baseline to compare with: the group is dropped). A group of one keeps its one sample
    when it is valid (``sampling.n=1`` has no group baseline to lose). ``lead`` [B] bool: the rows that
    stand for a sample when a sample spans several rows (only they are counted); None: every row."""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    if lead is not None:
        counts = torch.zeros_like(counts).index_add(0, inverse, lead.long())  # [G] samples
    counted = valid if lead is None else valid & lead
    left = torch.zeros_like(counts).index_add(0, inverse, counted.long())  # [G] valid samples
    return valid & (left >= counts.clamp(max=2))[inverse]


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1 (0 when the mask is empty)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: Tensor, mask: Tensor, eps: float) -> Tensor:
    """(v - mean) / (std + eps) over masked positions, std unbiased like ``torch.std``; 0 off the mask."""
    n = mask.sum()
    mean = (values * mask).sum() / n.clamp(min=1)
    var = (((values - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)
    return (values - mean) / (var.sqrt() + eps) * mask


def agg_loss(values: Tensor, mask: Tensor, mode: str, norm_const: float | None = None) -> Tensor:
    """Reduce per-token ``values`` [B, T] over ``mask`` [B, T] to a scalar.

    token-mean:              sum(v*m) / sum(m)              (every token weighs the same)
    seq-mean-token-mean:     mean_b( sum_t(v*m) / sum_t(m) ) (every sequence weighs the same)
    seq-mean-token-sum:      mean_b( sum_t(v*m) )
    seq-mean-token-sum-norm: sum(v*m) / (B * norm_const)    (Dr.GRPO; norm_const defaults to T)

    The learner passes ``cfg.loss_agg_norm`` as ``norm_const``. With micro-batches, every mode
    here is a mean over *this* micro-batch; sum micro-batch losses weighted accordingly.
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


def last_token_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """Place each scalar reward [B] on the last response token of its row: [B, T]."""
    t = torch.arange(mask.shape[-1], device=mask.device)
    last = (t * (mask > 0)).amax(-1)  # [B] index of the last masked position (0 if none)
    out = torch.zeros_like(mask, dtype=rewards.dtype)
    out[torch.arange(mask.shape[0]), last] = rewards
    return out * mask
