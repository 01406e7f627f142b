"""In-flight weight updates (``train.async.in_flight``) on the static engine, end to end with a real tiny model:
deterministic mode repeats exactly and mixes two policy versions inside one sample; no token is more than k
versions older than the learner; ``kill -9`` at random moments, each followed by ``--resume``, ends identical
to an uninterrupted run (every metric value and the final weights)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest
from helpers import SMALL, assert_same_run, rlvr_cli, tiny_config, train_and_read, train_records

from rlvr.checkpoint import latest_checkpoint

pytestmark = pytest.mark.e2e

FLIGHT = ["engine.kind=static", "train.threads=1", "train.async.in_flight=true", "train.async.deterministic=true",
          "train.async.update_at=3"]


def test_deterministic_in_flight_repeats_and_loads_inside_a_draw(micro_model, tmp_path):
    """Two runs are identical; the draw of step t samples its first 3 decode steps with version t - 2 and the
    rest with t - 1, so samples longer than 3 tokens hold two versions, and none is older than k = 1."""
    runs = []
    for name in ("a", "b"):
        steps, _ = train_and_read(tiny_config(*FLIGHT, "train.steps=4", model=micro_model, run_dir=tmp_path / name))
        runs.append(steps)
    assert_same_run(tmp_path / "a", tmp_path / "b", 4)
    for r in runs[0][1:]:  # step 1 was drawn by version 0 alone: it is the learner's own
        assert 0.0 < r["staleness/tokens_1"] < 1.0 and r["staleness/tokens_0"] > 0.0
        assert r["staleness/tokens_over"] == 0.0 and r["stale_dropped"] == 0.0


def test_in_flight_with_k2_never_trains_on_a_token_older_than_2(micro_model, tmp_path):
    steps, _ = train_and_read(tiny_config("engine.kind=static", "train.threads=1", "train.async.in_flight=true",
                                          "train.async.max_staleness=2", "train.steps=5", model=micro_model,
                                          run_dir=tmp_path / "k2"))
    assert all(r["staleness/tokens_over"] == 0.0 for r in steps)
    assert any(r["staleness/tokens_2"] > 0.0 or r["staleness/tokens_1"] > 0.0 for r in steps[2:])


def _checkpointed(run_dir) -> int:
    """The step of the run's latest complete checkpoint, 0 before the first."""
    latest = latest_checkpoint(run_dir)
    return int(latest.name.removeprefix("step_")) if latest else 0


def _wait_for_checkpoint(proc: subprocess.Popen, run_dir, step: int) -> float:
    """Wait until the run has checkpointed ``step`` (or has ended); returns the moment it was seen."""
    deadline = time.monotonic() + 600
    while proc.poll() is None and _checkpointed(run_dir) < step and time.monotonic() < deadline:
        time.sleep(0.02)
    return time.monotonic()


def _kill_and_resume(args: list[str], run_dir, kills: int, steps: int, rng: random.Random) -> int:
    """Start the run, then up to ``kills`` times: SIGKILL it at a random moment and ``--resume``; finally let it
    finish. Returns the kills that landed mid-run.

    A moment is drawn in steps, not seconds, so it lands mid-run on a fast CPU as on a slow one: the
    checkpoint the run resumed from or the next one, then a random fraction of one step's time (measured
    between the first run's checkpoints 1 and 2). So a kill lands at a resumed run's start (inside the
    load) or in one of its first two steps, and a run of ``2 * kills + 4`` steps has room for every kill."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [*rlvr_cli(), "train", *args, f"run_dir={run_dir}"]
    landed, step_s = 0, None
    for _ in range(kills):
        done = _checkpointed(run_dir)
        if done > steps - 2:  # no step left to land in: let it finish
            break
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if step_s is None:  # the first run: time one step, then go on from checkpoint 2
            first = _wait_for_checkpoint(proc, run_dir, 1)
            step_s = _wait_for_checkpoint(proc, run_dir, 2) - first
            target = rng.randint(2, 3)
        else:
            target = rng.randint(done, min(done + 1, steps - 2))
        _wait_for_checkpoint(proc, run_dir, target)
        time.sleep(rng.uniform(0.0, step_s))  # inside a draw, a learner step, a load or a save
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            landed += 1
        proc.wait(timeout=60)
        if proc.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(proc.stderr.read()[-3000:])
        if proc.returncode == 0:
            return landed
        cmd = [*rlvr_cli(), "train", "--resume", str(run_dir)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return landed


@pytest.mark.parametrize("kills", [pytest.param(2, id="2-kills"), pytest.param(10, id="10-kills", marks=pytest.mark.slow)])
def test_kill9_at_random_moments_then_resume_equals_an_uninterrupted_run(micro_model, tmp_path, kills):
    steps = 2 * kills + 4
    args = [*SMALL, *FLIGHT, f"model={micro_model}", f"train.steps={steps}", "checkpoint.every=1"]
    whole = tmp_path / "whole"
    # the uninterrupted run beside the killed ones (each on one thread: the two cores are both used)
    err = tmp_path / "whole.err"
    with err.open("w") as stderr:
        uninterrupted = subprocess.Popen([*rlvr_cli(), "train", *args, f"run_dir={whole}"], stdout=subprocess.DEVNULL,
                                         stderr=stderr)
    try:
        landed = _kill_and_resume(args, tmp_path / "killed", kills, steps, random.Random(kills))
        uninterrupted.wait(timeout=600)
    finally:
        uninterrupted.kill()
    assert uninterrupted.returncode == 0, err.read_text()[-3000:]
    assert landed == kills, f"{landed} of {kills} kills landed mid-run"
    assert_same_run(whole, tmp_path / "killed", steps)
    assert len(train_records(whole)) == steps
