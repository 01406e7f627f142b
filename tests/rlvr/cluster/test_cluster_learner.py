"""The data-parallel learner (rlvr.cluster.learner_group) on a local Ray instance and gloo.

Rollouts are real: the micro model samples groups with the HF engine, the task's rubric scores
them, and ``rlvr.train.batch.build_batch`` packs them, so shards carry real group structure (prompt
lengths differ between groups, completion lengths within them). Two ranks must take the update
one process takes on the whole batch; a killed rank must stop the step with an error naming it.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from helpers import CASES, batches, sample_scored
from helpers import learner_config as config

from rlvr.cluster.learner_group import LearnerGroup, LearnerRankError, combine_metrics, shard_by_groups
from rlvr.config import TrainConfig
from rlvr.pipeline import ScoredGroup
from rlvr.train.batch import build_batch
from rlvr.train.side import build_policy_side


@pytest.fixture
def ray_local(ray_instance):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # rank 0 beside rank 1 on a 2-core machine, as the ranks get cluster.cpus_per_rank
    yield ray_instance
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scored(micro_model) -> list[ScoredGroup]:
    return sample_scored(micro_model)


def one_process(cfg: TrainConfig, model_dir: str, scored: list[ScoredGroup]):
    """The reference: today's single learner (and critic) on the whole batch, two steps."""
    torch.manual_seed(cfg.train.seed)
    side = build_policy_side(cfg, model_dir, "cpu")
    for batch, adv_in in batches(cfg, scored, side.critic):
        side.learner.step(batch)
        if side.critic is not None:
            side.critic.step(batch, adv_in)
    return side


def two_ranks(cfg: TrainConfig, model_dir: str, scored: list[ScoredGroup]):
    """Rank 0 here, rank 1 a Ray actor; the same two steps through the learner group."""
    cfg = cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"learner_ranks": 2, "timeout_s": 60})})
    torch.manual_seed(cfg.train.seed)
    group = LearnerGroup(cfg, model_dir)
    side = group.side
    try:
        group.broadcast_state()
        metrics = []
        for batch, adv_in in batches(cfg, scored, side.critic):
            metrics.append(group.step(batch))
            if side.critic is not None:
                metrics[-1].update(group.critic_step(batch, adv_in))
        states = [group.rank_state(0), group.rank_state(1)]
    finally:
        group.close()
    return side, states, metrics


def assert_same_state(a, b) -> None:
    """Two ranks' states (nested dicts of tensors and plain values) equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    else:
        assert a == b


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def assert_two_ranks_equal_one(cfg: TrainConfig, model_dir: str, scored: list[ScoredGroup]):
    single = one_process(cfg, model_dir, scored)
    dp, (rank0, rank1), metrics = two_ranks(cfg, model_dir, scored)
    torch.manual_seed(cfg.train.seed)
    start = build_policy_side(cfg, model_dir, "cpu")
    assert max_diff(single.policy, start.policy) > 1e-4  # the update moved the weights
    assert max_diff(dp.policy, single.policy) < 1e-5
    if single.critic is not None:
        assert max_diff(single.critic.model, start.critic.model) > 1e-4
        assert max_diff(dp.critic.model, single.critic.model) < 1e-5
    # the ranks apply the same summed gradient with the same optimiser: bit-identical weights and moments
    assert_same_state(rank0, rank1)
    assert rank1["learner"]["optim"]["state"]  # (AdamW's moments exist: they were compared too)
    for m in metrics:
        assert m["grad_norm"] > 0 and m["logp_diff_max"] >= m["logp_diff_mean"] >= 0
    return metrics


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_take_the_one_process_update(ray_local, micro_model, scored, case):
    cfg = config(micro_model, f"algorithm.loss_agg={case}", *CASES[case])
    assert cfg.train.shared_prefix  # the default forward: micro-batches of whole groups
    assert_two_ranks_equal_one(cfg, micro_model, scored)


def test_lora_adapter_two_ranks_equal_one(ray_local, micro_model, scored):
    cfg = config(micro_model, "lora.r=4", "train.updates_per_batch=2")
    assert cfg.lora is not None
    assert_two_ranks_equal_one(cfg, micro_model, scored)


def test_ppo_critic_two_ranks_equal_one(ray_local, micro_model, scored):
    cfg = config(micro_model, "train.micro_batch_size=4", base="configs/ppo.yaml")
    assert cfg.algorithm.needs_critic
    metrics = assert_two_ranks_equal_one(cfg, micro_model, scored)
    assert all(m["value_loss"] > 0 and "critic_grad_norm" in m for m in metrics)


def test_killed_rank_stops_the_step_naming_it(ray_local, micro_model, scored):
    cfg = config(micro_model, "cluster.learner_ranks=2", "cluster.timeout_s=30")
    torch.manual_seed(cfg.train.seed)
    group = LearnerGroup(cfg, micro_model)
    side = group.side
    try:
        with torch.no_grad():  # as after a resume: rank 0 holds weights the other ranks did not build
            for p in side.policy.parameters():
                p.add_(1e-3 * torch.randn_like(p))
        group.broadcast_state()
        here = side.policy.state_dict()
        assert all(torch.equal(here[k], v) for k, v in group.rank_state(1)["learner"]["model"].items())
        (batch, _), (batch2, _) = batches(cfg, scored)
        group.step(batch)
        pids = group.pids()
        assert pids[0] == os.getpid() and len(pids) == 2 and pids[1] != pids[0]
        os.kill(pids[1], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(LearnerRankError, match=r"learner rank 1 failed during the policy step.*run stopped"):
            group.step(batch2)
        assert time.monotonic() - t0 < cfg.cluster.timeout_s
        with pytest.raises(LearnerRankError, match="rank 1"):  # the group stays failed: no half-applied updates
            group.step(batch2)
    finally:
        group.close()
    assert not torch.distributed.is_initialized()  # closed: this process left the process group


@pytest.mark.slow  # waits out a deadline that must also cover building a rank on a loaded machine
def test_stuck_rank_is_named_within_its_deadline(ray_local, micro_model, scored):
    """A rank that stops answering (SIGSTOP: alive, silent) fails rank 0's collective at the deadline."""
    cfg = config(micro_model, "cluster.learner_ranks=2", "cluster.timeout_s=15")
    torch.manual_seed(cfg.train.seed)
    group = LearnerGroup(cfg, micro_model)
    pid = group.pids()[1]
    try:
        group.broadcast_state()
        (batch, _), _ = batches(cfg, scored)
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(LearnerRankError, match=r"learner rank 1 failed during the policy step: no answer within "
                                                   r"cluster.timeout_s=15s"):
            group.step(batch)
        assert time.monotonic() - t0 < 2 * cfg.cluster.timeout_s + 5  # the collective's deadline, then the report wait
    finally:
        os.kill(pid, signal.SIGKILL)
        group.close()


