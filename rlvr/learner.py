"""The policy learner: tensors in, one optimiser pass out. It knows nothing of text,
rewards or engines: advantages arrive precomputed.

All per-token tensors are in *target alignment*: shape [B, T] with T = L - 1, where
column t describes token ``input_ids[:, t + 1]`` predicted from the prefix up to t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlvr.algorithms import POLICY_LOSSES, AlgorithmConfig, LossInputs, masked_mean, policy_objective, truncated_is_weights


@dataclass
class RLBatch:
    input_ids: Tensor  # [B, L] prompt + completion, right-padded
    attention_mask: Tensor  # [B, L]
    response_mask: Tensor  # [B, T] 1.0 where the target token was sampled by the policy
    advantages: Tensor  # [B, T]
    engine_logp: Tensor  # [B, T] log-probs the rollout engine reported (0 off-response)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def slice(self, start: int, stop: int) -> RLBatch:
        return RLBatch(*(t[start:stop] for t in (self.input_ids, self.attention_mask, self.response_mask,
                                                 self.advantages, self.engine_logp)))

    def select(self, rows: Tensor) -> RLBatch:
        return RLBatch(*(t[rows] for t in (self.input_ids, self.attention_mask, self.response_mask,
                                           self.advantages, self.engine_logp)))

    def trimmed(self) -> RLBatch:
        """Columns past the longest row's last real token dropped (rows are right-padded)."""
        width = max(2, int(self.attention_mask.sum(1).max()))
        return RLBatch(self.input_ids[:, :width], self.attention_mask[:, :width], self.response_mask[:, : width - 1],
                       self.advantages[:, : width - 1], self.engine_logp[:, : width - 1])


def token_logp_and_entropy(model, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """log p(input_ids[:, t+1] | prefix) and the entropy of that distribution, both [B, T]."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()  # [B, T, V]
    logsm = logits.log_softmax(-1)
    logp = logsm.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # [B, T]
    entropy = -(logsm.exp() * logsm).sum(-1)  # [B, T]
    return logp, entropy


class Learner:
    """AdamW on the policy with micro-batching, gradient accumulation and clipping."""

    def __init__(self, model, algo: AlgorithmConfig, lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.99), grad_clip: float = 1.0, warmup_steps: int = 0,
                 micro_batch_size: int = 32, updates_per_batch: int = 1, ref_model=None):
        if algo.policy_loss not in POLICY_LOSSES:
            raise KeyError(f"algorithm.policy_loss: unknown {algo.policy_loss!r}; known: {sorted(POLICY_LOSSES)}")
        if algo.needs_reference and ref_model is None:
            raise ValueError("algorithm.kl_coef > 0 needs a reference model")
        self.model, self.ref_model, self.algo = model, ref_model, algo
        # fused: one kernel per step for all tensors (the per-tensor loop costs ~15% of a tiny model's step)
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas, fused=True)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))
        self.grad_clip, self.micro, self.updates = grad_clip, micro_batch_size, updates_per_batch

    def _micro_loss(self, mb: RLBatch, old_logp: Tensor | None, weight: float) -> tuple[Tensor, dict]:
        logp, entropy = token_logp_and_entropy(self.model, mb.input_ids, mb.attention_mask)
        old = logp.detach() if old_logp is None else old_logp  # first pass: on-policy, ratio == 1
        ref_logp = None
        if self.algo.loss_kl_coef > 0:  # KL in the reward needs no reference forward here
            with torch.no_grad():
                ref_logp, _ = token_logp_and_entropy(self.ref_model, mb.input_ids, mb.attention_mask)
        is_w = None
        if self.algo.is_cap is not None:  # correct for the engine sampling from slightly different numbers
            is_w = truncated_is_weights(old, mb.engine_logp, self.algo.is_cap)
        inp = LossInputs(logp, old, mb.advantages, mb.response_mask, ref_logp=ref_logp, entropy=entropy, is_weights=is_w)
        loss, extra = policy_objective(inp, self.algo)
        (loss * weight).backward()
        stats = {k: float(v) for k, v in extra.items()}
        stats.update(loss=float(loss.detach()), entropy=float(masked_mean(entropy.detach(), mb.response_mask)))
        return logp.detach(), stats

    @torch.no_grad()
    def policy_and_reference_logp(self, batch: RLBatch) -> tuple[Tensor, Tensor]:
        """Log-probs [B, T] of the batch's tokens under the current policy and the reference,
        without gradient: the inputs of a KL penalty in the reward (``kl_reward_penalty``).
        One extra forward of each model, spent only when that penalty is on."""
        if self.ref_model is None:
            raise ValueError("KL in the reward needs a reference model")
        self.model.eval()
        out = []
        for model in (self.model, self.ref_model):
            chunks = [token_logp_and_entropy(model, mb.input_ids, mb.attention_mask)[0]
                      for mb in (batch.slice(s, s + self.micro) for s in range(0, len(batch), self.micro))]
            out.append(torch.cat(chunks) * batch.response_mask)
        return out[0], out[1]

    def step(self, batch: RLBatch) -> dict[str, float]:
        """One or more optimiser passes over ``batch``; returns averaged metrics.

        Micro-batches hold rows of similar length (sorted by length) and are cut to their own
        longest row, so padding costs little compute. Only Dr.GRPO's aggregation without a fixed
        ``loss_agg_norm`` depends on the padded width; it keeps the full width."""
        self.model.train()
        mask = batch.response_mask
        tokens, seqs = mask.sum().clamp(min=1), len(batch)
        width_free = not (self.algo.loss_agg == "seq-mean-token-sum-norm" and self.algo.loss_agg_norm is None)
        order = torch.argsort(batch.attention_mask.sum(1), descending=True, stable=True) if width_free \
            else torch.arange(seqs)
        by_len = batch.select(order)
        old_logp = torch.zeros_like(batch.engine_logp)  # [B, T] in by_len order
        sums: dict[str, float] = {}
        n_micro = 0
        for update in range(self.updates):
            for start in range(0, seqs, self.micro):
                mb = by_len.slice(start, start + self.micro)
                if width_free:
                    mb = mb.trimmed()
                T = mb.response_mask.shape[1]
                share = (mb.response_mask.sum() / tokens) if self.algo.loss_agg == "token-mean" else len(mb) / seqs
                old = None if update == 0 else old_logp[start : start + self.micro, :T]
                logp, stats = self._micro_loss(mb, old, float(share))
                if update == 0:
                    old_logp[start : start + self.micro, :T] = logp
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_micro += 1
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
        metrics = {k: v / n_micro for k, v in sums.items()}
        old_logp[order] = old_logp.clone()  # back to the batch's row order
        log_ratio = old_logp - batch.engine_logp  # learner vs engine, same weights  [B, T]
        diff = log_ratio.abs() * mask
        # importance ratio learner/engine per token: its spread is how off-policy the batch is
        ratio = torch.where(mask > 0, log_ratio.exp(), 1.0)
        metrics.update(
            grad_norm=float(grad_norm),
            lr=self.sched.get_last_lr()[0],
            logp_diff_mean=float(diff.sum() / tokens),
            logp_diff_max=float(diff.max()),
            engine_ratio_min=float(ratio.min()),
            engine_ratio_max=float(ratio.max()),
        )
        return metrics
