"""Advantage estimators: hand-derived cases (float64, tol 1e-9) and loop-versus-vectorised checks."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from rlvr.algorithms import (
    ADVANTAGES,
    AdvantageInputs,
    AlgorithmConfig,
    compute_gae,
    discounted_returns,
    gae_advantages_and_returns,
    last_token_rewards,
)

TOL = 1e-9
F64 = torch.float64


def t(x):
    return torch.tensor(x, dtype=F64)


def close(a, b, tol=TOL):
    torch.testing.assert_close(a, t(b) if not isinstance(b, torch.Tensor) else b, rtol=0, atol=tol)


# Rewards of three interleaved groups: g0 = {1, 0, 0}, g1 = {2, 4}, g2 = {5} (a group of one).
REWARDS = [1.0, 2.0, 0.0, 5.0, 0.0, 4.0]
GROUPS = [0, 1, 0, 2, 0, 1]


def outcome_inputs(T=3):
    return AdvantageInputs(rewards=t(REWARDS), group_ids=torch.tensor(GROUPS), mask=torch.ones(6, T, dtype=F64))


def test_grpo_hand_derived():
    # g0: mean 1/3, deviations (2/3, -1/3, -1/3), unbiased var (4/9+1/9+1/9)/2 = 1/3, std 1/sqrt(3).
    # g1: mean 3, deviations (-1, 1), var 2/1, std sqrt(2).  g2: deviation 0, std 0 -> 0/(0+eps) = 0.
    eps = 1e-6
    s0, s1 = 1 / math.sqrt(3), math.sqrt(2)
    want = [(2 / 3) / (s0 + eps), -1 / (s1 + eps), (-1 / 3) / (s0 + eps), 0.0, (-1 / 3) / (s0 + eps), 1 / (s1 + eps)]
    adv = ADVANTAGES["grpo"](outcome_inputs(), AlgorithmConfig(std_eps=eps))
    close(adv, t(want)[:, None].expand(6, 3))
    # 2/sqrt(3) = 1.1547005..., 1/sqrt(2) = 0.7071067...: the eps shifts them by < 3e-6.
    assert abs(adv[0, 0].item() - 1.1547005383792517) < 3e-6


def test_grpo_without_std_is_dr_grpo():
    # r - mean_group: g0 (2/3, -1/3, -1/3), g1 (-1, 1), g2 (0).
    want = t([2 / 3, -1.0, -1 / 3, 0.0, -1 / 3, 1.0])[:, None].expand(6, 3)
    close(ADVANTAGES["dr_grpo"](outcome_inputs(), AlgorithmConfig()), want)
    close(ADVANTAGES["grpo"](outcome_inputs(), AlgorithmConfig(scale_std=False)), want)


def test_rloo_hand_derived():
    # g0 = {1, 0, 0}: 1 - mean(0, 0) = 1; 0 - mean(1, 0) = -0.5 (twice).  g1 = {2, 4}: 2-4, 4-2.
    # A group of one has no other sample to form a baseline: 0.
    want = t([1.0, -2.0, -0.5, 0.0, -0.5, 2.0])[:, None].expand(6, 3)
    close(ADVANTAGES["rloo"](outcome_inputs(), AlgorithmConfig()), want)


def test_outcome_advantages_are_zero_off_the_mask():
    inp = outcome_inputs(T=4)
    inp.mask[0, 2:] = 0
    for name in ("grpo", "dr_grpo", "rloo", "reinforce_pp"):
        adv = ADVANTAGES[name](inp, AlgorithmConfig(std_eps=1e-6))
        assert torch.all(adv[0, 2:] == 0), name


def test_reinforce_pp_global_normalisation_hand_derived():
    # T = 1 so returns are the rewards: (1, 0, 1, 1); mean 0.75, deviations (.25, -.75, .25, .25),
    # unbiased var (.0625+.5625+.0625+.0625)/3 = .25, std .5 -> (0.5, -1.5, 0.5, 0.5).
    inp = AdvantageInputs(t([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]), torch.ones(4, 1, dtype=F64))
    close(ADVANTAGES["reinforce_pp"](inp, AlgorithmConfig(std_eps=0.0)), t([[0.5], [-1.5], [0.5], [0.5]]))
    # With the group baseline: (1-.5, 0-.5, 1-1, 1-1) = (.5, -.5, 0, 0); mean 0, var .5/3 = 1/6,
    # std 1/sqrt(6) -> (.5 sqrt 6, -.5 sqrt 6, 0, 0) = (1.2247448..., -1.2247448..., 0, 0).
    h = 0.5 * math.sqrt(6)
    adv = ADVANTAGES["reinforce_pp"](inp, AlgorithmConfig(std_eps=0.0, group_baseline=True))
    close(adv, t([[h], [-h], [0.0], [0.0]]))


def test_reinforce_pp_token_returns_hand_derived():
    # Row 0 has 2 response tokens, reward 1 on its last; row 1 has 3, reward 0. gamma = 1:
    # returns (1, 1 | 0, 0, 0) over the 5 masked tokens; mean .4, var (2*.36 + 3*.16)/4 = .3.
    inp = AdvantageInputs(rewards=t([1.0, 0.0]), group_ids=torch.tensor([0, 1]), mask=t([[1, 1, 0], [1, 1, 1]]))
    s = math.sqrt(0.3)
    adv = ADVANTAGES["reinforce_pp"](inp, AlgorithmConfig(std_eps=0.0))
    close(adv, t([[0.6 / s, 0.6 / s, 0.0], [-0.4 / s, -0.4 / s, -0.4 / s]]))


def test_discounted_returns_skip_masked_positions():
    # gamma .5, mask (1, 0, 1), reward 1 on t=2: G2 = 1, t=1 is not a step, G0 = .5 * G2 = .5.
    r = t([[0.0, 7.0, 1.0]])
    close(discounted_returns(r, t([[1, 0, 1]]), 0.5), t([[0.5, 0.0, 1.0]]))


def test_last_token_rewards():
    out = last_token_rewards(t([3.0, 4.0, 5.0]), t([[1, 1, 0], [1, 1, 1], [0, 0, 0]]))
    close(out, t([[0, 3, 0], [0, 0, 4], [0, 0, 0]]))


def test_gae_hand_derived():
    # Row 0: r = (0, 0, 1), V = (.5, .6, .7), gamma .9, lambda .8 (gamma*lambda = .72).
    #   d2 = 1 - .7 = .3                A2 = .3
    #   d1 = .9*.7 - .6 = .03           A1 = .03 + .72*.3  = .246
    #   d0 = .9*.6 - .5 = .04           A0 = .04 + .72*.246 = .21712
    #   returns = A + V = (.71712, .846, 1.0)
    # Row 1: mask (1, 0, 1), V = (.5, 9, .7): t=1 is skipped.
    #   d2 = .3, A2 = .3;  d0 = .9*.7 - .5 = .13, A0 = .13 + .72*.3 = .346;  returns (.846, 0, 1.0)
    rewards = t([[0, 0, 1.0], [0, 0, 1.0]])
    values = t([[0.5, 0.6, 0.7], [0.5, 9.0, 0.7]])
    mask = t([[1, 1, 1], [1, 0, 1]])
    adv, ret = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    close(adv, t([[0.21712, 0.246, 0.3], [0.346, 0.0, 0.3]]))
    close(ret, t([[0.71712, 0.846, 1.0], [0.846, 0.0, 1.0]]))
    # gamma = lambda = 1: A_t = R - V_t, the Monte-Carlo advantage.
    adv, ret = compute_gae(rewards[:1], values[:1], mask[:1], gamma=1.0, lam=1.0)
    close(adv, t([[0.5, 0.4, 0.3]]))
    close(ret, t([[1.0, 1.0, 1.0]]))


def test_gae_registry_whitens_and_puts_reward_on_last_token():
    inp = AdvantageInputs(
        rewards=t([1.0]), group_ids=torch.tensor([0]), mask=t([[1, 1, 1]]), values=t([[0.5, 0.6, 0.7]])
    )
    cfg = AlgorithmConfig(advantage="gae", gamma=0.9, gae_lambda=0.8, whiten_advantages=False)
    close(ADVANTAGES["gae"](inp, cfg), t([[0.21712, 0.246, 0.3]]))
    # whitened: mean of (.21712, .246, .3) = .25437333..., then divided by the unbiased std.
    a = [0.21712, 0.246, 0.3]
    m, s = statistics.mean(a), statistics.stdev(a)
    cfg = AlgorithmConfig(advantage="gae", gamma=0.9, gae_lambda=0.8, std_eps=0.0)
    close(ADVANTAGES["gae"](inp, cfg), t([[(x - m) / s for x in a]]))
    with pytest.raises(ValueError, match="values"):
        ADVANTAGES["gae"](AdvantageInputs(t([1.0]), torch.tensor([0]), t([[1.0]])), cfg)


# ---------------------------------------------------------------- loop versus vectorised


def random_batch(seed: int, holes: bool = False):
    g = torch.Generator().manual_seed(seed)
    n_groups = int(torch.randint(1, 5, (1,), generator=g))
    sizes = torch.randint(1, 5, (n_groups,), generator=g).tolist()
    group_ids = torch.tensor(sum(([i] * s for i, s in enumerate(sizes)), []))
    group_ids = group_ids[torch.randperm(len(group_ids), generator=g)]
    B, T = len(group_ids), int(torch.randint(1, 8, (1,), generator=g))
    rewards = torch.randint(0, 3, (B,), generator=g).to(F64) / 2  # ties on purpose
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(F64)
    if holes:
        mask = mask * (torch.rand(B, T, generator=g) > 0.3).to(F64)
    values = torch.randn(B, T, generator=g, dtype=F64)
    token_rewards = torch.randn(B, T, generator=g, dtype=F64) * mask
    return AdvantageInputs(rewards, group_ids, mask, values=values, token_rewards=token_rewards)


def ref_group_outcome(inp, kind, eps):
    r, gid = inp.rewards.tolist(), inp.group_ids.tolist()
    out = []
    for i, ri in enumerate(r):
        grp = [r[j] for j in range(len(r)) if gid[j] == gid[i]]
        mean = sum(grp) / len(grp)
        std = statistics.stdev(grp) if len(grp) > 1 else 0.0
        if kind == "grpo":
            out.append((ri - mean) / (std + eps))
        elif kind == "dr_grpo":
            out.append(ri - mean)
        else:  # rloo
            others = [r[j] for j in range(len(r)) if gid[j] == gid[i] and j != i]
            out.append(ri - sum(others) / len(others) if others else 0.0)
    return t(out)[:, None] * inp.mask


def valid_positions(mask_row):
    return [k for k, m in enumerate(mask_row) if m > 0]


def ref_whiten(x, mask, eps):
    vals = [x[b][k] for b in range(len(x)) for k in valid_positions(mask[b])]
    if not vals:
        return [[0.0] * len(row) for row in x]
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / max(len(vals) - 1, 1)
    return [[(x[b][k] - mean) / (math.sqrt(var) + eps) * mask[b][k] for k in range(len(x[b]))] for b in range(len(x))]


def ref_token_rewards(inp, use_token_rewards):
    if use_token_rewards:
        return inp.token_rewards.tolist()
    out = []
    for b, row in enumerate(inp.mask.tolist()):
        pos = valid_positions(row)
        out.append([inp.rewards[b].item() if pos and k == pos[-1] else 0.0 for k in range(len(row))])
    return out


def ref_reinforce_pp(inp, cfg, use_token_rewards):
    mask = inp.mask.tolist()
    r = ref_token_rewards(inp, use_token_rewards)
    if cfg.group_baseline:
        rw, gid = inp.rewards.tolist(), inp.group_ids.tolist()
        for b, row in enumerate(mask):
            grp = [rw[j] for j in range(len(rw)) if gid[j] == gid[b]]
            pos = valid_positions(row)
            if pos:
                r[b][pos[-1]] -= sum(grp) / len(grp)
    returns = []
    for b, row in enumerate(mask):
        g_row, running = [0.0] * len(row), 0.0
        for k in reversed(valid_positions(row)):
            running = r[b][k] + cfg.gamma * running
            g_row[k] = running
        returns.append(g_row)
    return t(ref_whiten(returns, mask, cfg.std_eps))


def ref_gae_textbook(rewards, values, mask, gamma, lam):
    """Per row: compress the valid tokens, run the textbook reverse recursion, scatter back."""
    adv_out, ret_out = [], []
    for r_row, v_row, m_row in zip(rewards, values, mask):
        pos = valid_positions(m_row)
        r = [r_row[k] for k in pos]
        v = [v_row[k] for k in pos]
        a = [0.0] * len(pos)
        last = 0.0
        for i in reversed(range(len(pos))):
            v_next = v[i + 1] if i + 1 < len(pos) else 0.0
            last = r[i] + gamma * v_next - v[i] + gamma * lam * last
            a[i] = last
        a_row, g_row = [0.0] * len(m_row), [0.0] * len(m_row)
        for i, k in enumerate(pos):
            a_row[k], g_row[k] = a[i], a[i] + v[i]
        adv_out.append(a_row)
        ret_out.append(g_row)
    return adv_out, ret_out


@pytest.mark.parametrize("seed", range(25))
def test_outcome_estimators_match_loop(seed):
    inp = random_batch(seed)
    for kind in ("grpo", "dr_grpo", "rloo"):
        close(ADVANTAGES[kind](inp, AlgorithmConfig(std_eps=1e-4)), ref_group_outcome(inp, kind, 1e-4))


@pytest.mark.parametrize("seed", range(25))
def test_reinforce_pp_matches_loop(seed):
    inp = random_batch(seed, holes=seed % 2 == 1)
    for baseline in (False, True):
        for gamma in (1.0, 0.7):
            cfg = AlgorithmConfig(advantage="reinforce_pp", group_baseline=baseline, gamma=gamma, std_eps=1e-3)
            close(ADVANTAGES["reinforce_pp"](inp, cfg), ref_reinforce_pp(inp, cfg, True))
            scalar = AdvantageInputs(inp.rewards, inp.group_ids, inp.mask)
            close(ADVANTAGES["reinforce_pp"](scalar, cfg), ref_reinforce_pp(scalar, cfg, False))


@pytest.mark.parametrize("seed", range(25))
def test_gae_matches_reverse_loop_reference(seed):
    inp = random_batch(seed, holes=seed % 2 == 1)
    g = torch.Generator().manual_seed(1000 + seed)
    gamma, lam = torch.rand(2, generator=g, dtype=F64).tolist()
    lists = (inp.token_rewards.tolist(), inp.values.tolist(), inp.mask.tolist())
    for gm, lm in ((gamma, lam), (1.0, 1.0), (1.0, 0.0)):
        adv, ret = compute_gae(inp.token_rewards, inp.values, inp.mask, gm, lm)
        want_adv, want_ret = ref_gae_textbook(*lists, gm, lm)
        close(adv, t(want_adv))
        close(ret, t(want_ret))
    # The registry path with whitening = textbook GAE, then whitening over the batch's tokens.
    cfg = AlgorithmConfig(advantage="gae", gamma=gamma, gae_lambda=lam, std_eps=1e-3)
    adv, ret = gae_advantages_and_returns(inp, cfg)
    want_adv, want_ret = ref_gae_textbook(*lists, gamma, lam)
    close(adv, t(ref_whiten(want_adv, inp.mask.tolist(), 1e-3)))
    close(ret, t(want_ret))
