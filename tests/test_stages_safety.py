"""Stages never destroy work: an `out` a stage did not write is refused, and an RL stage killed
mid-stage resumes on rerun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from rlvr.cli import main
from rlvr.config import ConfigError
from rlvr.logging import read_metrics
from rlvr.stages import OutputInUse
from rlvr.stages.recipe import load_recipe, run_recipe

FAST = ["num_examples=48", "threads=1", "trl.max_steps=2", "trl.per_device_train_batch_size=8"]
RL = ["engine.kind=hf", "train.prompts_per_step=4", "sampling.n=4", "sampling.max_tokens=16", "eval.every=0",
      "eval.num_prompts=8", "eval.k=2", "eval.max_tokens=16", "train.micro_batch_size=8", "optim.lr=3e-4",
      "logging.progress=false", "logging.tensorboard=false", "train.threads=1"]


def write_recipe(tmp_path, stages, name="r.yaml", out_root="out"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"name": "t", "out_root": str(tmp_path / out_root), "stages": stages}))
    return str(path)


def rl_stage(name, model, out, *extra):
    return {"name": name, "command": "train", "config": "configs/tiny_r1zero.yaml", "out": str(out),
            "overrides": [*RL, f"model={model}", *extra]}


def sft_stage(name, model=None, input=None, command="sft"):
    st = {"name": name, "command": command, "config": f"configs/stages/{command}.yaml", "overrides": list(FAST)}
    if model:
        st["overrides"].append(f"model={model}")
    if input:
        st["input"] = input
    return st


def snapshot(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def rlvr_cli() -> list[str]:
    return [sys.executable, "-c", "import sys; from rlvr.cli import main; sys.exit(main())"]


# ---- never destroy work -------------------------------------------------------------------------

def test_a_stage_refuses_an_out_it_did_not_write(micro_model, tmp_path, capsys):
    """An `rlvr train` run (checkpoints and all) named as a recipe stage's `out`, and a user's model
    named as `rlvr sft`'s out_dir, are refused with one sentence; not a byte of either changes."""
    run = tmp_path / "my-run"
    assert main(["train", "--config", "configs/tiny_r1zero.yaml", *RL, f"model={micro_model}", f"run_dir={run}",
                 "train.steps=2", "checkpoint.every=1"]) == 0
    before = snapshot(run)
    assert any(name.startswith("checkpoints/step_000002/") for name in before)
    recipe = write_recipe(tmp_path, [rl_stage("rl", micro_model, run, "train.steps=1")])
    with pytest.raises(OutputInUse, match=rf"stage 'rl' \(train\): out '{run}' already holds files that no 'train' "
                                          "stage wrote .*; choose another out or delete that directory"):
        run_recipe(recipe)
    capsys.readouterr()
    assert main(["run", recipe]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and str(run) in err and "Traceback" not in err
    assert snapshot(run) == before

    model = tmp_path / "my-model"
    shutil.copytree(micro_model, model)
    (model / "rlvr_pretrain.json").unlink()  # a user's model: no stage wrote it
    mine = snapshot(model)
    assert main(["sft", f"model={micro_model}", f"out_dir={model}", *FAST]) == 2
    err = capsys.readouterr().err
    assert f"error: out_dir '{model}' already holds files that no 'sft' stage wrote" in err
    assert snapshot(model) == mine and not (tmp_path / "my-model.partial").exists()


def test_two_stages_with_one_out_is_one_error(micro_model, tmp_path):
    same = str(tmp_path / "shared")
    recipe = write_recipe(tmp_path, [{**sft_stage("a", model=micro_model), "out": same},
                                     {**sft_stage("b", input="a"), "out": same}])
    with pytest.raises(ConfigError, match=r"stages.1 \('b'\): out '.*shared' is already the out of stage 'a'"):
        load_recipe(recipe)


def train_records(run_dir) -> list[dict]:
    """Per-step metrics without wall-clock timings (which differ between any two runs)."""
    return [{k: v for k, v in r.items() if not k.endswith("_s") and k not in ("generate_share", "score_hidden_share")}
            for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def test_an_rl_stage_killed_mid_stage_resumes_on_rerun(micro_model, tmp_path, capsys):
    """`rlvr run` is SIGKILLed once the RL stage's first checkpoint is written; the rerun resumes from
    the newest checkpoint: the steps before it are not redone, none is lost or repeated, and the run
    equals an uninterrupted one (train.threads=1) in every metric and every final weight."""
    steps = 6
    killed = tmp_path / "killed"
    recipe = write_recipe(tmp_path, [rl_stage("rl", micro_model, killed, f"train.steps={steps}",
                                              "checkpoint.every=2", "checkpoint.keep=3")])
    proc = subprocess.Popen([*rlvr_cli(), "run", recipe], env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = killed / "checkpoints" / "step_000002"
    deadline = time.monotonic() + 240
    while proc.poll() is None and not first.is_dir() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert first.is_dir() and not (killed / "final" / "rlvr_stage.json").exists()
    newest = max(p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith("step_"))
    at_kill = int(newest.split("_")[-1])
    assert at_kill < steps  # killed mid-stage
    done_lines = [line for line in (killed / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line)["step"] <= at_kill]

    capsys.readouterr()
    record = run_recipe(recipe)["stages"]["rl"]
    assert f"resuming the interrupted run in {killed} from {newest}" in capsys.readouterr().out
    assert not record["cached"] and record["optimizer_steps"] == steps
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    assert lines[:len(done_lines)] == done_lines  # the steps up to the checkpoint were kept, not redone
    assert [r["step"] for r in train_records(killed)] == list(range(1, steps + 1))

    whole = tmp_path / "whole"
    run_recipe(write_recipe(tmp_path, [rl_stage("rl", micro_model, whole, f"train.steps={steps}",
                                                "checkpoint.every=2", "checkpoint.keep=3")], "w.yaml", "out-w"))
    for x, y in zip(train_records(killed), train_records(whole), strict=True):
        assert x == y, {k: (x[k], y.get(k)) for k in x if x[k] != y.get(k)}
    from safetensors.torch import load_file

    a, b = load_file(killed / "final" / "model.safetensors"), load_file(whole / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert run_recipe(recipe)["stages"]["rl"]["cached"]  # finished: reused, not resumed again
