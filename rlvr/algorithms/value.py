"""PPO's critic: the clipped value loss and a value model (a scalar head on an LM backbone)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from rlvr.algorithms.core import agg_loss, masked_mean


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float | None,
    agg: str = "token-mean",
    norm_const: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO value loss, all inputs [B, T]:

        V_clip = V_old + clip(V - V_old, -eps, eps)
        loss_t = 1/2 * max((V - R)^2, (V_clip - R)^2)     (1/2 * (V - R)^2 with clip_eps None)

    reduced by ``agg``. The max makes clipping pessimistic: a value update that moves further
    than eps from the sampling-time value gets no gradient once the clipped error is larger.
    """
    err = (values - returns) ** 2  # [B, T]
    if clip_eps is None:
        per_tok = 0.5 * err
        clip_frac = torch.zeros((), dtype=values.dtype, device=values.device)
    else:
        v_clip = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        err_clip = (v_clip - returns) ** 2
        per_tok = 0.5 * torch.maximum(err, err_clip)
        with torch.no_grad():
            clip_frac = masked_mean((err_clip > err).to(values.dtype), mask)
    loss = agg_loss(per_tok, mask, agg, norm_const)
    with torch.no_grad():
        metrics = {"vf_loss": loss.detach(), "vf_clip_frac": clip_frac, "value_mean": masked_mean(values, mask)}
    return loss, metrics


class ValueHead(nn.Module):
    """Linear(hidden, 1) read out per position; zero-initialised so the first values are 0."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.proj(hidden).squeeze(-1)  # [B, L, H] -> [B, L]


class CriticModel(nn.Module):
    """V(s) for every prefix: a causal-LM backbone (no LM head) plus a ``ValueHead``.

    ``forward(input_ids, attention_mask) -> [B, L]`` where ``values[:, i]`` is the value of the
    state after tokens 0..i. The value of response token t (the state *before* it is emitted)
    therefore sits at position ``P + t - 1`` for a prompt of length P: the same shift as the
    logits that score token t.
    """

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        head_dtype = next(backbone.parameters()).dtype
        self.value_head = ValueHead(hidden_size).to(head_dtype)

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs) -> CriticModel:
        """Load ``AutoModelForCausalLM`` and keep its base model (the LM head is dropped)."""
        from transformers import AutoModelForCausalLM  # heavy; only the PPO path needs it

        lm = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        return cls(lm.base_model, lm.config.hidden_size)

    @classmethod
    def from_policy(cls, policy: nn.Module) -> CriticModel:
        """A critic on an independent copy of a HF causal-LM policy's backbone."""
        return cls(copy.deepcopy(policy.base_model), policy.config.hidden_size)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return self.value_head(out.last_hidden_state)  # [B, L]
