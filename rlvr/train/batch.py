"""Scored groups into the learner's tensors: each group's episodes (rlvr.envs.trajectory), right-padded,
in target alignment (see rlvr.train.learner), with the loss mask over the model's sampled tokens only,
and none on a sample kept out of training (``ScoredGroup.valid``: a check that failed for reasons not
the policy's).

One path for every run: a one-turn run's groups hold one-turn episodes, packed like any other
(``rlvr.train.episodes.build_episode_batch``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rlvr.algorithms import AdvantageInputs, AlgorithmConfig
from rlvr.envs.trajectory import Trajectory, one_turn
from rlvr.train.episodes import build_episode_batch
from rlvr.train.learner import RLBatch

if TYPE_CHECKING:
    from rlvr.pipeline import ScoredGroup


def episodes_of(sg: ScoredGroup) -> list[Trajectory]:
    """The group's episodes; a group of plain completions (a checkpoint from before episodes) as one-turn ones."""
    episodes = getattr(sg.group, "episodes", None)
    if episodes:
        return list(episodes)
    return [one_turn(sg.group.prompt_ids, c.token_ids, c.logprobs, c.finish_reason, text=c.text)
            for c in sg.group.completions]


def sequences_of(sg: ScoredGroup) -> list[list[Trajectory]]:
    """Per sample of the group, the sequences it trains on: its episode, or the several exact sequences
    of an agent session whose history was edited (``EpisodeGroup.sequences``)."""
    sequences = getattr(sg.group, "sequences", None)
    if sequences:
        return [list(s) for s in sequences]
    return [[t] for t in episodes_of(sg)]


def build_batch(scored: list[ScoredGroup], pad_id: int, algo: AlgorithmConfig, max_tokens: int,
                learner_version: int | None = None, max_staleness: int | None = None) -> tuple[RLBatch, AdvantageInputs]:
    """Pack groups into right-padded tensors in target alignment (see rlvr.train.learner), with
    DAPO's overlong shaping when configured; advantages are left at 0 for the caller. An invalid
    sample keeps its row (the batch's shape does not depend on failures) with an empty loss mask, and
    ``AdvantageInputs.valid`` keeps it out of its group's statistics.

    A sample of several sequences (rlvr.agents.sequences) is one row per sequence, each with the
    sample's reward and validity; only its first row counts in its group's statistics
    (``AdvantageInputs.lead``), so the sample counts once in the baseline and each row gets its advantage.

    ``learner_version``, ``max_staleness``: the staleness guard (rlvr.train.staleness); a sample with a token
    more than ``max_staleness`` versions older than the learner is invalid like a failed check."""
    rewards = torch.cat([sg.rewards for sg in scored])  # [S] per sample
    valid = torch.cat([sg.valid for sg in scored])  # [S] bool
    per_sample = [sequences_of(sg) for sg in scored]
    counts = torch.tensor([len(s) for g in per_sample for s in g])  # [S]
    if bool((counts == 1).all()):
        return build_episode_batch([[s[0] for s in g] for g in per_sample], rewards, pad_id, algo, max_tokens, valid,
                                   learner_version=learner_version, max_staleness=max_staleness)
    lead = torch.cat([torch.arange(int(c)) == 0 for c in counts])  # [B] bool
    return build_episode_batch([[t for s in g for t in s] for g in per_sample], torch.repeat_interleave(rewards, counts),
                               pad_id, algo, max_tokens, torch.repeat_interleave(valid, counts), lead,
                               learner_version=learner_version, max_staleness=max_staleness)
