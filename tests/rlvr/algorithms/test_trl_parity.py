"""Cross-check against TRL's own GRPO loss code (an outside reference, not a re-implementation).

TRL computes the GRPO loss in ``GRPOTrainer._compute_loss(model, inputs)``. We build a
``GRPOTrainer`` without running its ``__init__`` (which would load a model, tokenizer and
dataset), set exactly the attributes ``_compute_loss`` reads from a real ``GRPOConfig`` the way
``__init__`` does, and replace the one model call, ``_get_per_token_logps_and_entropies``, with
one that returns our log-probs. Everything from the ratio to the aggregated loss is TRL's code.

Mapping (TRL loss_type -> ours): grpo -> seq-mean-token-mean, bnpo -> token-mean,
dr_grpo -> seq-mean-token-sum-norm with norm = max_completion_length, dapo -> token-mean
(TRL normalises by the token count of the generation batch); importance_sampling_level
"sequence" -> gspo; ``delta`` -> dual_clip_c; beta (use_bias_correction_kl off) -> KL k3 in
the loss; vLLM importance-sampling correction -> is_weights.
"""

from __future__ import annotations

import warnings
from collections import defaultdict

import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    trl = pytest.importorskip("trl")

from rlvr.algorithms import POLICY_LOSSES, AlgorithmConfig, LossInputs, agg_loss, policy_objective

# no model, but TRL's GRPOTrainer brings its whole stack (transformers.Trainer, accelerate, vLLM, Ray, wandb):
# ~5 s of imports on 2 cores, an engine's worth, so the default tier runs it and the unit tier does not
pytestmark = pytest.mark.e2e

F64 = torch.float64
TOL = 1e-6
AGG = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dr_grpo": "seq-mean-token-sum-norm", "dapo": "token-mean"}


def trl_loss(tmp_path, logp, old_logp, adv, mask, max_len, is_ratio=None, ref_logp=None, **cfg):
    """TRL's loss (and its gradient w.r.t. logp) for the given tensors."""
    with warnings.catch_warnings():  # imported here, not at collection: GRPOTrainer imports vLLM (seconds)
        warnings.simplefilter("ignore")
        from accelerate import Accelerator
        from trl import GRPOConfig, GRPOTrainer
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], max_completion_length=max_len,
                      use_bias_correction_kl=False, **cfg)
    tr = GRPOTrainer.__new__(GRPOTrainer)
    # The attributes GRPOTrainer.__init__ copies from args and _compute_loss reads.
    tr.args = args
    tr.loss_type = args.loss_type
    tr.epsilon_low = args.epsilon
    tr.epsilon_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
    tr.beta = args.beta
    tr.importance_sampling_level = args.importance_sampling_level
    tr.off_policy_mask_threshold = args.off_policy_mask_threshold
    tr.top_entropy_quantile = args.top_entropy_quantile
    tr.max_completion_length = args.max_completion_length
    tr.use_vllm = is_ratio is not None
    tr.vllm_importance_sampling_correction = is_ratio is not None
    tr._entropy_bonus_enabled = False
    tr.aux_loss_enabled = False
    tr._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    tr.accelerator = Accelerator(cpu=True)  # after GRPOConfig, whose __post_init__ resets the shared state
    tr.model = torch.nn.Linear(1, 1).train()
    tr.current_gradient_accumulation_steps = 1
    logp = logp.detach().clone().requires_grad_()
    tr._get_per_token_logps_and_entropies = lambda *a, **k: (logp, torch.zeros_like(logp), None)
    B, T = logp.shape
    inputs = {
        "prompt_ids": torch.ones(B, 1, dtype=torch.long),
        "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.ones(B, T, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": adv,  # [B]: TRL broadcasts one advantage per completion
        "old_per_token_logps": old_logp,
        "num_items_in_batch": mask.sum(),
    }
    if is_ratio is not None:
        inputs["importance_sampling_ratio"] = is_ratio
    if ref_logp is not None:
        inputs["ref_per_token_logps"] = ref_logp
    loss = tr._compute_loss(None, inputs)
    loss.backward()
    return loss.detach(), logp.grad


