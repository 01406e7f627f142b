"""PPO's critic in training: a value model with its own optimiser.

The loop holds a ``Critic`` only when ``algorithm.needs_critic`` (the ``gae`` estimator). Per
step it is asked twice: ``values(batch)`` before the advantages (V(s_t) at sampling time, the
"old" values of GAE and of value clipping) and ``step(batch, adv_inputs)`` after the policy's
update (regress V on the GAE returns with the clipped value loss).

Like ``rlvr.train.learner`` it knows tensors only; per-token tensors are in target alignment [B, T]:
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
from rlvr.config import OptimConfig, TrainLoopConfig
from rlvr.train.learner import RLBatch
from rlvr.train.optimised import Optimised
from rlvr.train.parallel import SINGLE, Single


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var(R - V) / Var(R) over masked tokens: 1 = perfect critic, 0 = no better than a constant."""
    var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    resid = returns - values
    var_resid = masked_mean((resid - masked_mean(resid, mask)) ** 2, mask)
    return float(1 - var_resid / var_r) if var_r > 0 else 0.0


class Critic(Optimised):
    """AdamW at ``algorithm.critic_lr`` on a ``CriticModel``, micro-batched like the learner.

    ``plan`` (rlvr.train.parallel): under DDP this critic is one data-parallel rank, stepping on its
    shard with the global token count and gradients summed over ranks (as ``Learner.step``)."""

    def __init__(self, model: CriticModel, algo: AlgorithmConfig, optim: OptimConfig | None = None,
                 train: TrainLoopConfig | None = None, plan: Single = SINGLE):
        optim, train = optim or OptimConfig(), train or TrainLoopConfig()
        super().__init__(model, algo.critic_lr, optim, plan=plan)  # no warm-up: a constant rate
        self.algo, self.micro, self.updates = algo, train.micro_batch_size, train.updates_per_batch

    @classmethod
    def for_policy(cls, policy, algo: AlgorithmConfig, optim: OptimConfig | None = None,
                   train: TrainLoopConfig | None = None, plan: Single = SINGLE) -> Critic:
        """``algo.critic_model`` (it must share the policy's tokenizer) or a copy of the policy's backbone."""
        if algo.critic_model is not None:
            model = CriticModel.from_pretrained(algo.critic_model, dtype=torch.float32)
        else:
            model = CriticModel.from_policy(policy)
        return cls(model.float(), algo, optim, train, plan)

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
        local_tokens = mask.sum().clamp(min=1)  # this rank's: its metrics are means over its own tokens
        tokens = self.parallel.total(mask.sum()).clamp(min=1)  # token-mean over the global batch
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
            grad_norm = self.apply_gradients()
        metrics = dict(sums)
        metrics.update(
            value_mean=float(masked_mean(old_values, mask)),
            return_mean=float(masked_mean(returns, mask)),
            explained_variance=explained_variance(old_values, returns, mask),
            critic_grad_norm=float(grad_norm),
        )
        return metrics