def test_rank_that_cannot_build_fails_init_naming_it(ray_local, micro_model, tmp_path):
    cfg = config(micro_model, "cluster.learner_ranks=2", "cluster.timeout_s=30")
    with pytest.raises(LearnerRankError, match=r"learner rank 1 failed during the init: it could not be built: .*"
                                               + str(tmp_path / "missing")):
        LearnerGroup(cfg, str(tmp_path / "missing"))
    assert not torch.distributed.is_initialized()


def test_shard_by_groups_whole_groups_equal_counts(micro_model, scored):
    cfg = config(micro_model)
    batch, _ = build_batch(scored[:4], 1, cfg.algorithm, cfg.sampling.max_tokens)  # 4 groups x 4 rows
    shards = shard_by_groups(batch, 2)
    assert [len(s) for s in shards] == [8, 8]
    assert [s.group_ids.unique().tolist() for s in shards] == [[0, 1], [2, 3]]
    assert all(s.input_ids.shape[1] == batch.input_ids.shape[1] for s in shards)  # the full padded width
    assert torch.equal(torch.cat([s.input_ids for s in shards]), batch.input_ids)
    assert [len(s) for s in shard_by_groups(batch, 4)] == [4] * 4
    with pytest.raises(ValueError, match="4 groups do not split evenly over 3"):
        shard_by_groups(batch, 3)
    split = batch.select(torch.tensor([0, 4, 1, 2, 3] + list(range(5, 16))))
    with pytest.raises(ValueError, match="not adjacent"):
        shard_by_groups(split, 2)


def test_metrics_combine_max_min_mean():
    out = combine_metrics([{"logp_diff_max": 0.1, "engine_ratio_min": 0.9, "loss": 1.0},
                           {"logp_diff_max": 0.3, "engine_ratio_min": 0.8, "loss": 3.0}])
    assert out == {"logp_diff_max": 0.3, "engine_ratio_min": 0.8, "loss": 2.0}


def test_one_rank_is_the_plain_learner(micro_model, scored):
    """learner_ranks=1: no Ray, no process group; the group's step is the learner's, bit for bit."""
    cfg = config(micro_model)
    single = one_process(cfg, micro_model, scored)
    torch.manual_seed(cfg.train.seed)
    group = LearnerGroup(cfg, micro_model)
    side = group.side
    for batch, _ in batches(cfg, scored):
        group.step(batch)
    group.broadcast_state()
    assert group.pids() == [os.getpid()] and not torch.distributed.is_initialized()
    assert all(torch.equal(a, b) for a, b in zip(side.policy.parameters(), single.policy.parameters()))
