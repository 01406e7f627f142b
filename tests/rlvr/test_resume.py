"""Full-state checkpoints and resume: bit-identical continuation, config checks, a kill mid-write.

Runs on the micro model with the HF engine (CPU, fixed seeds): a resumed run must reproduce
the uninterrupted run exactly (every non-timing metric and every final parameter).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
from helpers import SMALL, assert_same_run, final_params, rlvr_cli, train_records
from helpers import run_config as config

from rlvr.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from rlvr.config import ConfigError, TrainConfig
from rlvr.logging import read_metrics
from rlvr.loop import train


def test_three_steps_resume_three_steps_equals_six_steps(micro_model, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(config(micro_model, whole, 6))
    train(config(micro_model, split, 3))
    ckpt = latest_checkpoint(split)
    assert ckpt is not None and ckpt.name == "step_000003"
    at_three = load_checkpoint(ckpt)[0]["learner"]["model"]
    train(config(micro_model, split, 6), resume=True)
    assert_same_run(whole, split, 6)
    # the resumed half did train: parameters moved after the step-3 checkpoint
    assert any(not torch.equal(at_three[k], v) for k, v in final_params(split).items())
    assert [r["step"] for r in read_metrics(split / "metrics.jsonl") if r["kind"] == "eval"] == [0, 3, 6]


@pytest.mark.parametrize("variant", ["async", "ppo"])
def test_interrupted_run_resumes_identically(micro_model, tmp_path, variant):
    """Async (rollouts drawn ahead travel in the checkpoint) and PPO (critic, reference, KL)."""
    more, base = (["train.async=true"], "configs/tiny_r1zero.yaml") if variant == "async" else \
        (["algorithm.kl_coef=0.05"], "configs/ppo.yaml")
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    train(config(micro_model, whole, 6, *more, base=base))
    # a crash after step 4: the run dir holds metrics up to 4 and checkpoints 3 and 6 minus the last
    shutil.copytree(whole, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step_000006")
    (crashed / "final").rename(crashed / "final-old")
    state = json.loads((crashed / "checkpoints" / "step_000003" / "state.json").read_text())
    if variant == "async":
        pending = state["pipeline"]["pending"]
        assert [p["step"] for p in pending] == [4]  # drawn ahead with step 2's weights
        assert pending[0]["version"] == 2
    else:
        tensors = load_checkpoint(crashed / "checkpoints" / "step_000003")[0]
        assert tensors["critic"]["optim"]["state"] and tensors["learner"]["reference"]
    train(config(micro_model, crashed, 6, *more, base=base), resume=True)
    assert_same_run(whole, crashed, 6)
    if variant == "async":
        staleness = [r["staleness"] for r in train_records(whole)]
        assert staleness == [0, 1, 1, 1, 1, 1]
        # per token the same (the resumed engine's weights carry the step's version, or its tokens would
        # look older and be dropped; assert_same_run compared these records of the resumed half)
        for r, s in zip(train_records(whole), staleness):
            assert (r["staleness/tokens_0"], r["staleness/tokens_1"], r["stale_dropped"]) == (1 - s, s, 0)


def test_resume_refuses_a_changed_config_and_names_the_fields(micro_model, tmp_path):
    run = tmp_path / "run"
    train(config(micro_model, run, 3))
    with pytest.raises(ConfigError) as err:
        train(config(micro_model, run, 3, "optim.lr=1e-2", "sampling.n=2"), resume=True)
    assert "optim.lr: 0.0003 -> 0.01" in str(err.value) and "sampling.n: 4 -> 2" in str(err.value)
    # fields that do not change training may differ: more steps, another log setting
    train(config(micro_model, run, 4, "logging.tensorboard=true", "checkpoint.keep=1"), resume=True)
    assert [r["step"] for r in train_records(run)] == [1, 2, 3, 4]
    assert [p.name for p in list_checkpoints(run)] == ["step_000004"]
    with pytest.raises(ConfigError, match="train.steps=2 is below the checkpoint's step 4"):
        train(config(micro_model, run, 2), resume=True)
    # a fresh start over an earlier run's checkpoints is refused unless asked for
    with pytest.raises(ConfigError, match="--resume"):
        train(config(micro_model, run, 2))
    assert [p.name for p in list_checkpoints(run)] == ["step_000004"]
    train(config(micro_model, run, 1), overwrite=True)
    assert [r["step"] for r in train_records(run)] == [1]


def test_resume_without_checkpoint_is_a_clear_error(micro_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(config(micro_model, tmp_path / "empty", 2), resume=True)



def test_sigkill_during_checkpoint_write_keeps_the_previous_one(micro_model, tmp_path):
    """Kill `rlvr train` while it writes a checkpoint (seen as its .tmp- directory): the previous
    checkpoint loads, and `rlvr train --resume` continues from it and finishes the run."""
    run = tmp_path / "run"
    ckdir = run / "checkpoints"
    args = [*SMALL, f"model={micro_model}", f"run_dir={run}", "train.steps=400", "checkpoint.every=1",
            "checkpoint.keep=3", "train.threads=1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [*rlvr_cli(), "train", *args]
    killed_mid_write = None
    for _attempt in range(8):  # the write takes milliseconds; a kill can land just after the rename
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            names = [p.name for p in ckdir.iterdir()] if ckdir.is_dir() else []
            if any(n.startswith(".tmp-") for n in names) and any(n.startswith("step_") for n in names):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.0003)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
        tmp = [p for p in ckdir.iterdir() if p.name.startswith(".tmp-")]
        if tmp:
            killed_mid_write = tmp[0]
            break
        cmd = [*rlvr_cli(), "train", "--resume", str(run)]  # it finished that write: try again further on
    assert killed_mid_write is not None, "never caught a checkpoint write in progress"

    previous = latest_checkpoint(run)
    assert previous is not None
    interrupted_step = int(killed_mid_write.name.split("_")[-1])
    assert int(previous.name.split("_")[-1]) == interrupted_step - 1
    tensors, state = load_checkpoint(previous)
    assert state["step"] == interrupted_step - 1 and {"learner", "rng"} <= tensors.keys()

    target = state["step"] + 2
    done = subprocess.run([*rlvr_cli(), "train", "--resume", str(run), f"train.steps={target}"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not [p for p in ckdir.iterdir() if p.name.startswith(".tmp-")]
    assert [r["step"] for r in train_records(run)] == list(range(1, target + 1))
    assert latest_checkpoint(run).name == f"step_{target:06d}"
    assert (run / "final" / "model.safetensors").is_file()


def test_resume_cuts_metrics_back_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    """Records past the checkpoint are redone by the resumed run; a line cut by a kill is dropped."""
    from rlvr.checkpoint import save_checkpoint
    from rlvr.config import config_yaml
    from rlvr.run import find_resume_point, prepare_run_dir

    run = tmp_path / "run"
    cfg_yaml = config_yaml(TrainConfig(model="m", run_dir=str(run)))
    save_checkpoint(run, 2, tensors={"learner": {"w": torch.ones(2)}},
                    state={"sampler": {}, "evals": {}, "pipeline": {"pending": []}}, config_yaml=cfg_yaml, keep=2)
    (run / "checkpoints" / ".tmp-step_000003").mkdir()  # a write that was killed
    lines = [json.dumps({"kind": "train", "step": s, "loss": 0.1 * s}) for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"kind": "train", "st')
    resumed = find_resume_point(run, cfg_yaml, resume=True, overwrite=False, steps=10)
    prepare_run_dir(run, cfg_yaml, resumed)
    assert resumed.step == 2 and torch.equal(resumed.state["learner"]["w"], torch.ones(2))
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert not (run / "checkpoints" / ".tmp-step_000003").exists()


def test_a_fresh_run_over_an_old_ray_run_leaves_no_stale_cluster_json(tmp_path):
    """`--overwrite` over a Ray run's directory: the old run's record of its worker and rank processes goes with
    its checkpoints and metrics (a run on Ray writes its own once it has connected)."""
    from rlvr.config import config_yaml
    from rlvr.run import prepare_run_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "cluster.json").write_text(json.dumps({"rollout_workers": [123], "learner_ranks": [456, 789]}))
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    prepare_run_dir(run, config_yaml(TrainConfig(model="m", run_dir=str(run))), None)
    assert not (run / "cluster.json").exists() and not (run / "metrics.jsonl").exists()
