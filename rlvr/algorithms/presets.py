"""Named algorithms: coherent sets of ``AlgorithmConfig`` values, each still overridable.

``resolve_algorithm("dapo", {"clip_eps_high": 0.3})`` applies the preset, then the overrides,
and validates the result (a misspelt key is an error naming it). The same happens for
``AlgorithmConfig(preset="dapo", clip_eps_high=0.3)`` and for ``AlgorithmConfig.model_validate("dapo")``,
so a run config can say ``algorithm: dapo`` or ``algorithm: {preset: dapo, clip_eps_high: 0.3}``.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeekMath GRPO: group-normalised outcome advantages, PPO clip, per-sequence mean,
    # k3 KL to the reference in the loss with beta = 0.04.
    "grpo": {
        "advantage": "grpo",
        "scale_std": True,
        "policy_loss": "ppo_clip",
        "loss_agg": "seq-mean-token-mean",
        "kl_coef": 0.04,
        "kl_kind": "k3",
    },
    # Dr.GRPO (Liu et al. 2025): no std division, no per-sequence length division
    # (a constant normaliser: set loss_agg_norm to the sampling max_tokens), no KL.
    "dr_grpo": {
        "advantage": "dr_grpo",
        "policy_loss": "ppo_clip",
        "loss_agg": "seq-mean-token-sum-norm",
        "kl_coef": 0.0,
    },
    # DAPO (Yu et al. 2025): clip-higher, token-level mean, dynamic sampling, soft overlong
    # punishment (buffer 4096 of 20480 tokens = 0.2), no KL.
    "dapo": {
        "advantage": "grpo",
        "scale_std": True,
        "policy_loss": "ppo_clip",
        "clip_eps_low": 0.2,
        "clip_eps_high": 0.28,
        "loss_agg": "token-mean",
        "kl_coef": 0.0,
        "dynamic_sampling": True,
        "overlong_buffer_frac": 0.2,
        "overlong_penalty_factor": 1.0,
    },
    # GSPO (Zheng et al. 2025): sequence-level ratio with the paper's narrow clip range, no KL.
    "gspo": {
        "advantage": "grpo",
        "scale_std": True,
        "policy_loss": "gspo",
        "clip_eps_low": 3e-4,
        "clip_eps_high": 4e-4,
        "loss_agg": "seq-mean-token-mean",
        "kl_coef": 0.0,
    },
    # RLOO (Ahmadian et al. 2024): leave-one-out baseline; the PPO clip keeps several
    # updates per batch safe (it is plain REINFORCE at ratio 1).
    "rloo": {
        "advantage": "rloo",
        "policy_loss": "ppo_clip",
        "loss_agg": "seq-mean-token-mean",
        "kl_coef": 0.0,
    },
    # REINFORCE++ (Hu 2025): token-level returns normalised over the whole batch; the KL to
    # the reference, when weighted, is a k1 penalty in the reward.
    "reinforce_pp": {
        "advantage": "reinforce_pp",
        "group_baseline": False,
        "gamma": 1.0,
        "policy_loss": "ppo_clip",
        "loss_agg": "token-mean",
        "kl_coef": 0.0,
        "kl_kind": "k1",
        "kl_in_reward": True,
    },
    # PPO with a critic, as in Open-Reasoner-Zero: GAE with gamma = lambda = 1, whitened
    # advantages, clipped value loss, no KL (set kl_coef for a k1 KL in the reward).
    "ppo": {
        "advantage": "gae",
        "gamma": 1.0,
        "gae_lambda": 1.0,
        "whiten_advantages": True,
        "policy_loss": "ppo_clip",
        "loss_agg": "token-mean",
        "kl_coef": 0.0,
        "kl_kind": "k1",
        "kl_in_reward": True,
        "value_clip_eps": 0.2,
        "critic_lr": 1e-5,
    },
}
