"""Stages never destroy work and never reuse a stale output: an `out` a stage did not write is
refused, an RL stage killed mid-stage resumes on rerun, and a stage's cache is keyed on its input
model's content (replaced weights or tokenizer, a stamped or unstamped input, a rebuilt earlier
stage invalidate it and every stage after it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
import torch
import yaml
from helpers import TINY, rlvr_cli

from rlvr.cli import main
from rlvr.config import ConfigError
from rlvr.logging import read_metrics
from rlvr.stages import OutputInUse, is_cached, stamp_of
from rlvr.stages.recipe import load_recipe, run_recipe

FAST = ["num_examples=48", "threads=1", "trl.max_steps=2", "trl.per_device_train_batch_size=8"]
RL = [*TINY, "train.threads=1"]  # an RL stage's overrides: the small run on one thread


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
    err = tmp_path / "killed.err"
    with err.open("w") as stderr:
        proc = subprocess.Popen([*rlvr_cli(), "run", recipe], env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                stdout=subprocess.DEVNULL, stderr=stderr)
    first = killed / "checkpoints" / "step_000002"

    def kill_at_first_checkpoint():
        deadline = time.monotonic() + 240
        while proc.poll() is None and not first.is_dir() and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_at_first_checkpoint, daemon=True)
    killer.start()
    # meanwhile the uninterrupted run, here (both on one thread: the two cores are both used)
    whole = tmp_path / "whole"
    try:
        run_recipe(write_recipe(tmp_path, [rl_stage("rl", micro_model, whole, f"train.steps={steps}",
                                                    "checkpoint.every=2", "checkpoint.keep=3")], "w.yaml", "out-w"))
        killer.join(timeout=300)
    finally:
        proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.read_text()[-2000:]
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

    for x, y in zip(train_records(killed), train_records(whole), strict=True):
        assert x == y, {k: (x[k], y.get(k)) for k in x if x[k] != y.get(k)}
    from safetensors.torch import load_file

    a, b = load_file(killed / "final" / "model.safetensors"), load_file(whole / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert run_recipe(recipe)["stages"]["rl"]["cached"]  # finished: reused, not resumed again


# ---- caches keyed on content ----------------------------------------------------------------------

def perturb_weights(model_dir) -> None:
    """Save other weights (same architecture, same size) over the model's own."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    model.save_pretrained(model_dir, safe_serialization=True)


@pytest.mark.parametrize("stamped", [True, False], ids=["stamped-input", "unstamped-input"])
def test_replaced_input_weights_or_tokenizer_rerun_the_stage(micro_model, tmp_path, capsys, stamped):
    """The input model's weights replaced in place: `rlvr sft` rebuilds instead of reusing, whether the
    input carries a stage stamp (unchanged by the replacement) or none (a user's or a hub model)."""
    model, out = tmp_path / "in", tmp_path / "sft"
    shutil.copytree(micro_model, model)
    if not stamped:
        (model / "rlvr_pretrain.json").unlink()
    args = ["sft", f"model={model}", f"out_dir={out}", *FAST]
    assert main(args) == 0 and main(args) == 0
    assert "sft: reusing" in capsys.readouterr().out
    old = stamp_of(out)
    perturb_weights(model)
    assert (stamp_of(model) is not None) == stamped
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "reusing" not in said and f"sft: rebuilding {out} (its input model changed)" in said
    new = stamp_of(out)
    assert new["input_fingerprint"] != old["input_fingerprint"] and new["config_hash"] != old["config_hash"]
    assert main(args) == 0 and "sft: reusing" in capsys.readouterr().out
    tok = model / "tokenizer_config.json"  # the tokenizer counts too
    tok.write_text(json.dumps({**json.loads(tok.read_text()), "model_max_length": 77}))
    assert not is_cached("sft", sft_cfg(model, out))


def sft_cfg(model, out):
    from rlvr.config import load_config
    from rlvr.stages import STAGES

    return load_config(STAGES["sft"].config(), "configs/stages/sft.yaml", [f"model={model}", f"out_dir={out}", *FAST])


def test_a_rebuilt_stage_invalidates_every_stage_after_it(micro_model, tmp_path, capsys):
    """`rlvr sft --force` rebuilds a recipe's first stage with the same config: the next `rlvr run`
    reuses that stage (its config and input are unchanged) and rebuilds both stages after it."""
    recipe = write_recipe(tmp_path, [sft_stage("sft", model=micro_model), sft_stage("sft_again", input="sft"),
                                     sft_stage("mid", input="sft_again", command="midtrain")])
    first = run_recipe(recipe)["stages"]
    assert [r["cached"] for r in first.values()] == [False, False, False]
    assert main(["sft", "--force", f"model={micro_model}", f"out_dir={tmp_path / 'out' / 'sft'}", *FAST]) == 0
    capsys.readouterr()
    again = run_recipe(recipe)["stages"]
    said = capsys.readouterr().out
    assert [r["cached"] for r in again.values()] == [True, False, False]
    assert said.count("(its input model changed)") == 2
    assert all(again[n]["config_hash"] != first[n]["config_hash"] for n in ("sft_again", "mid"))


def test_the_report_reevaluates_a_model_whose_weights_were_replaced(micro_model, tmp_path, tiny_cfg):
    """The report's evaluation cache beside a model is keyed on its content too, not on its stamp."""
    from rlvr.stages.report import evaluate_model

    model = tmp_path / "m"
    shutil.copytree(micro_model, model)
    cfg = tiny_cfg("train.threads=1", model=model)
    first = evaluate_model(str(model), cfg)
    assert evaluate_model(str(model), cfg) == first  # cached
    perturb_weights(model)
    evaluate_model(str(model), cfg)
    assert len(json.loads((model / "rlvr_eval.json").read_text())) == 2  # evaluated again, under a new key
