"""Typed settings for advantages, policy losses, aggregation, KL, DAPO extras and the PPO critic.

The defaults are GRPO's pieces with token-mean aggregation and no KL; ``rlvr.algorithms.presets``
holds the coherent sets of values behind ``algorithm: grpo | dr_grpo | dapo | gspo | rloo |
reinforce_pp | ppo`` (``resolve_algorithm``), each field still overridable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
KLKind = Literal["k1", "k2", "k3"]

# Estimators that see token-level rewards, so a per-token KL can be subtracted from them.
TOKEN_REWARD_ADVANTAGES = ("gae", "reinforce_pp")
# Estimators whose baseline is the group: a group of one sample has advantage 0 everywhere.
GROUP_ADVANTAGES = ("grpo", "dr_grpo", "rloo")


class AlgorithmConfig(BaseModel):
    """Which advantage estimator and policy loss the learner uses, and their constants."""

    model_config = ConfigDict(extra="forbid")

    preset: str | None = Field(
        None,
        description="Named algorithm (grpo, dr_grpo, dapo, gspo, rloo, reinforce_pp, ppo) whose values fill "
        "every field not given explicitly. A bare string (`algorithm: dapo` in YAML) means this.",
    )
    # --- advantages -------------------------------------------------------------------------
    advantage: str = Field(
        "grpo", description="Advantage estimator name in ADVANTAGES: grpo, dr_grpo, rloo, reinforce_pp, gae."
    )
    scale_std: bool = Field(True, description="grpo: divide group-centred rewards by the group std.")
    std_eps: float = Field(1e-6, ge=0, description="Added to a std before dividing by it (grpo, reinforce_pp).")
    group_baseline: bool = Field(
        False,
        description="reinforce_pp: subtract the group mean reward before the global batch normalisation "
        "(REINFORCE++-baseline); off: the plain global normalisation of REINFORCE++.",
    )
    gamma: float = Field(1.0, ge=0, le=1, description="Discount over response tokens (gae, reinforce_pp).")
    gae_lambda: float = Field(1.0, ge=0, le=1, description="gae: the lambda of generalised advantage estimation.")
    whiten_advantages: bool = Field(
        True, description="gae: normalise advantages to mean 0, std 1 over the batch's response tokens."
    )

    # --- policy loss ------------------------------------------------------------------------
    policy_loss: str = Field("ppo_clip", description="Policy loss name in POLICY_LOSSES: ppo_clip, gspo, reinforce.")
    clip_eps_low: float = Field(0.2, ge=0, le=1, description="Ratio clip: lower bound is 1 - clip_eps_low.")
    clip_eps_high: float = Field(
        0.2, ge=0, description="Ratio clip: upper bound is 1 + clip_eps_high (DAPO clip-higher: > clip_eps_low)."
    )
    dual_clip_c: float | None = Field(
        None,
        gt=1,
        description="Dual-clip constant c > 1: for negative advantages the per-token loss is at most -c*A. "
        "None: off.",
    )
    is_cap: float | None = Field(
        None,
        gt=0,
        description="Per-token importance sampling: the bound on exp(trainer_logp - engine_logp) used to reweight "
        "per-token losses for rollout-engine/trainer mismatch and stale tokens (is_mode says how). None: off.",
    )
    is_mode: Literal["tis", "mis"] = Field(
        "tis",
        description="How is_cap bounds each token's ratio: tis (truncated IS) weighs a token min(ratio, is_cap); "
        "mis (masked IS) weighs it by its ratio inside [1/is_cap, is_cap] and 0 outside (is_cap > 1).",
    )

    # --- aggregation ------------------------------------------------------------------------
    loss_agg: AggMode = Field("token-mean", description="How per-token losses reduce to a scalar (see agg_loss).")
    loss_agg_norm: float | None = Field(
        None,
        gt=0,
        description="seq-mean-token-sum-norm: the constant length normaliser (Dr.GRPO: the maximum response "
        "length, i.e. the sampling max_tokens). None: the padded response width T of the batch.",
    )

    # --- KL to the reference ----------------------------------------------------------------
    kl_coef: float = Field(
        0.0, ge=0, description="Weight beta of the KL penalty to the reference (0: no reference model)."
    )
    kl_kind: KLKind = Field(
        "k3", description="KL estimator: k1 (log-ratio), k2 (half squared log-ratio), k3 (Schulman)."
    )
    kl_in_reward: bool = Field(
        False,
        description="Subtract beta*KL per token from token-level rewards (PPO/REINFORCE++ style) instead of "
        "adding beta*KL to the loss. Only for token-reward estimators (gae, reinforce_pp).",
    )

    # --- entropy ----------------------------------------------------------------------------
    entropy_coef: float = Field(
        0.0, ge=0, description="Entropy bonus weight (0: off); aggregated with loss_agg and subtracted from the loss."
    )

    # --- DAPO extras ------------------------------------------------------------------------
    dynamic_sampling: bool = Field(
        False, description="DAPO: drop groups whose rewards are all equal and sample more until the batch is full."
    )
    max_sampling_rounds: int = Field(
        3, ge=1, description="DAPO dynamic sampling: most generation rounds per step (the first included)."
    )
    overlong_filter: bool = Field(
        False, description="DAPO overlong filtering: truncated completions contribute no loss (mask zeroed)."
    )
    overlong_buffer_frac: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="DAPO soft overlong punishment: buffer (cache) length as a fraction of max response length; "
        "0: off. DAPO used 4096 of 20480 = 0.2.",
    )
    overlong_penalty_factor: float = Field(
        1.0, ge=0, description="DAPO soft overlong punishment: penalty at (and beyond) the maximum length."
    )

    # --- PPO critic -------------------------------------------------------------------------
    value_clip_eps: float | None = Field(
        0.2, gt=0, description="PPO value clipping: new values stay within old_values +- eps. None: unclipped."
    )
    critic_lr: float = Field(1e-5, gt=0, description="Learning rate of the critic's own optimiser (gae only).")
    critic_model: str | None = Field(
        None, description="Critic backbone (HF id or path). None: a copy of the policy's backbone."
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"preset": data}
        if isinstance(data, dict) and data.get("preset") is not None:
            from rlvr.algorithms.presets import PRESETS  # local: presets imports this module

            name = data["preset"]
            if name not in PRESETS:
                raise ValueError(f"preset: unknown algorithm {name!r}; known: {sorted(PRESETS)}")
            data = {**PRESETS[name], **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> AlgorithmConfig:
        # Local import: the registries import this module.
        from rlvr.algorithms.core import ADVANTAGES, POLICY_LOSSES

        if ADVANTAGES and self.advantage not in ADVANTAGES:
            raise ValueError(f"advantage: unknown estimator {self.advantage!r}; known: {sorted(ADVANTAGES)}")
        if POLICY_LOSSES and self.policy_loss not in POLICY_LOSSES:
            raise ValueError(f"policy_loss: unknown loss {self.policy_loss!r}; known: {sorted(POLICY_LOSSES)}")
        if self.kl_in_reward and self.kl_coef > 0 and self.advantage not in TOKEN_REWARD_ADVANTAGES:
            raise ValueError(
                f"kl_in_reward: needs a token-level estimator {TOKEN_REWARD_ADVANTAGES}, not {self.advantage!r}"
            )
        if self.is_mode == "mis" and self.is_cap is not None and self.is_cap <= 1:
            raise ValueError(f"is_cap: is_mode=mis keeps tokens whose ratio lies in [1/is_cap, is_cap], which is empty "
                             f"or one point for is_cap={self.is_cap}; use is_cap > 1 (e.g. 2)")
        return self

    @property
    def needs_critic(self) -> bool:
        """A value model is trained only for GAE."""
        return self.advantage == "gae"

    @property
    def needs_reference(self) -> bool:
        """A reference model is loaded only when its KL has a weight."""
        return self.kl_coef > 0

    @property
    def loss_kl_coef(self) -> float:
        """Weight of the KL term in the loss (0 when the KL goes into the reward)."""
        return 0.0 if self.kl_in_reward else self.kl_coef

    @property
    def reward_kl_coef(self) -> float:
        """Weight of the per-token KL subtracted from token rewards (0 when the KL is in the loss)."""
        return self.kl_coef if self.kl_in_reward else 0.0


def resolve_algorithm(
    name: str, overrides: Mapping[str, Any] | None = None, max_response_len: int | None = None
) -> AlgorithmConfig:
    """The preset ``name`` with ``overrides`` applied on top, validated.

    ``max_response_len`` (the sampling max_tokens) fills ``loss_agg_norm`` for the
    ``seq-mean-token-sum-norm`` mode when neither preset nor overrides set it, so Dr.GRPO's
    normaliser is a true constant rather than the padded width of each batch.
    """
    cfg = AlgorithmConfig(**{**(overrides or {}), "preset": name})
    if cfg.loss_agg == "seq-mean-token-sum-norm" and cfg.loss_agg_norm is None and max_response_len:
        cfg = cfg.model_copy(update={"loss_agg_norm": float(max_response_len)})
    return cfg
