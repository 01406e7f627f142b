"""Samples whose check failed for reasons not the policy's (``AdvantageInputs.valid`` False) are left out
of every estimator's statistics and get no advantage: hand-derived cases (float64, tol 1e-9), and the
bit-for-bit rule: with every sample valid, each estimator computes exactly what it did without ``valid``."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algorithms import ADVANTAGES, AdvantageInputs, AlgorithmConfig, drop_thin_groups, group_stats

TOL = 1e-9
F64 = torch.float64
EPS = 1e-6

# g0 = {1, 0, 1, failed}, g1 = {0, 1}. The failed sample's reward is whatever the failure left (here 0);
# with it, g0 would read {1, 0, 1, 0}: mean 1/2 instead of 2/3.
REWARDS = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
GROUPS = [0, 0, 0, 0, 1, 1]
VALID = [True, True, True, False, True, True]


def inputs(T: int = 1, valid=VALID, rewards=REWARDS) -> AdvantageInputs:
    return AdvantageInputs(torch.tensor(rewards, dtype=F64), torch.tensor(GROUPS), torch.ones(6, T, dtype=F64),
                           valid=None if valid is None else torch.tensor(valid))


def close(a, want):
    torch.testing.assert_close(a, torch.tensor(want, dtype=F64), rtol=0, atol=TOL)


def test_group_stats_count_only_the_valid_members():
    mean, std, n = group_stats(torch.tensor(REWARDS, dtype=F64), torch.tensor(GROUPS), torch.tensor(VALID))
    # g0's valid {1, 0, 1}: mean 2/3, deviations (1/3, -2/3, 1/3), unbiased var (1/9+4/9+1/9)/2 = 1/3.
    # g1 {0, 1}: mean 1/2, var (1/4+1/4)/1 = 1/2. The failed element reads its group's valid statistics.
    close(mean, [2 / 3] * 4 + [0.5] * 2)
    close(std, [1 / math.sqrt(3)] * 4 + [math.sqrt(0.5)] * 2)
    close(n, [3.0] * 4 + [2.0] * 2)


def test_grpo_with_a_failed_sample_excluded_hand_derived():
    # g0: (1 - 2/3) / (1/sqrt3 + eps) = 0.57735..., (0 - 2/3) / (1/sqrt3 + eps) = -1.15470...; the failed one 0.
    # g1: (0 - 1/2) / (sqrt(1/2) + eps) = -0.70710..., +0.70710...
    s0, s1 = 1 / math.sqrt(3), math.sqrt(0.5)
    want = [(1 / 3) / (s0 + EPS), (-2 / 3) / (s0 + EPS), (1 / 3) / (s0 + EPS), 0.0, -0.5 / (s1 + EPS), 0.5 / (s1 + EPS)]
    adv = ADVANTAGES["grpo"](inputs(T=3), AlgorithmConfig(std_eps=EPS))
    close(adv, [[w] * 3 for w in want])
    assert abs(adv[0, 0].item() - 0.5773502691896258) < 2e-6 and abs(adv[1, 0].item() + 1.1547005383792517) < 3e-6


def test_dr_grpo_and_rloo_with_a_failed_sample_excluded_hand_derived():
    # Dr.GRPO: r - mean over the valid: g0 (1/3, -2/3, 1/3, -), g1 (-1/2, 1/2).
    close(ADVANTAGES["dr_grpo"](inputs(), AlgorithmConfig()), [[1 / 3], [-2 / 3], [1 / 3], [0.0], [-0.5], [0.5]])
    # RLOO over the 3 valid of g0: 1 - mean(0, 1) = 0.5, 0 - mean(1, 1) = -1; g1: 0 - 1 = -1, 1 - 0 = 1.
    close(ADVANTAGES["rloo"](inputs(), AlgorithmConfig()), [[0.5], [-1.0], [0.5], [0.0], [-1.0], [1.0]])


def test_reinforce_pp_with_a_failed_sample_excluded_hand_derived():
    # group_baseline: returns (T = 1) are r - mean over the valid: (1/3, -2/3, 1/3, -, -1/2, 1/2); the batch
    # normalisation is over the 5 valid tokens: mean 0, unbiased var (1/9+4/9+1/9+1/4+1/4)/4 = 7/24.
    std = math.sqrt(7 / 24)
    want = [[1 / 3 / std], [-2 / 3 / std], [1 / 3 / std], [0.0], [-0.5 / std], [0.5 / std]]
    close(ADVANTAGES["reinforce_pp"](inputs(), AlgorithmConfig(std_eps=0.0, group_baseline=True)), want)
    # without the group baseline: rewards (1, 0, 1, -, 0, 1), mean 3/5, var (4*.16 + ... )/4 over the valid
    valid_r = [1.0, 0.0, 1.0, 0.0, 1.0]
    m = sum(valid_r) / 5
    s = math.sqrt(sum((r - m) ** 2 for r in valid_r) / 4)
    want = [[(1 - m) / s], [(0 - m) / s], [(1 - m) / s], [0.0], [(0 - m) / s], [(1 - m) / s]]
    close(ADVANTAGES["reinforce_pp"](inputs(), AlgorithmConfig(std_eps=0.0, group_baseline=False)), want)


def test_gae_gives_a_failed_sample_nothing_and_whitens_over_the_valid():
    values = torch.tensor([[0.5], [0.25], [0.5], [0.9], [0.1], [0.3]], dtype=F64)
    inp = inputs()
    inp.values = values
    raw = ADVANTAGES["gae"](inp, AlgorithmConfig(whiten_advantages=False))
    # T = 1: A = r - V on the valid rows, 0 on the failed one
    close(raw, [[0.5], [-0.25], [0.5], [0.0], [-0.1], [0.7]])
    white = ADVANTAGES["gae"](inp, AlgorithmConfig(whiten_advantages=True, std_eps=0.0))
    a = torch.tensor([0.5, -0.25, 0.5, -0.1, 0.7], dtype=F64)
    w = (a - a.mean()) / a.std()
    close(white, [[w[0]], [w[1]], [w[2]], [0.0], [w[3]], [w[4]]])


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp", "gae"])
def test_a_failed_sample_reward_never_leaks_into_its_group(name):
    """Whatever a failure left in the reward (0, -5, NaN), the other samples' advantages are the same."""
    cfgs = {"grpo": AlgorithmConfig(std_eps=EPS), "reinforce_pp": AlgorithmConfig(group_baseline=True)}
    outs = []
    for junk in (0.0, -5.0, float("nan")):
        inp = inputs(T=2, rewards=REWARDS[:3] + [junk] + REWARDS[4:])
        inp.values = torch.full((6, 2), 0.25, dtype=F64)
        outs.append(ADVANTAGES[name](inp, cfgs.get(name, AlgorithmConfig())))
    for out in outs[1:]:
        assert torch.equal(out, outs[0]), name
    assert torch.equal(outs[0][3], torch.zeros(2, dtype=F64))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp", "gae"])
