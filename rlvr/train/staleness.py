"""How old the tokens of a batch are, and the guard that never trains on a too-old sample.

Every model token carries the policy version that sampled it (``RLBatch.versions`` [B, T], -1 off model
tokens: learner updates contained in the weights the engine sampled with). Its *staleness* is the
learner's version before this update minus that version: 0 for a token the current weights sampled, k
for one sampled k updates ago. One-step-off training gives every token staleness 1; an engine that
loads new weights between two decode steps (in-flight updates) gives one sample several.

``train.max_staleness = k`` bounds it per sample: a sample any of whose tokens is older than k versions is
never trained on (out of its group's baseline and the loss, like a failed check), and counted. The
whole sample goes, not only its old tokens: its reward is the whole sequence's, and its fresh tokens
continue a prefix that a too-old policy wrote.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rlvr.envs.trajectory import Trajectory


def token_staleness(versions: Tensor, learner_version: int) -> Tensor:
    """[B, T] long: ``learner_version - versions`` on model tokens (``versions >= 0``), -1 elsewhere.

    A token newer than the learner is a bookkeeping error (its log-prob would be paired with the wrong
    weights), so it raises instead of counting as fresh."""
    model = versions >= 0
    if bool((model & (versions > learner_version)).any()):
        raise ValueError(f"RLBatch.versions: a token was sampled by version {int(versions.max())}, newer than the "
                         f"learner's version {learner_version}; the engine's weight versions are out of step")
    return torch.where(model, learner_version - versions, torch.full_like(versions, -1))


def stale_samples(versions: Tensor, learner_version: int, max_staleness: int, lead: Tensor | None = None) -> Tensor:
    """[B] bool: the rows of samples with a token more than ``max_staleness`` versions older than the learner.

    ``lead`` [B] bool: the first row of each sample when a sample spans several adjacent rows (an agent
    session's sequences); every row of a sample with one too-old token is marked. None: a row is a sample."""
    too_old = (token_staleness(versions, learner_version) > max_staleness).any(1)  # [B]
    if lead is None:
        return too_old
    sample = lead.long().cumsum(0) - 1  # [B] the sample each row belongs to
    per_sample = torch.zeros(int(lead.sum()), dtype=torch.long).index_add(0, sample, too_old.long())  # [S]
    return per_sample[sample] > 0


def oldest_version(episodes: Sequence[Trajectory]) -> int | None:
    """The oldest policy version that sampled a model token of ``episodes`` (a group's, or one sample's
    sequences); None when they hold no model token."""
    versions = [v for t in episodes for v in t.versions() if v >= 0]
    return min(versions) if versions else None


def staleness_metrics(versions: Tensor, learner_version: int, max_staleness: int,
                      lead: Tensor | None = None) -> dict[str, float]:
    """The share of the batch's model tokens at staleness 0, 1, ..., ``max_staleness``
    (``staleness/tokens_<s>``) and beyond it (``staleness/tokens_over``), their mean staleness
    (``staleness/token_mean``), and ``stale_dropped``: the samples the guard kept out of training."""
    s = token_staleness(versions, learner_version)  # [B, T]
    model = s >= 0
    n = model.sum().clamp(min=1)
    out = {f"staleness/tokens_{i}": float((s == i).sum() / n) for i in range(max_staleness + 1)}
    out["staleness/tokens_over"] = float((s > max_staleness).sum() / n)
    out["staleness/token_mean"] = float((s * model).sum() / n)
    stale = stale_samples(versions, learner_version, max_staleness, lead)
    out["stale_dropped"] = float((stale if lead is None else stale & lead).sum())
    return out
