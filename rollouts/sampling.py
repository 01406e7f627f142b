"""Picking the next token: one top-p nucleus, two ways to draw from it.

Both draws sample exactly from softmax(logits / temperature), restricted to the top-p nucleus and
renormalised, and both take the nucleus from ``nucleus`` (the most likely tokens whose mass before
them is < top_p; the top token is always kept). They differ in how they consume a seed, which is
why there are two and not one: replacing either by the other would change that engine's samples for
a given seed (and so the numbers of every seeded run on it).

* ``sample_multinomial`` (``HFEngine``): ``torch.multinomial`` per row on the renormalised
  probabilities, from the row's generator, one draw per step.
* ``sample_inverse_cdf`` (``StaticCacheEngine``): one uniform per row and step, drawn up front
  from the prompt's generator (a prompt's samples do not depend on the batch it shares), inverted
  through a float32 CDF. ``multinomial`` draws an exponential per vocabulary entry per row per
  step; this is one cumulative sum.
"""

from __future__ import annotations

import torch

from rollouts.types import SamplingConfig


def nucleus(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``sorted_probs`` [B, V] (each row descending) with every token outside the top-p nucleus set to 0:
    a token is kept when the mass of the tokens before it is < ``top_p`` (the top token always is)."""
    return sorted_probs * (sorted_probs.cumsum(-1) - sorted_probs < top_p)


def sample_multinomial(logits: torch.Tensor, sampling: SamplingConfig,
                       gen: torch.Generator | list[torch.Generator]) -> torch.Tensor:
    """Next tokens [B] from ``logits`` [B, V] with temperature and top-p (greedy at temperature 0).
    ``gen``: one generator for the batch, or one per row (per-prompt seeds)."""
    if sampling.temperature == 0:
        return logits.argmax(-1)
    probs = (logits.float() / sampling.temperature).softmax(-1)  # [B, V]
    if sampling.top_p < 1.0:
        sorted_p, sorted_idx = probs.sort(-1, descending=True)
        probs = torch.zeros_like(probs).scatter_(-1, sorted_idx, nucleus(sorted_p, sampling.top_p))
    if isinstance(gen, list):
        return torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(gen)])
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def sample_inverse_cdf(logits: torch.Tensor, u: torch.Tensor,
                       sampling: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens [B] and their log-probs [B] under the raw ``logits`` [B, V] (float32). A token is
    drawn by inverting its row's CDF at the row's uniform ``u`` [B]. The CDF is a float32 running
    sum, scaled by its own total, so rounding moves a token's probability by ~1e-7 at most; a token
    of probability 0 (outside the nucleus) is never drawn."""
    lse = logits.logsumexp(-1, keepdim=True)
    if sampling.temperature == 0:
        pick = logits.argmax(-1)
    else:
        probs = (logits - lse).exp_() if sampling.temperature == 1.0 else (logits / sampling.temperature).softmax(-1)
        order = None
        if sampling.top_p < 1.0:
            probs, order = probs.sort(-1, descending=True)
            probs = nucleus(probs, sampling.top_p)
        cdf = probs.cumsum_(-1)
        pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1)
        pick = pick.clamp_(max=cdf.shape[-1] - 1)
        if order is not None:
            pick = order.gather(-1, pick[:, None]).squeeze(-1)
    return pick, logits.gather(-1, pick[:, None]).squeeze(-1) - lse.squeeze(-1)
