"""Per-token policy versions, per-token importance sampling (tis, mis), the staleness histogram and the
max_staleness guard, on hand-built episodes whose numbers are derived by hand below.

The batch mixes three policy versions (3, 4, 5) and is trained by a learner at version 5:

    episode 0: prompt [1 2 3], turn 0 [10 11] by version 3, observation [50], turn 1 [12] by version 4
    episode 1: prompt [1 2 3], one turn [20 21] by version 5
    episode 2: prompt [1 2 3], one turn [30] by version 4

Target columns (T = 6; column t describes token t + 1):
    episode 0: 2 3 10 11 50 12 -> versions -1 -1 3 3 -1 4
    episode 1: 2 3 20 21 .  .  -> versions -1 -1 5 5 -1 -1
    episode 2: 2 3 30 .  .  .  -> versions -1 -1 4 -1 -1 -1
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rlvr.algorithms import (
    ADVANTAGES,
    AlgorithmConfig,
    LossInputs,
    importance_weights,
    policy_objective,
    truncated_is_weights,
)
from rlvr.envs.trajectory import Budget, Trajectory, append_turn, one_turn, record_step
from rlvr.train.episodes import build_episode_batch
from rlvr.train.staleness import stale_samples, staleness_metrics, token_staleness

LN = math.log
# the engine's probability of each model token when it sampled it, and the trainer's under this update's weights
ENGINE = {10: 0.2, 11: 0.5, 12: 0.3, 20: 0.4, 21: 0.25, 30: 0.3}
TRAINER = {10: 0.5, 11: 0.4, 12: 0.3, 20: 0.1, 21: 0.45, 30: 0.9}
# model tokens in row-major order of the batch, with their target column
MODEL_CELLS = [(0, 2, 10), (0, 3, 11), (0, 5, 12), (1, 2, 20), (1, 3, 21), (2, 2, 30)]


def three_version_episodes(versions=(3, 4, 5, 4)) -> list[Trajectory]:
    v0a, v0b, v1, v2 = versions
    b = Budget(max_turns=2, max_turn_tokens=4)
    e0 = append_turn(Trajectory.start([1, 2, 3], b), [10, 11], [LN(ENGINE[10]), LN(ENGINE[11])], v0a)
    e0 = record_step(e0, [50], False)
    e0 = record_step(append_turn(e0, [12], [LN(ENGINE[12])], v0b), None, True)
    e1 = one_turn([1, 2, 3], [20, 21], [LN(ENGINE[20]), LN(ENGINE[21])], "stop", version=v1)
    e2 = one_turn([1, 2, 3], [30], [LN(ENGINE[30])], "stop", version=v2)
    return [e0, e1, e2]


def trainer_logp(shape) -> torch.Tensor:
    old = torch.zeros(shape)
    for row, col, tok in MODEL_CELLS:
        old[row, col] = LN(TRAINER[tok])
    return old


def at_model_cells(x: torch.Tensor) -> list[float]:
    return [float(x[row, col]) for row, col, _ in MODEL_CELLS]


def test_the_batch_carries_each_tokens_version_through_sorting_and_trimming():
    batch, _ = build_episode_batch([three_version_episodes()], [[1.0, 0.0, 1.0]], 0, AlgorithmConfig(), 4)
    want = [[-1, -1, 3, 3, -1, 4], [-1, -1, 5, 5, -1, -1], [-1, -1, 4, -1, -1, -1]]
    assert batch.versions.dtype == torch.long and batch.versions.tolist() == want
    order = torch.tensor([2, 0, 1])
    assert batch.select(order).versions.tolist() == [want[2], want[0], want[1]]
    short = batch.select(torch.tensor([1, 2])).trimmed()  # the micro-batch of the two short rows, cut to width 5
    assert short.versions.tolist() == [want[1][:4], want[2][:4]]
    assert short.engine_logp.shape == short.versions.shape


def test_a_turn_that_spans_an_in_flight_load_keeps_one_version_per_token():
    """An engine that loaded version 4 after the first token of a turn (train.async.in_flight) reports the
    versions per token; the turn keeps them through the checkpoint's JSON and into the batch, so the guard sees
    the older token: with the learner at 5 and k = 1, the sample is dropped; with k = 2 it is trained."""
    b = Budget(max_turns=1, max_turn_tokens=4)
    e = append_turn(Trajectory.start([1, 2, 3], b), [10, 11], [LN(ENGINE[10]), LN(ENGINE[11])], [3, 4])
    assert e.versions() == [-1, -1, -1, 3, 4]
    assert Trajectory.from_json(e.to_json()) == e
    same = append_turn(Trajectory.start([1, 2, 3], b), [10, 11], [0.0, 0.0], [4, 4])
    assert same.segments[0].version == 4  # one version for the whole turn is stored as one
    with pytest.raises(ValueError, match="2 ids but 1 versions"):
        append_turn(Trajectory.start([1, 2, 3], b), [10, 11], [0.0, 0.0], [4])
    e = record_step(e, None, True)
    other = one_turn([1, 2, 3], [20, 21], [LN(ENGINE[20]), LN(ENGINE[21])], "stop", version=5)
    for k, valid in ((1, [False, True, True]), (2, [True, True, True])):
        batch, inputs = build_episode_batch([[e, other, other]], [[1.0, 0.0, 1.0]], 0, AlgorithmConfig(), 4,
                                            learner_version=5, max_staleness=k)
        assert batch.versions[0, 2:4].tolist() == [3, 4]
        assert inputs.valid.tolist() == valid


def test_per_token_is_weights_use_each_tokens_own_behaviour_logprob():
    """tis: min(p_trainer / p_engine, 2); mis: the ratio inside [1/2, 2], else 0; one ratio per token,
    whichever version sampled it."""
    batch, _ = build_episode_batch([three_version_episodes()], [[1.0, 0.0, 1.0]], 0, AlgorithmConfig(), 4)
    old = trainer_logp(batch.engine_logp.shape)
    # ratios by hand: .5/.2 = 2.5, .4/.5 = .8, .3/.3 = 1, .1/.4 = .25, .45/.25 = 1.8, .9/.3 = 3
    tis, tis_m = importance_weights(old, batch.engine_logp, batch.response_mask, "tis", 2.0)
    assert at_model_cells(tis) == pytest.approx([2.0, 0.8, 1.0, 0.25, 1.8, 2.0], abs=1e-6)
    assert float(tis_m["clipped_frac"]) == pytest.approx(2 / 6)  # 2.5 and 3 exceed the cap
    assert float(tis_m["weight_mean"]) == pytest.approx((2 + 0.8 + 1 + 0.25 + 1.8 + 2) / 6, abs=1e-6)
    mis, mis_m = importance_weights(old, batch.engine_logp, batch.response_mask, "mis", 2.0)
    assert at_model_cells(mis) == pytest.approx([0.0, 0.8, 1.0, 0.0, 1.8, 0.0], abs=1e-6)
    assert float(mis_m["masked_frac"]) == pytest.approx(3 / 6)  # 2.5 and 3 above 2, .25 below 1/2
    assert float(mis_m["weight_mean"]) == pytest.approx((0.8 + 1 + 1.8) / 6, abs=1e-6)
    assert not tis.requires_grad and not mis.requires_grad


def test_a_masked_token_carries_no_gradient_and_stays_in_the_normaliser():
    batch, _ = build_episode_batch([three_version_episodes()], [[1.0, 0.0, 1.0]], 0, AlgorithmConfig(), 4)
    old = trainer_logp(batch.engine_logp.shape)
    w, _ = importance_weights(old, batch.engine_logp, batch.response_mask, "mis", 2.0)
    logp = old.clone().requires_grad_()
    adv = torch.ones_like(old) * batch.response_mask
    loss, _ = policy_objective(LossInputs(logp, old, adv, batch.response_mask, is_weights=w), AlgorithmConfig())
    loss.backward()
    # ppo_clip at ratio 1 with A = 1: d(-w r A)/d logp = -w per token, over the 6 model tokens (token-mean)
    assert at_model_cells(logp.grad) == pytest.approx([0.0, -0.8 / 6, -1 / 6, 0.0, -1.8 / 6, 0.0], abs=1e-6)


def test_staleness_histogram_of_three_versions():
    batch, _ = build_episode_batch([three_version_episodes()], [[1.0, 0.0, 1.0]], 0, AlgorithmConfig(), 4)
    # learner at version 5: staleness 2 2 1 | 0 0 | 1
    assert at_model_cells(token_staleness(batch.versions, 5)) == [2, 2, 1, 0, 0, 1]
    m = staleness_metrics(batch.versions, 5, max_staleness=2)
    assert m == pytest.approx({"staleness/tokens_0": 2 / 6, "staleness/tokens_1": 2 / 6, "staleness/tokens_2": 2 / 6,
                               "staleness/tokens_over": 0.0, "staleness/token_mean": 1.0, "stale_dropped": 0.0})
    m = staleness_metrics(batch.versions, 5, max_staleness=1)  # episode 0's turn 0 is two versions old
    assert m == pytest.approx({"staleness/tokens_0": 2 / 6, "staleness/tokens_1": 2 / 6, "staleness/tokens_over": 2 / 6,
                               "staleness/token_mean": 1.0, "stale_dropped": 1.0})
    with pytest.raises(ValueError, match="newer than the learner's version 4"):
        token_staleness(batch.versions, 4)


def test_a_sample_with_one_too_old_token_is_dropped_whole():
    """Episode 0's second turn is only one version old, but its first is two: with max_staleness 1 the
    whole episode is out of the loss; its group keeps two valid samples, so the group trains."""
    batch, inp = build_episode_batch([three_version_episodes()], [[1.0, 0.0, 1.0]], 0, AlgorithmConfig(), 4,
                                     learner_version=5, max_staleness=1)
    assert inp.valid.tolist() == [False, True, True]
    assert batch.response_mask[0].sum() == 0 and batch.response_mask[1:].sum() == 3
    assert batch.versions[0].tolist() == [-1, -1, 3, 3, -1, 4]  # the data is kept, only its loss is not
    kept, _ = build_episode_batch([three_version_episodes()], [[1.0, 0.0, 1.0]], 0, AlgorithmConfig(), 4,
                                  learner_version=5, max_staleness=2)
    assert kept.response_mask.sum() == 6
    # an agent sample of two rows (lead marks its first): one old row drops both
    versions = torch.tensor([[-1, 5], [-1, 2], [-1, 5]])
    assert stale_samples(versions, 5, 2, lead=torch.tensor([True, False, True])).tolist() == [True, True, False]


def four_samples(first_version: int, first_ids=(7, 8, 9)) -> list[Trajectory]:
    """A group of four one-turn episodes on one prompt; the first sampled by ``first_version``, the rest by 5."""
    lp = [LN(0.5)] * 3
    return [one_turn([1, 2, 3, 4], list(first_ids), lp, "stop", version=first_version)] + \
        [one_turn([1, 2, 3, 4], [10 + i, 11 + i, 12 + i], lp, "stop", version=5) for i in range(3)]


def test_a_too_old_sample_is_out_of_the_baseline_and_gets_no_gradient():
    """Rewards 1 0 1 0; sample 0 was sampled by version 2, the learner is at 5, max_staleness 2. The baseline
    is the mean of the other three, 1/3 (dr_grpo-style: grpo without the std), so their advantages are
    -1/3, 2/3, -1/3 and sample 0's is 0; its log-probs get no gradient."""
    algo = AlgorithmConfig(scale_std=False)
    batch, inp = build_episode_batch([four_samples(2)], [[1.0, 0.0, 1.0, 0.0]], 0, algo, 3,
                                     learner_version=5, max_staleness=2)
    adv = ADVANTAGES["grpo"](inp, algo)  # [B, T]
    completion = slice(3, 6)  # targets of the three completion tokens
    want = torch.tensor([0.0, -1 / 3, 2 / 3, -1 / 3])[:, None].expand(4, 3)
    torch.testing.assert_close(adv[:, completion], want, rtol=0, atol=1e-7)
    logp = batch.engine_logp.clone().requires_grad_()
    w, _ = importance_weights(logp.detach(), batch.engine_logp, batch.response_mask, "tis", 2.0)
    loss, _ = policy_objective(LossInputs(logp, logp.detach(), adv, batch.response_mask, is_weights=w), algo)
    loss.backward()
    assert torch.equal(logp.grad[0], torch.zeros_like(logp.grad[0]))
    assert bool((logp.grad[1:, completion] != 0).all())
    # without the guard the same sample is in the baseline (mean 1/2) and trains
    _, unguarded = build_episode_batch([four_samples(2)], [[1.0, 0.0, 1.0, 0.0]], 0, algo, 3)
    assert ADVANTAGES["grpo"](unguarded, algo)[0, completion].tolist() == pytest.approx([0.5] * 3)


