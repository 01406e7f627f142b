"""Policy losses, aggregation modes and KL estimators: hand-derived cases and loop references."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algorithms import (
    POLICY_LOSSES,
    AlgorithmConfig,
    LossInputs,
    agg_loss,
    kl_penalty,
    kl_reward_penalty,
    policy_objective,
    truncated_is_weights,
)

TOL = 1e-9
F64 = torch.float64
LN2 = math.log(2)


def t(x):
    return torch.tensor(x, dtype=F64)


def close(a, b, tol=TOL):
    torch.testing.assert_close(a, b if isinstance(b, torch.Tensor) else t(b), rtol=0, atol=tol)


def ratio_inputs(ratios, advs, mask=None):
    """One row of tokens with the given ratios pi/pi_old and advantages."""
    old = torch.linspace(-2.0, -0.5, len(ratios), dtype=F64)[None]  # [1, T]
    logp = (old + t(ratios).log()[None]).requires_grad_()
    m = torch.ones_like(old) if mask is None else t(mask)[None]
    return LossInputs(logp=logp, old_logp=old, advantages=t(advs)[None], mask=m)


# ------------------------------------------------------------------------------------ ppo_clip

# token:          0      1      2      3      4      5      6
RATIOS = [1.5, 0.5, 1.5, 0.5, 1.1, 4.0, 4.0]
ADVS = [1.0, 1.0, -2.0, -2.0, 1.0, -2.0, 1.0]


def test_ppo_clip_asymmetric_hand_derived():
    # eps_low .2, eps_high .28: clip range [0.8, 1.28]. loss = -min(r A, clip(r) A).
    #   t0 r 1.5 A +1: -min(1.5, 1.28)  = -1.28 (clipped)
    #   t1 r 0.5 A +1: -min(0.5, 0.8)   = -0.5
    #   t2 r 1.5 A -2: -min(-3, -2.56)  =  3.0  (pessimistic: not clipped)
    #   t3 r 0.5 A -2: -min(-1, -1.6)   =  1.6  (clipped)
    #   t4 r 1.1 A +1:                  = -1.1
    #   t5 r 4.0 A -2: -min(-8, -2.56)  =  8.0
    #   t6 r 4.0 A +1: -min(4, 1.28)    = -1.28 (clipped)
    cfg = AlgorithmConfig(clip_eps_low=0.2, clip_eps_high=0.28)
    loss, m = POLICY_LOSSES["ppo_clip"](ratio_inputs(RATIOS, ADVS), cfg)
    close(loss, t([[-1.28, -0.5, 3.0, 1.6, -1.1, 8.0, -1.28]]))
    close(m["clip_frac"], t(3 / 7))
    close(m["dual_clip_frac"], t(0.0))


def test_ppo_clip_symmetric_hand_derived():
    # eps .2 both sides, clip range [0.8, 1.2]: t0 -> -1.2, t2 -> -min(-3, -2.4) = 3, t6 -> -1.2.
    loss, _ = POLICY_LOSSES["ppo_clip"](ratio_inputs(RATIOS, ADVS), AlgorithmConfig())
    close(loss, t([[-1.2, -0.5, 3.0, 1.6, -1.1, 8.0, -1.2]]))


def test_ppo_dual_clip_hand_derived():
    # c = 3: for A < 0 the loss is at most -c A = 6. Only t5 (8.0) exceeds it; A > 0 tokens untouched.
    cfg = AlgorithmConfig(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip_c=3.0)
    inp = ratio_inputs(RATIOS, ADVS)
    loss, m = POLICY_LOSSES["ppo_clip"](inp, cfg)
    close(loss, t([[-1.28, -0.5, 3.0, 1.6, -1.1, 6.0, -1.28]]))
    close(m["dual_clip_frac"], t(1 / 7))
    # Gradient w.r.t. logp: d(-r A)/d logp = -r A where unclipped, 0 where clipped.
    #   t1: -0.5, t2: -1.5*-2 = 3, t4: -1.1, all others 0 (t5 dual-clipped to a constant).
    loss.sum().backward()
    close(inp.logp.grad, t([[0.0, -0.5, 3.0, 0.0, -1.1, 0.0, 0.0]]))


def test_ppo_clip_at_ratio_one_is_minus_advantage():
    inp = ratio_inputs([1.0, 1.0], [0.7, -0.3])
    loss, m = POLICY_LOSSES["ppo_clip"](inp, AlgorithmConfig())
    close(loss, t([[-0.7, 0.3]]))
    close(m["ratio_mean"], t(1.0))
    close(m["approx_kl"], t(0.0))


# ---------------------------------------------------------------------------------------- gspo


def gspo_inputs(adv1=1.0):
    # Row 0: 2 response tokens with ratios 1.2, 0.9 (a padded 3rd with ratio 5 must be ignored).
    #   log s = (ln 1.2 + ln 0.9)/2 -> s = sqrt(1.08) = 1.0392304845413265, inside [0.8, 1.2].
    # Row 1: 3 tokens with ratio 2 each -> s = 2, clipped to 1.2 for A > 0.
    old = t([[-1.0, -2.0, -0.5], [-0.3, -0.6, -0.9]])
    logp = (old + t([[1.2, 0.9, 5.0], [2.0, 2.0, 2.0]]).log()).requires_grad_()
    mask = t([[1, 1, 0], [1, 1, 1]])
    adv = t([[1.0, 1.0, 0.0], [adv1] * 3])
    return LossInputs(logp, old, adv, mask)


def test_gspo_hand_derived():
    s0 = math.sqrt(1.08)
    inp = gspo_inputs()
    loss, m = POLICY_LOSSES["gspo"](inp, AlgorithmConfig(policy_loss="gspo"))
    close(loss * inp.mask, t([[-s0, -s0, 0.0], [-1.2, -1.2, -1.2]]))
    close(m["clip_frac"], t(3 / 5))
    # With A = -1 on row 1: -min(-2, -1.2) = 2 (the pessimistic branch, unclipped).
    loss, _ = POLICY_LOSSES["gspo"](gspo_inputs(-1.0), AlgorithmConfig(policy_loss="gspo"))
    close(loss[1], t([2.0, 2.0, 2.0]))


def test_gspo_gradient_is_the_sequence_objective_gradient():
    # Paper objective: mean_i -min(s_i A_i, clip(s_i) A_i) with s_i = exp(mean_t log ratio).
    # d/d logp_t of -s A = -A s / |y|: row 0 -> -s0/2 per token; row 1 is clipped -> 0.
    # Aggregated seq-mean-token-mean over B = 2 rows, so each gradient is halved.
    s0 = math.sqrt(1.08)
    inp = gspo_inputs()
    loss, _ = POLICY_LOSSES["gspo"](inp, AlgorithmConfig(policy_loss="gspo"))
    agg_loss(loss, inp.mask, "seq-mean-token-mean").backward()
    close(inp.logp.grad, t([[-s0 / 4, -s0 / 4, 0.0], [0.0, 0.0, 0.0]]))


# ----------------------------------------------------------------------------------- reinforce


def test_reinforce_hand_derived_and_gradient_equals_ppo_at_ratio_one():
    # loss = -A log pi: (-2 * -0.5, 1 * -1.0) = (1.0, -1.0); gradient -A = (-2, 1).
    logp = t([[-0.5, -1.0]]).requires_grad_()
    inp = LossInputs(logp, logp.detach().clone(), t([[2.0, -1.0]]), t([[1.0, 1.0]]))
    loss, _ = POLICY_LOSSES["reinforce"](inp, AlgorithmConfig(policy_loss="reinforce"))
    close(loss, t([[1.0, -1.0]]))
    loss.sum().backward()
    close(logp.grad, t([[-2.0, 1.0]]))
    logp2 = logp.detach().clone().requires_grad_()
    ppo, _ = POLICY_LOSSES["ppo_clip"](LossInputs(logp2, logp.detach(), inp.advantages, inp.mask), AlgorithmConfig())
    ppo.sum().backward()
    close(logp2.grad, logp.grad)


# ------------------------------------------------------------------- truncated importance sampling


def test_truncated_is_weights_hand_derived():
    # pi_trainer / pi_engine = (.5/.25, .2/.4) = (2, .5); cap 1.5 -> (1.5, .5). No gradient.
    old = t([[0.5, 0.2]]).log().requires_grad_()
    w = truncated_is_weights(old, t([[0.25, 0.4]]).log(), cap=1.5)
    close(w, t([[1.5, 0.5]]))
    assert not w.requires_grad


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "reinforce"])
def test_is_weights_multiply_the_per_token_loss(name):
    inp = gspo_inputs()
    w = t([[1.5, 0.5, 2.0], [0.1, 1.0, 0.0]])
    cfg = AlgorithmConfig(policy_loss=name)
    plain, _ = POLICY_LOSSES[name](inp, cfg)
    weighted, _ = POLICY_LOSSES[name](LossInputs(inp.logp, inp.old_logp, inp.advantages, inp.mask, is_weights=w), cfg)
    close(weighted, plain * w)


# ---------------------------------------------------------------------------------- aggregation

VALUES = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
MASK = [[1, 1, 0], [1, 0, 0]]


@pytest.mark.parametrize(
    "mode, norm, want",
    [
        ("token-mean", None, 7 / 3),  # (1 + 2 + 4) / 3 tokens
        ("seq-mean-token-mean", None, 2.75),  # mean(3/2, 4/1)
        ("seq-mean-token-sum", None, 3.5),  # mean(3, 4)
        ("seq-mean-token-sum-norm", None, 7 / 6),  # 7 / (B=2 * T=3)
        ("seq-mean-token-sum-norm", 10.0, 0.35),  # 7 / (2 * 10)
    ],
)
def test_agg_modes_hand_derived(mode, norm, want):
    close(agg_loss(t(VALUES), t(MASK), mode, norm), t(want))


def test_agg_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="aggregation"):
        agg_loss(t(VALUES), t(MASK), "token-sum")


# ------------------------------------------------------------------------------------------ KL


def test_kl_estimators_hand_derived():
    # x = log pi - log pi_ref. x = ln 2: k1 = .6931..., k2 = x^2/2 = .2402265069591007,
    # k3 = e^-x - 1 + x = .5 - 1 + ln 2 = .1931471805599453.
    # x = -ln 2: k1 = -.6931..., k2 the same, k3 = 2 - 1 - ln 2 = .3068528194400547.
    logp, ref = t([[math.log(0.5), math.log(0.25)]]), t([[math.log(0.25), math.log(0.5)]])
    close(kl_penalty(logp, ref, "k1"), t([[LN2, -LN2]]))
    close(kl_penalty(logp, ref, "k2"), t([[0.2402265069591007, 0.2402265069591007]]))
    close(kl_penalty(logp, ref, "k3"), t([[0.1931471805599453, 0.3068528194400547]]))
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k4")


def test_k1_and_k3_are_unbiased_in_exact_expectation():
    # p = (.5, .25, .25), q = (.25, .25, .5): KL(p||q) = .5 ln 2 + 0 + .25 ln .5 = .25 ln 2.
    # E_p[k1] = KL exactly; E_p[k3] = sum q - 1 + KL = KL; k2 is biased.
    p, q = t([0.5, 0.25, 0.25]), t([0.25, 0.25, 0.5])
    for kind in ("k1", "k3"):
        close((p * kl_penalty(p.log(), q.log(), kind)).sum(), t(0.25 * LN2))
    # E_p[k2] = .5 * (.5 ln2^2 + 0 + .25 ln2^2) = .375 ln2^2 = .18017... != .25 ln 2 = .17329...
    close((p * kl_penalty(p.log(), q.log(), "k2")).sum(), t(0.375 * LN2**2))


def test_kl_in_reward_hand_derived():
    # beta .1, k1 with old/ref = .5/.25 on every token: each token loses .1 ln 2 = .0693147...
    # The padded 4th token is untouched.
    rewards = t([[0.0, 0.0, 1.0, 0.0]])
    old, ref = t([[math.log(0.5)] * 4]), t([[math.log(0.25)] * 4])
    out = kl_reward_penalty(rewards, old, ref, t([[1, 1, 1, 0]]), coef=0.1, kind="k1")
    close(out, t([[-0.1 * LN2, -0.1 * LN2, 1 - 0.1 * LN2, 0.0]]))


def test_kl_in_reward_config_flag():
    cfg = AlgorithmConfig(advantage="gae", kl_coef=0.05, kl_in_reward=True)
    assert (cfg.loss_kl_coef, cfg.reward_kl_coef) == (0.0, 0.05)
    cfg = AlgorithmConfig(kl_coef=0.05)
    assert (cfg.loss_kl_coef, cfg.reward_kl_coef) == (0.05, 0.0)
    with pytest.raises(ValueError, match="kl_in_reward"):
        AlgorithmConfig(advantage="grpo", kl_coef=0.05, kl_in_reward=True)


# ----------------------------------------------------------------------------- policy_objective


def test_policy_objective_hand_derived():
    # Two tokens at ratio 1, A = (1, -1): pg = token-mean(-1, 1) = 0.
    # KL k1 with logp - ref = (ln 2, ln 2): beta .1 * ln 2. Entropy (2, 4), mean 3, coef .01: -.03.
    logp = t([[math.log(0.5), math.log(0.5)]])
    inp = LossInputs(
        logp, logp.clone(), t([[1.0, -1.0]]), t([[1.0, 1.0]]), ref_logp=logp - LN2, entropy=t([[2.0, 4.0]])
    )
    cfg = AlgorithmConfig(kl_coef=0.1, kl_kind="k1", entropy_coef=0.01)
    loss, m = policy_objective(inp, cfg)
    close(loss, t(0.1 * LN2 - 0.03))
    close(m["kl"], t(LN2))
    close(m["entropy"], t(3.0))
    # KL in the reward: the loss has no KL term and needs no reference log-probs.
    cfg = AlgorithmConfig(advantage="reinforce_pp", kl_coef=0.1, kl_in_reward=True)
    loss, m = policy_objective(LossInputs(logp, logp.clone(), t([[1.0, -1.0]]), t([[1.0, 1.0]])), cfg)
    close(loss, t(0.0))
    assert "kl" not in m
    with pytest.raises(ValueError, match="ref_logp"):
        policy_objective(LossInputs(logp, logp, t([[1.0, 1.0]]), t([[1.0, 1.0]])), AlgorithmConfig(kl_coef=0.1))


# ------------------------------------------------------------------ loop versus vectorised


def random_loss_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = (int(x) for x in torch.randint(1, 8, (2,), generator=g))
    old = -torch.rand(B, T, generator=g, dtype=F64) * 3
    logp = old + 0.4 * torch.randn(B, T, generator=g, dtype=F64)
    adv = torch.randn(B, T, generator=g, dtype=F64)
    lengths = torch.randint(0, T + 1, (B,), generator=g)  # empty rows included
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(F64)
    w = torch.rand(B, T, generator=g, dtype=F64) * 2
    return logp, old, adv, mask, w


def ref_clip_token(r, a, lo, hi, c):
    loss = -min(r * a, min(max(r, 1 - lo), 1 + hi) * a)
    if c is not None and a < 0:
        loss = min(loss, -c * a)
    return loss


def ref_agg(v, m, mode, norm):
    B, T = len(v), len(v[0])
    sums = [sum(v[b][k] * m[b][k] for k in range(T)) for b in range(B)]
    counts = [sum(m[b]) for b in range(B)]
    if mode == "token-mean":
        return sum(sums) / max(sum(counts), 1)
    if mode == "seq-mean-token-mean":
        return sum(s / max(c, 1) for s, c in zip(sums, counts)) / B
    if mode == "seq-mean-token-sum":
        return sum(sums) / B
    return sum(sums) / (B * (T if norm is None else norm))


@pytest.mark.parametrize("seed", range(20))
def test_ppo_clip_and_gspo_match_loop(seed):
    logp, old, adv, mask, w = random_loss_inputs(seed)
    lo, hi, c = 0.1 + 0.1 * (seed % 3), 0.3, (None, 2.5, 5.0)[seed % 3]
    cfg = AlgorithmConfig(clip_eps_low=lo, clip_eps_high=hi, dual_clip_c=c)
    B, T = logp.shape
    got, _ = POLICY_LOSSES["ppo_clip"](LossInputs(logp, old, adv, mask, is_weights=w), cfg)
    want = [[ref_clip_token(math.exp(logp[b, k] - old[b, k]), adv[b, k].item(), lo, hi, c) * w[b, k].item()
             for k in range(T)] for b in range(B)]
    close(got, t(want))
    got, _ = POLICY_LOSSES["gspo"](LossInputs(logp, old, adv, mask), cfg)
    for b in range(B):
        n = int(mask[b].sum())
        if n == 0:
            continue
        s = math.exp(sum((logp[b, k] - old[b, k]).item() for k in range(n)) / n)
        close(got[b, :n], t([ref_clip_token(s, adv[b, k].item(), lo, hi, c) for k in range(n)]))


@pytest.mark.parametrize("seed", range(20))
def test_agg_and_kl_match_loop(seed):
    logp, old, _, mask, w = random_loss_inputs(seed)
    v, m = w.tolist(), mask.tolist()
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        for norm in (None, 13.0):
            close(agg_loss(w, mask, mode, norm), t(ref_agg(v, m, mode, norm)))
    B, T = logp.shape
    for kind, f in (("k1", lambda x: x), ("k2", lambda x: x * x / 2), ("k3", lambda x: math.exp(-x) - 1 + x)):
        want = [[f((logp[b, k] - old[b, k]).item()) for k in range(T)] for b in range(B)]
        close(kl_penalty(logp, old, kind), t(want))