def test_every_sample_valid_is_bit_identical_to_no_valid_at_all(name):
    """The bit-for-bit rule: a run in which no check fails trains on exactly the numbers it did before."""
    g = torch.Generator().manual_seed(0)
    B, T = 24, 7
    for dtype in (torch.float32, F64):
        rewards = torch.rand(B, generator=g).to(dtype)
        mask = (torch.rand(B, T, generator=g) > 0.2).to(dtype)
        group_ids = torch.arange(B) // 4
        values = torch.randn(B, T, generator=g).to(dtype)
        for cfg in (AlgorithmConfig(), AlgorithmConfig(scale_std=False), AlgorithmConfig(group_baseline=False),
                    AlgorithmConfig(whiten_advantages=False)):
            old = ADVANTAGES[name](AdvantageInputs(rewards, group_ids, mask, values=values), cfg)
            new = ADVANTAGES[name](AdvantageInputs(rewards, group_ids, mask, values=values,
                                                   valid=torch.ones(B, dtype=torch.bool)), cfg)
            assert torch.equal(old, new), (name, dtype, cfg)


def test_drop_thin_groups():
    gid = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 4])
    ok = torch.tensor([True, True, False, True, False, False, False, False, True, False])
    # g0 keeps its 2 valid; g1 has 1 valid of 3: dropped; g2 none; a group of one keeps a valid sample
    want = [True, True, False, False, False, False, False, False, True, False]
    assert drop_thin_groups(ok, gid).tolist() == want