def test_tis_with_one_version_is_todays_truncated_is_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    old, engine = torch.randn(4, 9, generator=g), torch.randn(4, 9, generator=g)
    mask = (torch.rand(4, 9, generator=g) > 0.3).float()
    w, _ = importance_weights(old, engine, mask, "tis", 1.7)
    assert torch.equal(w, truncated_is_weights(old, engine, 1.7))
    assert torch.equal(w, (old - engine).clamp(max=20.0).exp().clamp(max=1.7))  # the formula before per-token modes


def test_mis_config_errors_name_the_field(tiny_cfg):
    from rlvr.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match="algorithm.is_mode=mis needs algorithm.is_cap"):
        tiny_cfg(**{"algorithm.is_mode": "mis"})
    with pytest.raises((ConfigError, ValueError), match="is_cap: is_mode=mis"):
        AlgorithmConfig(is_mode="mis", is_cap=1.0)
    assert tiny_cfg(**{"algorithm.is_mode": "mis", "train.async": True}).algorithm.is_cap == 2.0


# ------------------------------------------------------------------------------- the learner, end to end


@pytest.fixture(scope="module")
def micro_policy():
    """A random-init micro Llama (two layers of 32), enough to take real optimiser steps on token ids < 64."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config).float()


def learner_update(policy, batch, algo: AlgorithmConfig, train=None):
    from rlvr.config import OptimConfig, TrainLoopConfig
    from rlvr.train.learner import Learner

    model = copy.deepcopy(policy)
    learner = Learner(model, algo, OptimConfig(lr=1e-2), train or TrainLoopConfig(micro_batch_size=2))
    learner.opt = torch.optim.SGD(model.parameters(), lr=0.5)  # the update is the gradient itself
    metrics = learner.step(batch)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), metrics


def guarded_batch(policy, first_ids, first_reward: float, learner_version: int | None, algo: AlgorithmConfig):
    """``four_samples`` with sample 0 by version 2, packed with the guard (learner ``learner_version``,
    max_staleness 2) or without it (None); the engine's log-probs are the policy's own, moved by -0.9, 0 and
    +0.9 nats in turn, so tis clips a third of the tokens and mis masks two thirds."""
    from rlvr.train.learner import token_logp_and_entropy

    kw = {} if learner_version is None else {"learner_version": learner_version, "max_staleness": 2}
    batch, inp = build_episode_batch([four_samples(2, first_ids)], [[first_reward, 0.0, 1.0, 0.0]], 0, algo, 3, **kw)
    batch.advantages = ADVANTAGES["grpo"](inp, algo)
    with torch.no_grad():
        logp, _ = token_logp_and_entropy(policy, batch.input_ids, batch.attention_mask)
    shift = torch.tensor([-0.9, 0.0, 0.9]).repeat(logp.shape[1] // 3)  # [T] ratios 2.46, 1, 0.41 along a row
    batch.engine_logp = (logp + shift) * (batch.versions >= 0)
    return batch


@pytest.mark.e2e
def test_the_learner_never_trains_on_a_too_old_sample(micro_policy):
    """Two batches that differ only in the too-old sample (its tokens and its reward) give the same update,
    bit for bit, under tis and under mis; without the guard they do not."""
    before = torch.cat([p.detach().flatten() for p in micro_policy.parameters()])
    for mode, share in (("tis", "is/clipped_frac"), ("mis", "is/masked_frac")):
        algo = AlgorithmConfig(is_cap=2.0, is_mode=mode)
        a, m = learner_update(micro_policy, guarded_batch(micro_policy, (7, 8, 9), 1.0, 5, algo), algo)
        b, _ = learner_update(micro_policy, guarded_batch(micro_policy, (9, 8, 7), 0.0, 5, algo), algo)
        assert torch.equal(a, b), mode
        assert not torch.equal(a, before), mode  # the three fresh samples did train
        assert m[share] == pytest.approx(1 / 3 if mode == "tis" else 2 / 3) and m["is/weight_mean"] > 0, mode
    algo = AlgorithmConfig(is_cap=2.0)
    a, _ = learner_update(micro_policy, guarded_batch(micro_policy, (7, 8, 9), 1.0, None, algo), algo)
    b, _ = learner_update(micro_policy, guarded_batch(micro_policy, (9, 8, 7), 0.0, None, algo), algo)
    assert not torch.equal(a, b)


@pytest.mark.e2e
def test_versions_do_not_change_the_learners_numbers(micro_policy):
    """tis with every token at one version: the same update and metrics as a batch without versions."""
    algo = AlgorithmConfig(is_cap=2.0)
    batch = guarded_batch(micro_policy, (7, 8, 9), 1.0, None, algo)
    batch.versions = torch.where(batch.versions >= 0, 4, -1)
    bare = copy.copy(batch)
    bare.versions = None
    a, ma = learner_update(micro_policy, batch, algo)
    b, mb = learner_update(micro_policy, bare, algo)
    assert torch.equal(a, b) and ma == mb
