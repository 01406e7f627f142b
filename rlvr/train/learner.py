"""The policy learner: tensors in, one optimiser pass out. It knows nothing of text,
rewards or engines: advantages arrive precomputed.

All per-token tensors are in *target alignment*: shape [B, T] with T = L - 1, where
column t describes token ``input_ids[:, t + 1]`` predicted from the prefix up to t. A row is
its prompt (``prompt_lens[i]`` tokens) followed by its completion, so completion targets are
the columns ``prompt_lens[i] - 1`` onwards.

Shared-prefix forward (GRPO's n completions of one prompt): a micro-batch of whole groups runs
each group's prompt once, repeats its KV cache per completion and runs the completions on it;
the gradient flows back through the cached keys and values. Same log-probs and update as the
flat forward over every [prompt + completion] row, without recomputing the prompt n times.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache

from rlvr.algorithms import (
    POLICY_LOSSES,
    AlgorithmConfig,
    LossInputs,
    importance_weights,
    masked_mean,
    policy_objective,
)
from rlvr.config import OptimConfig, TrainLoopConfig
from rlvr.train.optimised import Optimised
from rlvr.train.parallel import SINGLE, Single
from rlvr.vocab_logprobs import selected_logp_and_entropy


@dataclass
class RLBatch:
    input_ids: Tensor  # [B, L] prompt + completion, right-padded
    attention_mask: Tensor  # [B, L]
    response_mask: Tensor  # [B, T] 1.0 where the target token was sampled by the policy
    advantages: Tensor  # [B, T]
    engine_logp: Tensor  # [B, T] log-probs the rollout engine reported (0 off-response)
    # Optional group structure (enables the shared-prefix forward; None: flat forward only)
    prompt_lens: Tensor | None = None  # [B] long: input_ids[i, :prompt_lens[i]] is row i's prompt
    group_ids: Tensor | None = None  # [B] long: completions of one prompt share an id, in adjacent rows
    # [B, T] long: the policy version (learner updates in the weights) that sampled each target token, -1 off
    # model tokens; with in-flight weight updates one row can mix versions. None: not recorded
    versions: Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def _rows(self, index) -> RLBatch:
        return RLBatch(*(None if t is None else t[index] for t in (getattr(self, f.name) for f in fields(self))))

    def slice(self, start: int, stop: int) -> RLBatch:
        return self._rows(slice(start, stop))

    def select(self, rows: Tensor) -> RLBatch:
        return self._rows(rows)

    def to(self, device) -> RLBatch:
        return RLBatch(*(None if t is None else t.to(device) for t in (getattr(self, f.name) for f in fields(self))))

    def trimmed(self) -> RLBatch:
        """Columns past the longest row's last real token dropped (rows are right-padded)."""
        width = max(2, int(self.attention_mask.sum(1).max()))
        return RLBatch(self.input_ids[:, :width], self.attention_mask[:, :width], self.response_mask[:, : width - 1],
                       self.advantages[:, : width - 1], self.engine_logp[:, : width - 1], self.prompt_lens,
                       self.group_ids, None if self.versions is None else self.versions[:, : width - 1])


def group_spans(batch: RLBatch) -> list[tuple[int, int]] | None:
    """Row ranges [start, stop) of the batch's groups, or None when the batch has no usable group
    structure: no ``prompt_lens``/``group_ids``, a group split over non-adjacent rows, rows of a
    group with different prompts, or an empty prompt."""
    if batch.prompt_lens is None or batch.group_ids is None:
        return None
    g, P = batch.group_ids, batch.prompt_lens  # [B] each
    starts = [0] + (torch.nonzero(g[1:] != g[:-1]).flatten() + 1).tolist()
    if len(starts) != len(torch.unique(g)):
        return None
    stops = starts[1:] + [len(batch)]
    first = torch.repeat_interleave(torch.tensor(starts), torch.tensor(stops) - torch.tensor(starts))  # [B]
    past_prompt = torch.arange(batch.input_ids.shape[1]) >= P[:, None]  # [B, L]
    same_prompt = ((batch.input_ids == batch.input_ids[first]) | past_prompt).all()
    if not same_prompt or not bool((P == P[first]).all()) or bool((P < 1).any()) \
            or bool((P > batch.attention_mask.sum(1)).any()):
        return None
    return list(zip(starts, stops))


