"""A multi-turn run killed with SIGKILL mid-run and continued with ``rlvr train --resume`` loses and repeats no
episode: every step's metrics (episode counts, turns, finish reasons, rewards) and the final weights equal an
uninterrupted run's. The run draws ahead (``train.async``), so the checkpoint the resume starts from holds
episodes drawn with the previous weights, as token-in/token-out trajectories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from helpers import SMALL, assert_same_run, rlvr_cli, train_records

from rlvr.checkpoint import latest_checkpoint
from rlvr.logging import read_metrics

GUESS = ["task.kind=guess_number", "env.kind=guess_number", "env.max_turns=3", "rewards=null"]
STEPS, KILL_AFTER = 6, 4


def test_sigkill_mid_multiturn_run_then_resume_equals_an_uninterrupted_run(micro_model, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = [*SMALL, *GUESS, f"model={micro_model}", f"train.steps={STEPS}", "train.async=true"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # the uninterrupted run beside the killed one (each on one thread: the two cores are both used)
    err = tmp_path / "whole.err"
    with err.open("w") as stderr:
        uninterrupted = subprocess.Popen([*rlvr_cli(), "train", *args, f"run_dir={whole}"], env=env,
                                         stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        kill_and_resume(args, killed, env)
        uninterrupted.wait(timeout=600)
    finally:
        uninterrupted.kill()
    assert uninterrupted.returncode == 0, err.read_text()[-2000:]
    assert_same_run(whole, killed, STEPS)
    assert any(r["turns_mean"] > 1.0 for r in train_records(whole))


def kill_and_resume(args: list[str], killed, env: dict) -> None:
    """SIGKILL the run once it logged step KILL_AFTER, check what its checkpoint carries, ``--resume`` it."""
    proc = subprocess.Popen([*rlvr_cli(), "train", *args, f"run_dir={killed}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, deadline = killed / "metrics.jsonl", time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and any(r["kind"] == "train" and r["step"] >= KILL_AFTER for r in read_metrics(metrics)):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed mid-run: {proc.stderr.read()[-2000:]}"
    logged = [r["step"] for r in train_records(killed)]
    assert KILL_AFTER <= max(logged) < STEPS and not (killed / "final").exists()

    # the checkpoint carries the episodes drawn ahead with the previous weights, turn by turn
    ckpt = latest_checkpoint(killed)
    assert ckpt is not None and int(ckpt.name.split("_")[-1]) < max(logged)
    pending = json.loads((ckpt / "state.json").read_text())["pipeline"]["pending"]
    assert [p["step"] for p in pending] == [int(ckpt.name.split("_")[-1]) + 1]
    episodes = [e for g in pending[0]["drawn"] for e in g["group"]["episodes"]]
    assert episodes and any(sum(s["source"] == "model" for s in e["segments"]) > 1 for e in episodes)

    resumed = subprocess.run([*rlvr_cli(), "train", "--resume", str(killed)], env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
