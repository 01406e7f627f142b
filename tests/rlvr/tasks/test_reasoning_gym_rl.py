"""An RL run on a mix of three reasoning-gym datasets raises its training reward (slow: pretrains a micro
base on the mix's corpus, then GRPO with the `reasoning_gym` verifier; configs/reasoning_gym*.yaml)."""

from __future__ import annotations

import statistics

import pytest

pytest.importorskip("reasoning_gym")


@pytest.mark.slow
@pytest.mark.e2e
def test_rl_on_a_reasoning_gym_mix_raises_the_training_reward(tmp_path):
    from rlvr.config import PretrainConfig, TrainConfig, load_config
    from rlvr.logging import read_metrics
    from rlvr.loop import train
    from rlvr.pretrain import pretrain

    pre = load_config(PretrainConfig, "configs/reasoning_gym_pretrain.yaml", [f"out_dir={tmp_path / 'base'}"])
    base = pretrain(pre, progress=False)
    cfg = load_config(TrainConfig, "configs/reasoning_gym.yaml", [
        f"model={base}", f"run_dir={tmp_path / 'run'}", "optim.lr=5e-4", "train.steps=60", "eval.every=0",
        "task.train_size=48",  # 48 rows, each drawn ~20 times: 300 rows (the config) barely moved in 60 steps
        "logging.progress=false", "logging.tensorboard=false"])
    train(cfg)
    steps = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert len(steps) == 60 and all(r["verifier_errors"] == 0 for r in steps)
    first = statistics.mean(r["reward_mean"] for r in steps[:15])
    last = statistics.mean(r["reward_mean"] for r in steps[-15:])
    assert last > first + 0.05, (first, last)
