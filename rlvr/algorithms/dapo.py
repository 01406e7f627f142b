"""DAPO's data-side extras as pure functions (Yu et al. 2025, "DAPO", sections 3.2-3.4).

* dynamic sampling: a group whose rewards are all equal has zero advantage everywhere under
  group-relative estimators, so it only dilutes the batch; drop it and sample more.
* overlong filtering: a truncated completion was not judged on its merits; mask its loss.
* soft overlong punishment: a length-aware penalty added to the reward in the last
  ``cache_len`` tokens before the limit.

The loop wires them (see docs/algorithms.md); nothing here knows about engines or text.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def dynamic_sampling_filter(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Keep mask [B] bool: False for every member of a group whose rewards are all equal."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    hi = torch.full((n_groups,), -torch.inf, dtype=rewards.dtype, device=rewards.device)
    lo = torch.full((n_groups,), torch.inf, dtype=rewards.dtype, device=rewards.device)
    hi = hi.scatter_reduce(0, inverse, rewards, reduce="amax")
    lo = lo.scatter_reduce(0, inverse, rewards, reduce="amin")
    return (hi > lo)[inverse]


def overlong_mask(truncated: Tensor | Sequence[bool] | Sequence[str | None]) -> Tensor:
    """Keep weights [B] float: 0.0 for truncated completions, 1.0 otherwise.

    Accepts booleans (True = truncated) or finish reasons, where ``"length"`` (vLLM's and
    ``rollouts.Completion``'s word for hitting max_tokens) means truncated. Multiply the loss
    mask by ``keep[:, None]``.
    """
    if isinstance(truncated, Tensor):
        flags = truncated.bool()
    else:
        flags = torch.tensor([f == "length" if isinstance(f, str) or f is None else bool(f) for f in truncated])
    return (~flags).to(torch.float32)


def soft_overlong_penalty(lengths: Tensor, max_len: int, cache_len: int, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment [B], to be *added* to the rewards.

        0                                   if L <= max_len - cache_len
        factor * ((max_len - cache_len) - L) / cache_len   if max_len - cache_len < L <= max_len
        -factor                             if L > max_len

    (The paper's formula has factor 1.) ``cache_len`` 0 switches it off.
    """
    if not lengths.is_floating_point():
        lengths = lengths.to(torch.get_default_dtype())
    if cache_len <= 0:
        return torch.zeros_like(lengths)
    excess = (lengths - (max_len - cache_len)).clamp(min=0, max=cache_len)  # [B]
    return -factor * excess / cache_len