def our_loss(logp, old_logp, adv, mask, cfg, is_weights=None, ref_logp=None):
    logp = logp.detach().clone().requires_grad_()
    inp = LossInputs(logp, old_logp, adv[:, None] * mask, mask, ref_logp=ref_logp, is_weights=is_weights)
    loss, _ = policy_objective(inp, cfg)
    loss.backward()
    return loss.detach(), logp.grad


def batch(seed, B=6, T=9):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=F64) * 3
    logp = old + 0.3 * torch.randn(B, T, generator=g, dtype=F64)  # ratios both inside and outside the clip range
    adv = torch.randn(B, generator=g, dtype=F64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(F64)
    return logp, old, adv, mask, g


def assert_parity(ours, theirs):
    (l1, g1), (l2, g2) = ours, theirs
    assert abs(l1.item() - l2.item()) <= TOL, (l1.item(), l2.item())
    assert (g1 - g2).abs().max().item() <= TOL


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_clipped_loss_matches_trl(tmp_path, loss_type, seed):
    logp, old, adv, mask, _ = batch(seed)
    max_len = logp.shape[1] + 3  # Dr.GRPO's constant differs from the padded width on purpose
    theirs = trl_loss(tmp_path, logp, old, adv, mask, max_len, loss_type=loss_type, epsilon=0.2,
                      epsilon_high=0.28, beta=0.0)
    cfg = AlgorithmConfig(clip_eps_low=0.2, clip_eps_high=0.28, loss_agg=AGG[loss_type], loss_agg_norm=max_len)
    assert_parity(our_loss(logp, old, adv, mask, cfg), theirs)
    # The lead's calling convention (registry + agg_loss) gives the same number.
    lt, _ = POLICY_LOSSES["ppo_clip"](LossInputs(logp, old, adv[:, None] * mask, mask), cfg)
    assert abs(agg_loss(lt, mask, cfg.loss_agg, cfg.loss_agg_norm).item() - theirs[0].item()) <= TOL


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_kl_in_loss_matches_trl(tmp_path, loss_type):
    logp, old, adv, mask, g = batch(10)
    ref = logp.detach() + 0.5 * torch.randn(logp.shape, generator=g, dtype=F64)
    T = logp.shape[1]
    theirs = trl_loss(tmp_path, logp, old, adv, mask, T, ref_logp=ref, loss_type=loss_type, beta=0.04)
    cfg = AlgorithmConfig(loss_agg=AGG[loss_type], loss_agg_norm=T, kl_coef=0.04, kl_kind="k3")
    assert_parity(our_loss(logp, old, adv, mask, cfg, ref_logp=ref), theirs)


def test_dual_clip_matches_trl_delta(tmp_path):
    # TRL's two-sided clipping caps the unclipped ratio at delta; for A < 0 that is dual-clip
    # with c = delta, and for A > 0 it changes nothing (when delta >= 1 + eps_high).
    logp, old, adv, mask, _ = batch(20)
    logp = old + 3 * (logp - old)  # ratios far outside the range, so the cap binds
    T = logp.shape[1]
    theirs = trl_loss(tmp_path, logp, old, adv, mask, T, loss_type="bnpo", delta=1.5, beta=0.0)
    cfg = AlgorithmConfig(loss_agg="token-mean", dual_clip_c=1.5)
    assert_parity(our_loss(logp, old, adv, mask, cfg), theirs)


def test_gspo_matches_trl_sequence_level(tmp_path):
    logp, old, adv, mask, _ = batch(30)
    theirs = trl_loss(tmp_path, logp, old, adv, mask, logp.shape[1], loss_type="grpo",
                      importance_sampling_level="sequence", epsilon=3e-2, epsilon_high=4e-2, beta=0.0)
    cfg = AlgorithmConfig(policy_loss="gspo", clip_eps_low=3e-2, clip_eps_high=4e-2, loss_agg="seq-mean-token-mean")
    assert_parity(our_loss(logp, old, adv, mask, cfg), theirs)


def test_is_weights_match_trl_vllm_correction(tmp_path):
    logp, old, adv, mask, g = batch(40)
    w = torch.rand(logp.shape, generator=g, dtype=F64) * 2
    theirs = trl_loss(tmp_path, logp, old, adv, mask, logp.shape[1], is_ratio=w, loss_type="dapo",
                      beta=0.0)
    cfg = AlgorithmConfig(loss_agg="token-mean")
    assert_parity(our_loss(logp, old, adv, mask, cfg, is_weights=w), theirs)

