"""Per-token importance-sampling corrections for tokens the rollout engine sampled with other numbers or
older weights: ``IS_MODES[name](old_logp, engine_logp, mask, cap) -> (weights [B, T], metrics)``.

Each token is judged on its own: its ratio is ``exp(old_logp - engine_logp)`` with ``old_logp`` the
trainer's log-prob under the weights of this update and ``engine_logp`` the behaviour log-prob the
engine recorded when it sampled that very token, whatever policy version that was. Nothing here
assumes one version per sample (an in-flight weight update changes the version in mid-sample).

* ``tis`` (truncated IS; Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy
  RL training"): ``w = min(ratio, cap)``. Every token is trained, a large ratio only down-weighted.
* ``mis`` (masked IS; Liu, Li et al. 2025, "When speed kills stability: demystifying RL collapse from the
  training-inference mismatch"): ``w = ratio`` inside ``[1/cap, cap]`` and 0 outside, so a token the
  two policies disagree on too much carries no gradient at all instead of a capped one. The bounds are
  two-sided like verl's token-level mask mode (lower bound 1/upper by default). A rejected token keeps
  its place in the aggregation's normaliser: that is the estimator as the paper writes it (an average
  over every sampled token, rejected ones contributing 0). verl and slime instead take rejected tokens
  out of ``response_mask``; under ``token-mean`` the two differ by the factor 1 / (1 - masked share) on
  the whole gradient, which AdamW's normalisation mostly absorbs.

Weights carry no gradient; ``LossInputs.is_weights`` multiplies them into every registered loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rlvr.algorithms.core import masked_mean

# exp() of a larger log-ratio overflows in float32/bfloat16; a ratio this far from 1 is clipped anyway.
MAX_LOG_RATIO = 20.0

ISModeFn = Callable[[Tensor, Tensor, Tensor, float], tuple[Tensor, dict[str, Tensor]]]
IS_MODES: dict[str, ISModeFn] = {}


def register_is_mode(name: str) -> Callable[[ISModeFn], ISModeFn]:
    def deco(fn: ISModeFn) -> ISModeFn:
        IS_MODES[name] = fn
        return fn

    return deco


def truncated_is_weights(old_logp_trainer: Tensor, engine_logp: Tensor, cap: float) -> Tensor:
    """min(pi_trainer / pi_engine, cap) per token [B, T], no gradient.

    The rollout engine (vLLM, bf16 kernels, or weights some updates old) samples from a different
    distribution than the trainer computes; these weights correct the policy gradient for that
    mismatch (truncated importance sampling). Padding positions carry whatever value; the mask
    zeroes them later.
    """
    with torch.no_grad():
        log_w = (old_logp_trainer - engine_logp).clamp(max=MAX_LOG_RATIO)
        return log_w.exp().clamp(max=cap)


@register_is_mode("tis")
def tis_weights(old_logp: Tensor, engine_logp: Tensor, mask: Tensor, cap: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Truncated IS: ``min(ratio, cap)``. Metrics: ``weight_mean`` and ``clipped_frac`` (tokens whose
    ratio exceeded the cap), over ``mask``."""
    weights = truncated_is_weights(old_logp, engine_logp, cap)  # [B, T]
    with torch.no_grad():
        ratio = (old_logp - engine_logp).clamp(max=MAX_LOG_RATIO).exp()
        clipped = (ratio > cap).to(weights.dtype)
        return weights, {"weight_mean": masked_mean(weights, mask), "clipped_frac": masked_mean(clipped, mask)}


@register_is_mode("mis")
def mis_weights(old_logp: Tensor, engine_logp: Tensor, mask: Tensor, cap: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Masked IS: ``ratio`` where ``1/cap <= ratio <= cap``, else 0. Metrics: ``weight_mean`` and
    ``masked_frac`` (tokens given weight 0), over ``mask``."""
    with torch.no_grad():
        ratio = (old_logp - engine_logp).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()  # [B, T]
        keep = (ratio >= 1.0 / cap) & (ratio <= cap)
        weights = torch.where(keep, ratio, torch.zeros_like(ratio))
        masked = (~keep).to(weights.dtype)
        return weights, {"weight_mean": masked_mean(weights, mask), "masked_frac": masked_mean(masked, mask)}


def importance_weights(old_logp: Tensor, engine_logp: Tensor, mask: Tensor, mode: str,
                       cap: float) -> tuple[Tensor, dict[str, Tensor]]:
    """``IS_MODES[mode]`` with a clear error for an unknown mode."""
    if mode not in IS_MODES:
        raise KeyError(f"algorithm.is_mode: unknown {mode!r}; known: {sorted(IS_MODES)}")
    return IS_MODES[mode](old_logp, engine_logp, mask, cap)
