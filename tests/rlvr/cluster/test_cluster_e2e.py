"""Distributed runs end to end on a local Ray instance: 2 rollout workers and 2 learner ranks resume
bit-identically, the same topology runs from the command line, and a killed learner rank stops the run
with an error naming it while the last checkpoint stays loadable."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
from helpers import SMALL, assert_same_run, kill_when
from helpers import run_config as config

from rlvr.checkpoint import latest_checkpoint, load_checkpoint
from rlvr.logging import read_metrics


@pytest.fixture(autouse=True)
def _needs_ray():
    """Skipped without ray; imported when a test here first runs, not at collection (seconds)."""
    pytest.importorskip("ray")


CLUSTER = ["cluster.rollout_workers=2", "cluster.learner_ranks=2", "train.threads=1"]


@pytest.fixture
def ray_cluster(ray_instance):
    return ray_instance


@pytest.mark.slow  # ~32 s; the fast tier resumes one-process runs bit-identically (tests/rlvr/test_resume.py)
def test_distributed_run_resumes_bit_identically(ray_cluster, micro_model, tmp_path):
    from rlvr.loop import train

    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    train(config(micro_model, whole, 4, *CLUSTER, "checkpoint.every=2"))
    shutil.copytree(whole, crashed)  # a crash after step 3: checkpoints 2 and 4 minus the last
    shutil.rmtree(crashed / "checkpoints" / "step_000004")
    shutil.rmtree(crashed / "final")
    train(config(micro_model, crashed, 4, *CLUSTER, "checkpoint.every=2"), resume=True)
    assert_same_run(whole, crashed, 4)


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
    assert state["step"] in (3, 6, 9) and "model" in tensors["learner"]


@pytest.mark.slow  # ~30 s; the fast tier runs two workers and two ranks through train() (the killed-rank test)
def test_two_workers_two_ranks_from_the_command_line(micro_model, tmp_path):
    run_dir = tmp_path / "cli"
    cmd = [sys.executable, "-m", "rlvr.cli", "train", "--config", "configs/tiny_r1zero.yaml", f"model={micro_model}",
           f"run_dir={run_dir}", "train.steps=2", *SMALL, "cluster.rollout_workers=2", "cluster.learner_ranks=2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["sync_bytes"] > 0 and r["rollout_worker_restarts"] == 0 for r in records)


def _ray_processes() -> dict[int, str]:
    """pid -> command line of every live Ray process on this machine (workers, actors, raylet, GCS)."""
    import psutil

    found = {}
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["status"] != psutil.STATUS_ZOMBIE and ("ray::" in cmd or "/ray/" in cmd or "raylet" in cmd):
            found[proc.info["pid"]] = cmd
    return found


def gelu_model(micro_model: str, tmp_path) -> str:
    """The micro model with GELU: the learner (transformers) runs it, the static engine refuses it at build."""
    import json

    model = tmp_path / "gelu-model"
    shutil.copytree(micro_model, model)
    config_json = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config_json, "hidden_act": "gelu"}))
    return str(model)


REFUSED = "static engine: hidden_act 'gelu' is not supported"


def assert_nothing_left(ray_before: dict[int, str], shm_before: set, deadline_s: float = 20.0) -> None:
    """No Ray process (worker, actor, raylet) and no /dev/shm segment beyond those that existed before."""
    from pathlib import Path

    deadline, left = time.monotonic() + deadline_s, None
    while time.monotonic() < deadline:  # a killed actor's process takes a moment to go
        left = {pid: cmd for pid, cmd in _ray_processes().items() if pid not in ray_before}
        if not left:
            break
        time.sleep(0.5)
    assert not left, f"left behind: {left}"
    assert set(Path("/dev/shm").iterdir()) <= shm_before


def test_a_rollout_start_that_fails_after_two_learner_ranks_closes_them(ray_cluster, micro_model, tmp_path):
    """In a long-lived process on a running Ray cluster: the learner ranks are up when the engine refuses the
    model; the error names the cause, and the run closed what it built (no learner-rank actor, no process
    group, no shared-memory segment), so the process can go on."""
    from pathlib import Path

    import torch

    from rlvr.loop import train

    ray_before, shm_before = _ray_processes(), set(Path("/dev/shm").iterdir())
    cfg = config(gelu_model(micro_model, tmp_path), tmp_path / "run", 2, "engine.kind=static",
                 "cluster.learner_ranks=2", "train.threads=1")
    with pytest.raises(ValueError, match=REFUSED):
        train(cfg)
    assert not torch.distributed.is_initialized()
    assert_nothing_left({pid: c for pid, c in ray_before.items()}, shm_before)



@pytest.mark.slow  # its own Ray instance (~30 s)
def test_a_rollout_start_failure_from_the_command_line_leaves_nothing_behind(micro_model, tmp_path):
    """The same failure from ``rlvr train``: exit status non-zero, the cause named, nothing left behind."""
    from pathlib import Path

    ray_before, shm_before = _ray_processes(), set(Path("/dev/shm").iterdir())
    cmd = [sys.executable, "-m", "rlvr.cli", "train", "--config", "configs/tiny_r1zero.yaml",
           f"model={gelu_model(micro_model, tmp_path)}", f"run_dir={tmp_path / 'run'}", "train.steps=2", *SMALL,
           "engine.kind=static", "cluster.learner_ranks=2", "train.threads=1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert REFUSED in out.stderr, out.stderr[-3000:]
    assert "learner rank" not in out.stderr  # the ranks were up and fine: the engine is what failed
    assert_nothing_left(ray_before, shm_before)
