"""Rollout workers as Ray actors (rlvr.cluster): the same draws with 1 or 2 workers, a killed worker
restarted mid-run, and the cluster checks that run before any model loads. Real Ray, real engines."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import kill_when, tiny_config

from rlvr.config import ConfigError, TrainConfig
from rlvr.logging import read_metrics
from rlvr.loop import train
from rollouts import SamplingConfig


@pytest.fixture(autouse=True)
def _needs_ray():
    """Skipped without ray; imported when a test here first runs, not at collection (seconds)."""
    pytest.importorskip("ray")



@pytest.fixture
def ray_cluster(ray_instance):
    return ray_instance


def config(model: str, run_dir: Path, steps: int, *more: str) -> TrainConfig:
    return tiny_config(f"train.steps={steps}", "train.threads=1", *more, model=model, run_dir=run_dir)


def rows_of(cfg: TrainConfig, model_dir: str, k: int) -> list[dict]:
    from transformers import AutoTokenizer

    from rlvr.components import build_rubric, load_rows

    tok = AutoTokenizer.from_pretrained(model_dir)
    return load_rows(cfg, tok, build_rubric(cfg), model_dir, verbose=False).train[:k]


# a multi-turn draw: episodes of up to 3 turns with the guess_number environment stepping inside the worker
EPISODES = ["task.kind=guess_number", "env.kind=guess_number", "env.max_turns=3", "rewards=null"]


def episodes_of(groups) -> list:
    return [[t.to_json() for t in g.episodes] for g in groups]


@pytest.mark.parametrize("env", [[], EPISODES], ids=["one-turn", "multi-turn"])
def test_a_seeded_hf_draw_is_the_same_in_this_process_and_on_a_ray_worker(ray_cluster, micro_model, tmp_path, env):
    """The one seed rule (rollouts.types.prompt_seeds): a call with ``seed`` samples as the per-prompt seeds
    the Ray driver sends. Before it, the HF engine drew a whole in-process call from one generator, so the
    same step sampled differently on a worker. Multi-turn: every turn's seed is the episode's own
    (rlvr.envs.runner.turn_seed), so the episodes are the same too, observations included."""
    from rlvr.cluster.runtime import connect
    from rlvr.components import build_rubric
    from rlvr.rollout import LocalRollouts
    from rlvr.rollout.ray import RayRollouts

    cfg = config(micro_model, tmp_path, 1, "cluster.rollout_workers=1", *env)
    rows = rows_of(cfg, micro_model, 4)
    sampling = SamplingConfig(n=3, max_tokens=16, seed=11)
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the worker computes on train.threads=1: the same float sums here
    local = LocalRollouts(cfg, micro_model, build_rubric(cfg), threads=1)
    try:
        here, _, _ = local.generate_and_score(rows, sampling)
    finally:
        local.close()
        torch.set_num_threads(before)
    backend = RayRollouts(cfg, micro_model, connect(cfg.cluster))
    try:
        there, _, _ = backend.generate_and_score(rows, sampling)
    finally:
        backend.close()
    assert [[c.token_ids for c in g.completions] for g in here] == [[c.token_ids for c in g.completions] for g in there]
    if env:
        assert max(t.turns for g in there for t in g.episodes) > 1
        assert [[t.token_ids() for t in g.episodes] for g in here] == [[t.token_ids() for t in g.episodes] for g in there]
        assert [[t.finish_reason for t in g.episodes] for g in here] == [[t.finish_reason for t in g.episodes]
                                                                         for g in there]
    gap = max(abs(a - b) for g, h in zip(here, there) for c, d in zip(g.completions, h.completions)
              for a, b in zip(c.logprobs, d.logprobs))
    assert gap < 1e-5


@pytest.mark.parametrize("engine,env", [("hf", []), ("hf", EPISODES),
                                        pytest.param("vllm", [], marks=pytest.mark.slow)],  # vllm: ~40 s more
                         ids=["hf", "hf-multi-turn", "vllm"])
def test_one_or_two_workers_get_the_same_requests_and_return_the_same_groups(ray_cluster, micro_model, tmp_path,
                                                                             engine, env):
    from rlvr.cluster.runtime import connect
    from rlvr.rollout.ray import RayRollouts

    if engine == "vllm":
        pytest.importorskip("vllm")
    draws = {}
    for workers in (1, 2):
        cfg = config(micro_model, tmp_path, 1, f"engine.kind={engine}", f"cluster.rollout_workers={workers}",
                     "cluster.batch_invariant=true", *env)
        rows = rows_of(cfg, micro_model, 5)
        backend = RayRollouts(cfg, micro_model, connect(cfg.cluster))
        try:
            groups, scores, _ = backend.generate_and_score(rows, SamplingConfig(n=3, max_tokens=16, seed=7))
            requests = backend.last_requests
        finally:
            backend.close()
        assert len(requests) == workers
        sent = [(r["question"], seed) for req in requests for r, seed in zip(req.rows, req.seeds)]
        draws[workers] = (sent, [g.prompt_ids for g in groups], [[c.token_ids for c in g.completions] for g in groups],
                          [[s.reward for s in sc] for sc in scores], episodes_of(groups))
    one, two = draws[1], draws[2]
    assert one[0] == two[0] and [q for q, _ in one[0]] == [r["question"] for r in rows]  # rows and seeds, in order
    assert one[1] == two[1] == [r["prompt_ids"] for r in rows]  # groups come back in request order
    assert one[2] == two[2]  # batch-invariant: the same token ids whatever the split
    assert one[3] == two[3]
    assert one[4] == two[4]  # the episodes, segment by segment (ids, log-probs, turns, versions, texts)
    if env:
        assert any(len(t["segments"]) > 1 for g in one[4] for t in g)
    assert len({tuple(map(tuple, g)) for g in one[2]}) == len(rows)  # distinct groups: seeds differ per group


def test_a_killed_rollout_worker_is_restarted_and_the_run_finishes(ray_cluster, micro_model, tmp_path):
    run_dir = tmp_path / "run"
    killed: list[int] = []
    watcher = kill_when(run_dir, 2, "rollout_workers", 1, killed)
    summary = train(config(micro_model, run_dir, 6, "cluster.rollout_workers=2"))
    watcher.join(timeout=5)
    assert killed, "the watcher never found the worker to kill"
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert records[-1]["rollout_worker_restarts"] == 1.0
    assert all(r["reward_mean"] == r["reward_mean"] for r in records)  # every step trained on real groups
    assert Path(summary["checkpoint"]).is_dir()


def test_cluster_checks_before_any_model_loads(micro_model, tmp_path):
    from rlvr.cluster.runtime import ClusterInfo, check_fits, connect

    cfg = config(micro_model, tmp_path, 1, "cluster.rollout_workers=3")
    with pytest.raises(ConfigError, match=r"cluster.rollout_workers=3 .* needs 3 CPUs; the Ray cluster has 2"):
        check_fits(cfg.cluster, ClusterInfo(cpus=2, gpus=0, nodes=1, started_here=False))
    cfg = config(micro_model, tmp_path, 1, "cluster.learner_ranks=2", "cluster.gpus_per_rank=1")
    with pytest.raises(ConfigError, match=r"cluster.learner_ranks=2 .* needs 2 GPUs; the Ray cluster has 0"):
        check_fits(cfg.cluster, ClusterInfo(cpus=2, gpus=0, nodes=1, started_here=False))
    cfg = config(micro_model, tmp_path, 1, "cluster.rollout_workers=1", "cluster.address=127.0.0.1:9")
    with pytest.raises(ConfigError, match=r"cluster.address='127.0.0.1:9' is unreachable"):
        connect(cfg.cluster)
    with pytest.raises(ConfigError, match="learner_ranks=3 does not divide train.prompts_per_step=4"):
        config(micro_model, tmp_path, 1, "cluster.learner_ranks=3")


def test_more_workers_than_cpus_fails_before_the_run_dir_is_touched(ray_cluster, micro_model, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="cluster.rollout_workers=3"):
        train(config(micro_model, run_dir, 1, "cluster.rollout_workers=3"))
    assert not run_dir.exists()


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2, reason="needs two cores to split")
def test_pin_cores_gives_the_worker_and_the_learner_their_own_cores(ray_cluster, micro_model, tmp_path):
    """cluster.pin_cores: the rollout worker's process and the learner run on disjoint cores (as the kernel
    reports them in cluster.json), and this process has all its cores back once the run ends."""
    import json
    import os

    before = os.sched_getaffinity(0)
    run_dir = tmp_path / "pinned"
    train(config(micro_model, run_dir, 1, "cluster.rollout_workers=1", "cluster.pin_cores=true"))
    cores = json.loads((run_dir / "cluster.json").read_text())["cores"]
    worker, learner = set(cores["rollout_workers"][0]), set(cores["learner"])
    assert worker and learner and not worker & learner
    assert worker | learner <= before
    assert os.sched_getaffinity(0) == before


def test_pin_cores_needs_a_rollout_worker(micro_model, tmp_path):
    with pytest.raises(ValueError, match="cluster.pin_cores .* needs cluster.rollout_workers >= 1"):
        config(micro_model, tmp_path, 1, "cluster.pin_cores=true")


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2, reason="needs two cores to split")
def test_in_flight_on_a_pinned_ray_worker_stays_within_k(ray_cluster, micro_model, tmp_path):
    """The GPU-shaped layout with in-flight updates: the worker's actor takes each load on a second thread
    while it draws (the run would otherwise wait on the draw); its samples run ahead of the learner, never by
    more than k = 2 versions."""
    from helpers import train_and_read

    steps, _ = train_and_read(config(micro_model, tmp_path / "flight", 5, "engine.kind=static", "cluster.rollout_workers=1",
                                     "cluster.pin_cores=true", "train.async.in_flight=true",
                                     "train.async.max_staleness=2"))
    assert all(r["staleness/tokens_over"] == 0.0 and r["stale_dropped"] == 0.0 for r in steps)
    assert any(r["staleness/tokens_1"] + r["staleness/tokens_2"] > 0.0 for r in steps[1:])
