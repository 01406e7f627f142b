"""Episodes into the learner's tensors: ``build_batch``'s layout (rlvr.train.batch) for token-in/
token-out trajectories (rlvr.envs.trajectory) of any number of turns.

Each row is an episode's ``token_ids()``, right-padded; per-token tensors are in target alignment
([B, T], T = L - 1, column t describes token t + 1; see rlvr.train.learner). The response mask is
the trajectory's loss mask: 1 on model tokens only, so environment tokens inside the response and
padding carry no loss and no gradient, and an outcome advantage broadcast over the mask (grpo,
dr_grpo, rloo) lands on model tokens only. ``engine_logp`` is 0 off model tokens, ``versions`` (the policy
version that sampled each token, from its model segment) -1 off them. The episodes of
one group are adjacent rows sharing ``group_ids`` and start with the same prompt (``prompt_lens``),
so the shared-prefix forward applies to the common prompt as it does to one-turn groups.

A group of one-turn trajectories (``rlvr.envs.trajectory.one_turn``) packs to exactly what
``build_batch`` packs for the same completions (a test checks every tensor for equality).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rlvr.algorithms import AdvantageInputs, AlgorithmConfig, drop_thin_groups, overlong_mask, soft_overlong_penalty
from rlvr.envs.trajectory import TRUNCATED, Trajectory
from rlvr.train.learner import RLBatch
from rlvr.train.staleness import stale_samples


def build_episode_batch(groups: Sequence[Sequence[Trajectory]], rewards: Sequence[Sequence[float]] | Tensor,
                        pad_id: int, algo: AlgorithmConfig, max_tokens: int,
                        valid: Tensor | None = None, lead: Tensor | None = None, learner_version: int | None = None,
                        max_staleness: int | None = None) -> tuple[RLBatch, AdvantageInputs]:
    """Pack groups of finished episodes into right-padded tensors in target alignment, with DAPO's
    overlong shaping when configured; advantages are left at 0 for the caller.

    ``rewards``: one per episode, per group (or a flat [B] tensor in the same order). DAPO's soft
    overlong penalty reads an episode's model tokens against ``max_tokens``; its overlong filter
    masks an episode whose finish reason says it was cut (``length``, ``max_tokens``, ``context``).
    An ``env_error`` episode carries no loss (mask 0) and is kept out of its group's baseline
    (``AdvantageInputs.valid``): it was not the policy's doing; a group left with fewer than two
    episodes is dropped the same way (``drop_thin_groups``). ``valid``: [B] bool, episodes whose score may
    be trained on (``ScoredGroup.valid``; default all), and'ed with that rule. ``lead``: [B] bool, the rows
    that count in their group's statistics when a sample spans several rows (rlvr.train.batch); default all.
    ``learner_version`` and ``max_staleness`` (both or neither): a sample with a token sampled more than
    ``max_staleness`` versions before ``learner_version`` is kept out the same way (rlvr.train.staleness)."""
    trajs = [t for g in groups for t in g]
    if not trajs:
        raise ValueError("build_episode_batch: no episodes")
    running = [i for i, t in enumerate(trajs) if not t.done]
    if running:
        raise ValueError(f"build_episode_batch: episode {running[0]} has not finished")
    seqs = [t.token_ids() for t in trajs]
    B, L = len(seqs), max(map(len, seqs))
    if L < 2:
        raise ValueError("build_episode_batch: every episode is a single token; nothing to predict")
    # right-padded rows, each tensor built once from lists (one tensor per row was most of a large step's
    # packing time); targets: tokens 1..len-1, in columns 0..len-2
    ids = torch.tensor([seq + [pad_id] * (L - len(seq)) for seq in seqs], dtype=torch.long)
    attn = torch.tensor([[1] * len(seq) + [0] * (L - len(seq)) for seq in seqs], dtype=torch.long)
    mask = torch.tensor([t.loss_mask()[1:] + [0] * (L - len(seq)) for t, seq in zip(trajs, seqs)],
                        dtype=torch.float32)
    elp = torch.tensor([t.engine_logprobs()[1:] + [0.0] * (L - len(seq)) for t, seq in zip(trajs, seqs)],
                       dtype=torch.float32)
    versions = torch.tensor([t.versions()[1:] + [-1] * (L - len(seq)) for t, seq in zip(trajs, seqs)],
                            dtype=torch.long)
    group_ids = torch.tensor([g for g, grp in enumerate(groups) for _ in grp])
    prompt_lens = torch.tensor([len(t.prompt_ids) for t in trajs])
    if isinstance(rewards, Tensor):
        rewards = rewards.to(torch.float32).flatten()
    else:
        rewards = torch.cat([torch.tensor(list(r), dtype=torch.float32) for r in rewards])  # [B]
    if len(rewards) != B:
        raise ValueError(f"build_episode_batch: {len(rewards)} rewards for {B} episodes")
    if algo.overlong_buffer_frac > 0:  # DAPO soft overlong punishment, after the verifier's reward
        lengths = torch.tensor([t.model_tokens() for t in trajs])
        rewards = rewards + soft_overlong_penalty(lengths, max_tokens, round(algo.overlong_buffer_frac * max_tokens),
                                                  algo.overlong_penalty_factor)
    if algo.overlong_filter:  # DAPO overlong filtering: cut episodes carry no loss
        mask = mask * overlong_mask([t.finish_reason in TRUNCATED for t in trajs])[:, None]
    # an environment that raised is not the policy's doing: out of the loss and out of the baseline
    ok = torch.tensor([t.finish_reason != "env_error" for t in trajs])
    if (learner_version is None) != (max_staleness is None):
        raise ValueError("build_episode_batch: learner_version and max_staleness go together (the staleness guard)")
    if learner_version is not None:  # too old to train on: out of the loss and out of the baseline
        ok = ok & ~stale_samples(versions, learner_version, max_staleness, lead)
    valid = drop_thin_groups(ok if valid is None else ok & valid.to(torch.bool), group_ids, lead)
    if not valid.all():
        mask = mask * valid.to(mask.dtype)[:, None]
    batch = RLBatch(ids, attn, mask, torch.zeros_like(mask), elp, prompt_lens, group_ids, versions)
    return batch, AdvantageInputs(rewards, group_ids, mask, valid=valid, lead=lead)
