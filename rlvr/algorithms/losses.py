"""Policy losses: ``POLICY_LOSSES[name](inp: LossInputs, cfg) -> (loss [B, T], metrics)``.

Each returns an unreduced per-token loss; ``agg_loss`` reduces it. Importance-sampling weights
(``inp.is_weights``, from rlvr.algorithms.importance) multiply the per-token loss inside every loss,
so a learner that calls the registry directly gets them too. KL and entropy are *not* in the per-token loss:
``policy_objective`` adds them (or the learner does, the same way).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.algorithms.config import AlgorithmConfig
from rlvr.algorithms.core import POLICY_LOSSES, LossInputs, agg_loss, masked_mean, register_policy_loss
from rlvr.algorithms.importance import MAX_LOG_RATIO, truncated_is_weights  # noqa: F401  (re-exported)
from rlvr.algorithms.kl import kl_penalty


def _weighted(loss: Tensor, inp: LossInputs) -> Tensor:
    return loss if inp.is_weights is None else loss * inp.is_weights.detach()


def _clipped_surrogate(
    log_ratio: Tensor, inp: LossInputs, cfg: AlgorithmConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate on a given log-ratio; the shared body of ppo_clip and gspo."""
    adv = inp.advantages  # [B, T]
    ratio = log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()  # [B, T]
    clipped = ratio.clamp(1 - cfg.clip_eps_low, 1 + cfg.clip_eps_high)
    loss = torch.maximum(-ratio * adv, -clipped * adv)  # [B, T] = -min(r*A, clip(r)*A)
    with torch.no_grad():
        clip_frac = masked_mean((-clipped * adv > -ratio * adv).to(adv.dtype), inp.mask)
        dual_frac = torch.zeros_like(clip_frac)
    if cfg.dual_clip_c is not None:
        # For A < 0 an unbounded ratio means an unbounded loss; dual-clip caps it at -c*A.
        capped = torch.minimum(loss, -cfg.dual_clip_c * adv)
        with torch.no_grad():
            dual_frac = masked_mean(((adv < 0) & (capped < loss)).to(adv.dtype), inp.mask)
        loss = torch.where(adv < 0, capped, loss)
    with torch.no_grad():
        metrics = {
            "clip_frac": clip_frac,
            "dual_clip_frac": dual_frac,
            "ratio_mean": masked_mean(ratio, inp.mask),
            "approx_kl": masked_mean(kl_penalty(inp.old_logp, inp.logp, "k3"), inp.mask),  # KL(old || new)
        }
    return _weighted(loss, inp), metrics


@register_policy_loss("ppo_clip")
def ppo_clip_loss(inp: LossInputs, cfg: AlgorithmConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """-min(r*A, clip(r, 1-eps_low, 1+eps_high)*A) per token, r = pi/pi_old; optional dual-clip."""
    return _clipped_surrogate(inp.logp - inp.old_logp, inp, cfg)


@register_policy_loss("gspo")
def gspo_loss(inp: LossInputs, cfg: AlgorithmConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO: the clipped surrogate on the sequence ratio s = exp(mean_t log(pi/pi_old)).

    Written in GSPO-token form, log s_t = sg[log s] + log pi_t - sg[log pi_t]: every token of a
    sequence has the value s (so clipping acts on whole sequences), and with one advantage per
    sequence and ``seq-mean-token-mean`` aggregation the gradient is exactly the paper's.
    """
    log_ratio = (inp.logp - inp.old_logp) * inp.mask  # [B, T]
    log_s = log_ratio.sum(-1) / inp.mask.sum(-1).clamp(min=1)  # [B] length-normalised
    log_s_tok = log_s.detach()[:, None] + inp.logp - inp.logp.detach()  # [B, T], value log_s
    return _clipped_surrogate(log_s_tok, inp, cfg)


@register_policy_loss("reinforce")
def reinforce_loss(inp: LossInputs, cfg: AlgorithmConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """-A * log pi per token: on-policy REINFORCE, no ratio and no clipping.

    Its gradient equals ppo_clip's at pi = pi_old; use it only for one update per batch.
    """
    return _weighted(-inp.advantages * inp.logp, inp), {}


def policy_objective(inp: LossInputs, cfg: AlgorithmConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """The scalar the policy optimiser minimises, and its metrics.

    loss = agg(policy_loss) + loss_kl_coef * agg(KL_kind(logp, ref_logp)) - entropy_coef * agg(entropy)

    with every term aggregated by ``cfg.loss_agg`` (so a bonus weighs tokens exactly like the
    policy term does). The KL term needs ``inp.ref_logp`` when its weight is non-zero; the
    entropy term needs ``inp.entropy`` when ``entropy_coef`` is non-zero.
    """
    mask = inp.mask
    loss_tok, metrics = POLICY_LOSSES[cfg.policy_loss](inp, cfg)  # [B, T]
    pg = agg_loss(loss_tok, mask, cfg.loss_agg, cfg.loss_agg_norm)
    metrics = {**metrics, "pg_loss": pg.detach()}
    loss = pg
    if cfg.loss_kl_coef > 0:
        if inp.ref_logp is None:
            raise ValueError("kl_coef > 0 with the KL in the loss needs LossInputs.ref_logp")
        kl = agg_loss(kl_penalty(inp.logp, inp.ref_logp, cfg.kl_kind), mask, cfg.loss_agg, cfg.loss_agg_norm)
        loss = loss + cfg.loss_kl_coef * kl
        metrics["kl"] = kl.detach()
    if cfg.entropy_coef > 0:
        if inp.entropy is None:
            raise ValueError("entropy_coef > 0 needs LossInputs.entropy")
        ent = agg_loss(inp.entropy, mask, cfg.loss_agg, cfg.loss_agg_norm)
        loss = loss - cfg.entropy_coef * ent
        metrics["entropy"] = ent.detach()
    return loss, metrics