def token_logp_and_entropy(model, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """log p(input_ids[:, t+1] | prefix) and the entropy of that distribution, both [B, T]."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # [B, L, V]
    # every position (the last one's target is a dummy, dropped): a contiguous [B * L, V] view, no copy
    targets = F.pad(input_ids[:, 1:], (0, 1))  # [B, L]
    logp, entropy = selected_logp_and_entropy(logits, targets)  # [B, L] each, float32, chunked over positions
    return logp[:, :-1], entropy[:, :-1]


def shared_prefix_logp_and_entropy(model, input_ids: Tensor, attention_mask: Tensor, prompt_lens: Tensor,
                                   group_ids: Tensor, completion_chunks: int | None = None) -> tuple[Tensor, Tensor]:
    """``token_logp_and_entropy`` on the completion targets, each group's prompt run once.

    Rows of a group are adjacent and share their prompt (see ``group_spans``). The prompts run
    right-padded with ``use_cache``; its keys and values are gathered out to one copy per row (a
    differentiable gather, so the prompt's weights get the completions' gradient) and the
    right-padded completions run on them at positions ``prompt_len + t``, attending over
    prompt mask ++ completion mask. The first completion token is scored by the prompt pass's
    logits at its last real position. Completion lengths vary a lot inside a group, so the
    completions run in ``completion_chunks`` passes of similar length, each cut to its own
    width (default: chunks of >= 8 rows, at most 4; the prompt graph is shared by all). Returns [B, T] in target alignment, equal to the flat
    forward on completion targets (columns >= prompt_len - 1) and 0 on prompt targets and padding.
    """
    B, L = input_ids.shape
    dev = input_ids.device
    new = torch.ones(B, dtype=torch.bool, device=dev)
    new[1:] = group_ids[1:] != group_ids[:-1]
    row_group = new.long().cumsum(0) - 1  # [B] index of the row's group in this batch
    first = new.nonzero().squeeze(1)  # [G] each group's first row
    P = prompt_lens.to(dev)  # [B]
    C = attention_mask.sum(1) - P  # [B] completion lengths
    Pg = P[first]  # [G]
    Pm, Cm = int(Pg.max()), max(1, int(C.max()))
    prompt_mask = (torch.arange(Pm, device=dev) < Pg[:, None]).long()  # [G, Pm]
    keep = torch.unique(Pg - 1)  # prompt positions whose logits are needed (sorted)
    out = model(input_ids=input_ids[first, :Pm], attention_mask=prompt_mask, use_cache=True, logits_to_keep=keep)
    last = out.logits[torch.arange(len(first), device=dev), torch.searchsorted(keep, Pg - 1)]  # [G, V]
    t = torch.arange(Cm, device=dev)
    logp_c = torch.zeros(B, Cm, device=dev)  # [B, Cm] column t: completion token t
    ent_c = torch.zeros(B, Cm, device=dev)
    by_len = torch.argsort(C, descending=True, stable=True)
    if completion_chunks is None:
        completion_chunks = min(4, max(1, B // 8))
    for rows in by_len.tensor_split(completion_chunks):  # rows of similar completion length, cut to their width
        if len(rows) == 0:
            continue
        c, w = C[rows], max(1, int(C[rows].max()))
        cache = DynamicCache([(layer.keys[row_group[rows]], layer.values[row_group[rows]])
                              for layer in out.past_key_values.layers], config=model.config)
        comp_ids = input_ids[rows].gather(1, (P[rows, None] + t[:w]).clamp(max=L - 1))  # [r, w]
        mask = torch.cat([prompt_mask[row_group[rows]], (t[:w] < c[:, None]).long()], 1)  # [r, Pm + w]
        comp_logits = model(input_ids=comp_ids, attention_mask=mask, position_ids=P[rows, None] + t[:w],
                            past_key_values=cache, use_cache=True).logits
        logits = torch.cat([last[row_group[rows], None], comp_logits[:, :-1]], 1)  # [r, w, V]
        logp, entropy = selected_logp_and_entropy(logits, comp_ids)  # [r, w] each, float32
        logp_c = logp_c.index_copy(0, rows, F.pad(logp, (0, Cm - w)))
        ent_c = ent_c.index_copy(0, rows, F.pad(entropy, (0, Cm - w)))
    tok = torch.arange(L - 1, device=dev) - (P[:, None] - 1)  # [B, T] completion token index of target column
    valid = (tok >= 0) & (tok < C[:, None])
    idx = tok.clamp(0, Cm - 1)
    return (torch.where(valid, logp_c.gather(1, idx), 0.0), torch.where(valid, ent_c.gather(1, idx), 0.0))


class Learner(Optimised):
    """AdamW on the policy with micro-batching, gradient accumulation and clipping, built from the
    run's ``algorithm``, ``optim`` and ``train`` sections.

    ``train.shared_prefix``: when the batch carries group structure, micro-batches hold whole groups and
    run the shared-prefix forward (see the module docstring); otherwise the flat forward.

    ``train.dtype="bfloat16"``: forward and backward under bf16 autocast; the parameters (master
    weights), their gradients and AdamW's moments stay float32, and log-softmax runs on float32
    logits. ``train.gradient_checkpointing`` recomputes layer activations in the backward (flat forward
    only: a checkpointed layer keeps no KV cache). ``train.max_seq_len`` refuses longer rows.

    ``plan`` (rlvr.train.parallel): one process, or one of M data-parallel ranks (DDP, FSDP); see ``step``."""

    def __init__(self, model, algo: AlgorithmConfig, optim: OptimConfig | None = None,
                 train: TrainLoopConfig | None = None, ref_model=None, plan: Single = SINGLE):
        optim, train = optim or OptimConfig(), train or TrainLoopConfig()
        if algo.policy_loss not in POLICY_LOSSES:
            raise KeyError(f"algorithm.policy_loss: unknown {algo.policy_loss!r}; known: {sorted(POLICY_LOSSES)}")
        if algo.needs_reference and ref_model is None:
            raise ValueError("algorithm.kl_coef > 0 needs a reference model")
        if train.gradient_checkpointing:  # before the plan wraps the model
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        super().__init__(model, optim.lr, optim, optim.warmup_steps, plan)
        # frozen, but as large as the policy: sharded too under FSDP
        self.ref_model = None if ref_model is None else plan.prepare(ref_model)
        self.algo, self.micro, self.updates = algo, train.micro_batch_size, train.updates_per_batch
        self.dtype, self.max_seq_len = train.dtype, train.max_seq_len
        self.shared_prefix = train.shared_prefix and not train.gradient_checkpointing
        if plan.sharded and self.shared_prefix:
            raise ValueError("cluster.learner_sharding=fsdp runs the flat forward (the config sets train.shared_prefix "
                             "to false); this learner was asked for the shared-prefix forward")

    def state_dict(self) -> dict[str, Any]:
        """``Optimised.state_dict`` and the reference model (None without one): what a checkpoint holds
        of the policy, and what a data-parallel rank is sent to equal rank 0."""
        return {**super().state_dict(),
                "reference": None if self.ref_model is None else self.parallel.model_state(self.ref_model)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.ref_model is not None:
            self.parallel.load_model_state(self.ref_model, state["reference"])

    def weights(self) -> list[tuple[str, Tensor]]:
        """(name, tensor) of the policy as an engine loads it (LoRA merged), read only (under FSDP a
        gather every rank joins; rank 0 receives the tensors, the others an empty list)."""
        return self.parallel.weights(self.model)

    def autocast(self):
        """bf16 autocast on the model's device for ``dtype="bfloat16"``, else nothing."""
        if self.dtype == "float32":
            return contextlib.nullcontext()
        device = next(self.model.parameters()).device.type
        return torch.autocast(device, dtype=torch.bfloat16)

    def plan(self, batch: RLBatch, by_length: bool) -> tuple[Tensor, list[tuple[int, int]], bool]:
        """Row order, micro-batch row ranges in that order, and whether they run shared-prefix.

        ``by_length``: longest rows (flat) or groups with the longest row (shared) first, so a
        micro-batch cut to its own width carries little padding. Shared-prefix micro-batches pack
        whole groups up to ``micro_batch_size`` rows (a larger group is a micro-batch of its own)."""
        B = len(batch)
        groups = group_spans(batch) if self.shared_prefix else None
        if groups is None or max(b - a for a, b in groups) < 2:  # nothing shared: the flat forward is cheaper
            lengths = batch.attention_mask.sum(1)
            order = torch.argsort(lengths, descending=True, stable=True) if by_length else torch.arange(B)
            return order, [(s, min(s + self.micro, B)) for s in range(0, B, self.micro)], False
        if by_length:
            longest = torch.stack([batch.attention_mask[a:b].sum(1).max() for a, b in groups])  # [G]
            groups = [groups[i] for i in torch.argsort(longest, descending=True, stable=True).tolist()]
        order = torch.cat([torch.arange(a, b) for a, b in groups])
        bounds, start, rows = [], 0, 0
        for a, b in groups:
            if rows and rows + (b - a) > self.micro:
                bounds.append((start, start + rows))
                start, rows = start + rows, 0
            rows += b - a
        bounds.append((start, start + rows))
        return order, bounds, True

    def lockstep(self, bounds: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """``bounds`` padded with repeats of its last micro-batch up to the ranks' largest count (under
        FSDP each forward all-gathers weights, so a rank with fewer would leave the others waiting);
        the caller gives a repeat weight 0. Unchanged by the other plans."""
        most = self.parallel.lockstep(len(bounds))
        return bounds + [bounds[-1]] * (most - len(bounds))

    @staticmethod
    def _forward(model, mb: RLBatch, shared: bool) -> tuple[Tensor, Tensor]:
        if shared:
            return shared_prefix_logp_and_entropy(model, mb.input_ids, mb.attention_mask, mb.prompt_lens, mb.group_ids)
        return token_logp_and_entropy(model, mb.input_ids, mb.attention_mask)

    def _micro_loss(self, mb: RLBatch, old_logp: Tensor | None, weight: float, shared: bool) -> tuple[Tensor, dict]:
        with self.autocast():
            logp, entropy = self._forward(self.model, mb, shared)  # float32: the forward upcasts the logits
        old = logp.detach() if old_logp is None else old_logp  # first pass: on-policy, ratio == 1
        ref_logp = None
        if self.algo.loss_kl_coef > 0:  # KL in the reward needs no reference forward here
            with torch.no_grad(), self.autocast():
                ref_logp, _ = self._forward(self.ref_model, mb, shared)
        is_w, is_stats = None, {}
        if self.algo.is_cap is not None:  # each token against the engine's log-prob of it: other numbers, older weights
            is_w, is_stats = importance_weights(old, mb.engine_logp, mb.response_mask, self.algo.is_mode,
                                                self.algo.is_cap)
        inp = LossInputs(logp, old, mb.advantages, mb.response_mask, ref_logp=ref_logp, entropy=entropy, is_weights=is_w)
        loss, extra = policy_objective(inp, self.algo)
        extra = {**extra, **{f"is/{k}": v for k, v in is_stats.items()}}
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
        policy, ref = self._logp(batch, (self.model, self.ref_model))  # [B, T] each
        return policy, ref

    @torch.no_grad()
    def policy_logp(self, batch: RLBatch) -> Tensor:
        """Log-probs [B, T] of the batch's tokens under the current policy, without gradient (0 off-response):
        what the engine's log-probs are checked against before the first step (rlvr.parity)."""
        return self._logp(batch, (self.model,))[0]

    def _logp(self, batch: RLBatch, models: tuple) -> list[Tensor]:
        self.model.eval()
        device, home = next(self.model.parameters()).device, batch.input_ids.device
        batch = batch.to(device)
        order, bounds, shared = self.plan(batch, by_length=False)
        in_order = batch.select(order)
        runs = self.lockstep(bounds)  # FSDP: as many forwards as every other rank (repeats discarded)
        out = []
        for model in models:
            with self.autocast():
                logp = torch.cat([self._forward(model, in_order.slice(a, b), shared)[0] for a, b in runs][:len(bounds)])
            logp[order] = logp.clone()  # back to the batch's row order
            out.append((logp * batch.response_mask).to(home))
        return out

    def check_lengths(self, batch: RLBatch) -> None:
        """``train.max_seq_len`` against the batch's longest row (a learner group checks the whole
        batch before it shards it, so no rank fails alone while the others wait in a collective)."""
        if self.max_seq_len is not None:
            longest = int(batch.attention_mask.sum(1).max())
            if longest > self.max_seq_len:
                raise ValueError(f"train.max_seq_len: a row of {longest} tokens (prompt + completion) is longer than "
                                 f"train.max_seq_len={self.max_seq_len}")

    def step(self, batch: RLBatch) -> dict[str, float]:
        """One or more optimiser passes over ``batch``; returns averaged metrics.

        Micro-batches hold rows (or, shared-prefix, whole groups) of similar length, sorted by
        length, and are cut to their own longest row, so padding costs little compute. Only Dr.GRPO's aggregation without a fixed
        ``loss_agg_norm`` depends on the padded width; it keeps the full width.

        With a data-parallel plan the batch is this rank's shard (whole groups, the full batch's
        padded width): the token and sequence counts that weigh micro-batches are summed over the
        ranks, and so are the gradients before clipping, which makes the update the one-process
        update on the whole batch up to float summation order. Metrics are this rank's."""
        self.model.train()
        batch = batch.to(next(self.model.parameters()).device)  # a GPU learner: the batch is built on CPU
        self.check_lengths(batch)
        mask = batch.response_mask
        local_tokens = mask.sum().clamp(min=1)  # this rank's: its metrics are means over its own rows
        tokens, seqs = self.parallel.batch_totals(mask)  # a rank weighs its micro-batches by the global batch
        width_free = not (self.algo.loss_agg == "seq-mean-token-sum-norm" and self.algo.loss_agg_norm is None)
        order, bounds, shared = self.plan(batch, by_length=width_free)
        by_len = batch.select(order)
        old_logp = torch.zeros_like(batch.engine_logp)  # [B, T] in by_len order
        sums: dict[str, float] = {}
        n_micro = 0
        runs = self.lockstep(bounds)  # FSDP: repeats past len(bounds) run at weight 0, only to match the ranks
        for update in range(self.updates):
            for i, (start, stop) in enumerate(runs):
                mb = by_len.slice(start, stop)
                if width_free:
                    mb = mb.trimmed()
                T = mb.response_mask.shape[1]
                share = (mb.response_mask.sum() / tokens) if self.algo.loss_agg == "token-mean" else len(mb) / seqs
                old = None if update == 0 else old_logp[start:stop, :T]
                logp, stats = self._micro_loss(mb, old, float(share) if i < len(bounds) else 0.0, shared)
                if i >= len(bounds):
                    continue
                if update == 0:
                    old_logp[start:stop, :T] = logp
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_micro += 1
            grad_norm = self.apply_gradients()  # summed over the ranks first: every rank takes the same step
        metrics = {k: v / n_micro for k, v in sums.items()}
        old_logp[order] = old_logp.clone()  # back to the batch's row order
        log_ratio = old_logp - batch.engine_logp  # learner vs engine, same weights  [B, T]
        diff = log_ratio.abs() * mask
        # importance ratio learner/engine per token: its spread is how off-policy the batch is
        ratio = torch.where(mask > 0, log_ratio.exp(), 1.0)
        # k3 estimate of KL(engine || learner) on the sampled tokens: r - 1 - log r, r = p_learner / p_engine
        mismatch_kl = float(masked_mean(ratio - 1 - log_ratio * mask, mask))
        metrics.update(
            grad_norm=float(grad_norm),
            lr=self.sched.get_last_lr()[0],
            logp_diff_mean=float(diff.sum() / local_tokens),
            logp_diff_max=float(diff.max()),
            engine_ratio_min=float(ratio.min()),
            engine_ratio_max=float(ratio.max()),
            mismatch_kl=mismatch_kl,
        )
        return metrics
