"""Scored groups into the learner's tensors: prompt + completion rows, right-padded, in target
alignment (see rlvr.train.learner), with the loss mask over the sampled tokens only, and none on a
sample kept out of training (``ScoredGroup.valid``: a check that failed for reasons not the policy's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rlvr.algorithms import AdvantageInputs, AlgorithmConfig, overlong_mask, soft_overlong_penalty
from rlvr.train.learner import RLBatch

if TYPE_CHECKING:
    from rlvr.pipeline import ScoredGroup


def build_batch(scored: list[ScoredGroup], pad_id: int, algo: AlgorithmConfig,
                max_tokens: int) -> tuple[RLBatch, AdvantageInputs]:
    """Pack groups into right-padded tensors in target alignment (see rlvr.train.learner), with
    DAPO's overlong shaping when configured; advantages are left at 0 for the caller. An invalid
    sample keeps its row (the batch's shape does not depend on failures) with an empty loss mask, and
    ``AdvantageInputs.valid`` keeps it out of its group's statistics."""
    seqs, spans, engine_lp = [], [], []
    for sg in scored:
        for comp in sg.group.completions:
            seqs.append(sg.group.prompt_ids + comp.token_ids)
            spans.append((len(sg.group.prompt_ids) - 1, len(comp.token_ids)))
            engine_lp.append(comp.logprobs)
    B, L = len(seqs), max(map(len, seqs))
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    mask = torch.zeros((B, L - 1))
    elp = torch.zeros((B, L - 1))
    for i, (seq, (start, n), lp) in enumerate(zip(seqs, spans, engine_lp)):
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        mask[i, start : start + n] = 1.0
        elp[i, start : start + n] = torch.tensor(lp)
    group_ids = torch.tensor([g for g, sg in enumerate(scored) for _ in sg.group.completions])
    prompt_lens = torch.tensor([len(sg.group.prompt_ids) for sg in scored for _ in sg.group.completions])
    rewards = torch.cat([sg.rewards for sg in scored])  # [B]
    comps = [c for sg in scored for c in sg.group.completions]
    if algo.overlong_buffer_frac > 0:  # DAPO soft overlong punishment, after the verifier's reward
        lengths = torch.tensor([len(c.token_ids) for c in comps])
        rewards = rewards + soft_overlong_penalty(lengths, max_tokens, round(algo.overlong_buffer_frac * max_tokens),
                                                  algo.overlong_penalty_factor)
    if algo.overlong_filter:  # DAPO overlong filtering: truncated completions carry no loss
        mask = mask * overlong_mask([c.finish_reason for c in comps])[:, None]
    valid = torch.cat([sg.valid for sg in scored])  # [B] bool
    if not valid.all():  # failed checks (not the policy's doing) carry no loss
        mask = mask * valid.to(mask.dtype)[:, None]
    batch = RLBatch(ids, attn, mask, torch.zeros_like(mask), elp, prompt_lens, group_ids)  # groups: shared-prefix forward
    return batch, AdvantageInputs(rewards, group_ids, mask, valid=valid)
