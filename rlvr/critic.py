"""PPO's critic in training: a value model with its own optimiser.

The loop holds a ``Critic`` only when ``algorithm.needs_critic`` (the ``gae`` estimator). Per
step it is asked twice: ``values(batch)`` before the advantages (V(s_t) at sampling time, the
"old" values of GAE and of value clipping) and ``step(batch, adv_inputs)`` after the policy's
update (regress V on the GAE returns with the clipped value loss).

Like ``rlvr.learner`` it knows tensors only; per-token tensors are in target alignment [B, T]:
column t is the state *before* response token ``input_ids[:, t + 1]`` is emitted, which is the
critic's output at position t (``CriticModel`` outputs [B, L]; we drop the last position).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.algorithms import (
    AdvantageInputs,
    AlgorithmConfig,
    CriticModel,
    gae_advantages_and_returns,
    masked_mean,
    value_loss,
)
from rlvr.learner import RLBatch


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var(R - V) / Var(R) over masked tokens: 1 = perfect critic, 0 = no better than a constant."""
    var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    resid = returns - values
    var_resid = masked_mean((resid - masked_mean(resid, mask)) ** 2, mask)
    return float(1 - var_resid / var_r) if var_r > 0 else 0.0


class Critic:
    """AdamW at ``algo.critic_lr`` on a ``CriticModel``, micro-batched like the learner.

    ``process_group`` (torch.distributed): this critic is one data-parallel rank, stepping on its
    shard with the global token count and gradients summed over ranks (as ``Learner.step``)."""

    def __init__(self, model: CriticModel, algo: AlgorithmConfig, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, grad_clip: float = 1.0, micro_batch_size: int = 32,
                 updates_per_batch: int = 1, process_group=None):
        self.model, self.algo = model, algo
        self.opt = torch.optim.AdamW(model.parameters(), lr=algo.critic_lr, betas=betas, weight_decay=weight_decay,
                                     fused=True)
        self.grad_clip, self.micro, self.updates = grad_clip, micro_batch_size, updates_per_batch
        self.process_group = process_group

    @classmethod
    def for_policy(cls, policy, algo: AlgorithmConfig, **kwargs) -> Critic:
        """``algo.critic_model`` (it must share the policy's tokenizer) or a copy of the policy's backbone."""
        if algo.critic_model is not None:
            model = CriticModel.from_pretrained(algo.critic_model, dtype=torch.float32)
        else:
            model = CriticModel.from_policy(policy)
        return cls(model.float(), algo, **kwargs)

    def _micro_batches(self, batch: RLBatch):
        for start in range(0, len(batch), self.micro):
            yield start, batch.slice(start, start + self.micro)

    @torch.no_grad()
    def values(self, batch: RLBatch) -> Tensor:
        """V(s_t) [B, T] under the current critic, 0 off the response."""
        self.model.eval()
        dev = next(self.model.parameters()).device
        out = [self.model(mb.input_ids.to(dev), mb.attention_mask.to(dev))[:, :-1].to(batch.input_ids.device)
               for _, mb in self._micro_batches(batch)]
        return torch.cat(out) * batch.response_mask

    def step(self, batch: RLBatch, inp: AdvantageInputs) -> dict[str, float]:
        """Regress on the GAE returns of ``inp`` (whose ``values`` came from ``values(batch)``)."""
        self.model.train()
        old_values, mask = inp.values, inp.mask  # [B, T]
        _, returns = gae_advantages_and_returns(inp, self.algo)  # [B, T], no gradient
        dev = next(self.model.parameters()).device
        old_values, returns, mask = old_values.to(dev), returns.to(dev), mask.to(dev)  # a GPU critic
        batch = batch.to(dev)
        tokens = mask.sum().clamp(min=1)
        local_tokens = tokens  # this rank's: its metrics are means over its own tokens
        if self.process_group is not None:  # token-mean over the global batch
            from rlvr.cluster.distributed import all_reduce_sum

            tokens = all_reduce_sum(mask.sum(), self.process_group).clamp(min=1)
        sums = {"value_loss": 0.0, "value_clip_frac": 0.0}
        for _ in range(self.updates):
            for start, mb in self._micro_batches(batch):
                sl = slice(start, start + self.micro)
                values = self.model(mb.input_ids, mb.attention_mask)[:, :-1]  # [b, T]
                loss, m = value_loss(values, old_values[sl], returns[sl], mask[sl], self.algo.value_clip_eps)
                share = float(mask[sl].sum() / tokens)  # token-mean over the whole batch
                (loss * share).backward()
                seen = float(mask[sl].sum() / local_tokens)  # == share in one process
                sums["value_loss"] += float(m["vf_loss"]) * seen / self.updates
                sums["value_clip_frac"] += float(m["vf_clip_frac"]) * seen / self.updates
            if self.process_group is not None:
                from rlvr.cluster.distributed import all_reduce_gradients

                all_reduce_gradients(self.model.parameters(), self.process_group)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        metrics = dict(sums)
        metrics.update(
            value_mean=float(masked_mean(old_values, mask)),
            return_mean=float(masked_mean(returns, mask)),
            explained_variance=explained_variance(old_values, returns, mask),
            critic_grad_norm=float(grad_norm),
        )
        return metrics
