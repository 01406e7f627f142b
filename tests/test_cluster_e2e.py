"""Distributed runs end to end on a local Ray instance: 2 rollout workers and 2 learner ranks resume
bit-identically, the same topology runs from the command line, and a killed learner rank stops the run
with an error naming it while the last checkpoint stays loadable."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
from test_cluster_rollouts import kill_when
from test_resume import SMALL, assert_same_run, config

from rlvr.checkpoint import latest_checkpoint, load_checkpoint
from rlvr.logging import read_metrics

ray = pytest.importorskip("ray")

CLUSTER = ["cluster.rollout_workers=2", "cluster.learner_ranks=2", "train.threads=1"]


@pytest.fixture
def ray_cluster(ray_instance):
    return ray_instance


def test_distributed_run_resumes_bit_identically(ray_cluster, micro_model, tmp_path):
    from rlvr.loop import train

    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    train(config(micro_model, whole, 6, *CLUSTER))
    shutil.copytree(whole, crashed)  # a crash after step 4: checkpoints 3 and 6 minus the last
    shutil.rmtree(crashed / "checkpoints" / "step_000006")
    shutil.rmtree(crashed / "final")
    train(config(micro_model, crashed, 6, *CLUSTER), resume=True)
    assert_same_run(whole, crashed, 6)


def test_a_killed_learner_rank_stops_the_run_naming_it(ray_cluster, micro_model, tmp_path):
    from rlvr.cluster.runtime import ClusterError
    from rlvr.loop import train

    run_dir = tmp_path / "run"
    killed: list[int] = []
    watcher = kill_when(run_dir, 4, "learner_ranks", 1, killed)  # after the step-3 checkpoint
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=r"learner rank 1 failed during the policy step.*Last checkpoint: .*step_000003"):
        train(config(micro_model, run_dir, 12, *CLUSTER, "cluster.timeout_s=60"))
    assert time.monotonic() - t0 < 120  # within the deadline, not a hang
    watcher.join(timeout=5)
    assert killed
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert 4 <= max(steps) < 12
    tensors, state = load_checkpoint(latest_checkpoint(run_dir))  # intact and loadable
    assert state["step"] in (3, 6, 9) and "model" in tensors


def test_two_workers_two_ranks_from_the_command_line(micro_model, tmp_path):
    run_dir = tmp_path / "cli"
    cmd = [sys.executable, "-m", "rlvr.cli", "train", "--config", "configs/tiny_r1zero.yaml", f"model={micro_model}",
           f"run_dir={run_dir}", "train.steps=2", *SMALL, "cluster.rollout_workers=2", "cluster.learner_ranks=2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["sync_bytes"] > 0 and r["rollout_worker_restarts"] == 0 for r in records)
