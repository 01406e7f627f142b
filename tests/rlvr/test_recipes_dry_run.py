"""Recipes and the dry run: every RL recipe in configs/recipes/ passes `--dry-run` (resolved config,
reachability, memory preflight, one RL step on CPU with a shrunk random-init model of the same
architecture); bad input is one clear error before any heavy work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlvr.config import TrainConfig, load_config

RECIPES = sorted(p for p in Path("configs/recipes").glob("*.yaml")
                 if "stages" not in (yaml.safe_load(p.read_text()) or {}))  # stage recipes are `rlvr run`'s


def test_there_are_gpu_recipes():
    names = {p.name for p in RECIPES}
    assert {"qwen2.5-0.5b-gsm8k.yaml", "qwen2.5-1.5b-countdown.yaml", "qwen2.5-3b-countdown.yaml",
            "qwen2.5-math-7b-dapo.yaml"} <= names
    for p in RECIPES:
        header = p.read_text().split("\nmodel:")[0]
        assert "Memory" in header and "Time per step" in header, p


# Every recipe's step runs on the hf engine (it starts in a second); the slow case runs one recipe
# on its own engine, vLLM with a tied Qwen2 head, as a user's dry run does (~45 s more: the engine's
# start-up; tests/rlvr/test_architectures.py covers the tied Qwen2 on vLLM in the default suite).
CASES = [*[pytest.param(p, "hf", id=p.stem) for p in RECIPES],
         pytest.param(Path("configs/recipes/qwen2.5-0.5b-gsm8k.yaml"), None, id="qwen2.5-0.5b-gsm8k-own-engine",
                      marks=pytest.mark.slow)]


@pytest.mark.e2e  # one RL step on a random-init model of each recipe's architecture
@pytest.mark.parametrize("recipe,engine", CASES)
def test_dry_run(recipe, engine, tmp_path, capsys):
    from rlvr.dry_run import dry_run

    cfg = load_config(TrainConfig, str(recipe))
    result = dry_run(cfg, workdir=str(tmp_path), engine_kind=engine)
    out = capsys.readouterr().out
    assert "# resolved config" in out and f"model: {cfg.model}" in out
    assert "model: UNREACHABLE" in out or "model: local" in out
    assert "memory preflight" in out and result["preflight"] is not None
    assert result["metrics"]["logp_diff_max"] <= cfg.engine.max_logprob_diff
    assert "step 1:" in out and "dry run done" in out
    if "math-7b" in recipe.name:  # one GPU cannot hold it: the dry run says what would
        assert not result["preflight"].fits and "settings that would fit one GPU: lora" in out


@pytest.mark.e2e  # the CLI in a subprocess: seconds of imports (the unit tier stays in-process)
def test_missing_model_path_is_one_error_before_loading(tmp_path):
    out = subprocess.run([sys.executable, "-m", "rlvr.cli", "train", "--config", str(RECIPES[0]),
                          f"model={tmp_path / 'nope'}", f"run_dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "model: no such directory" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


def test_preflight_refuses_with_breakdown_and_settings_that_fit():
    from rlvr import preflight
    from rlvr.dry_run import KNOWN_CONFIGS

    cfg = TrainConfig(model="Qwen/Qwen2.5-1.5B", engine={"kind": "vllm", "gpu_memory_utilization": 0.5},
                      train={"micro_batch_size": 16}, sampling={"max_tokens": 1024})
    with pytest.raises(preflight.PreflightError) as err:
        preflight.check(cfg, KNOWN_CONFIGS["Qwen/Qwen2.5-1.5B"], gpu_gib=40, prompt_tokens=256)
    msg = str(err.value)
    assert "DOES NOT FIT" in msg and "AdamW moments" in msg and "logits" in msg
    assert "settings that would fit: train.gradient_checkpointing=true" in msg
    fix = preflight.settings_that_fit(cfg, KNOWN_CONFIGS["Qwen/Qwen2.5-1.5B"], 40, 256)
    data = cfg.model_dump(mode="json", by_alias=True)
    for label in fix:  # applying the suggestions does fit
        key, value = label.split(" ")[0].split("=")
        section, field = key.split(".")
        data[section] = {**(data.get(section) or {}), field: yaml.safe_load(value)}
    assert preflight.estimate(TrainConfig.model_validate(data), KNOWN_CONFIGS["Qwen/Qwen2.5-1.5B"], 40, 256).fits


def test_param_count_matches_transformers():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlvr.dry_run import KNOWN_CONFIGS
    from rlvr.preflight import param_count

    for name in ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-Math-7B"):
        spec = dict(KNOWN_CONFIGS[name])
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
        assert param_count(KNOWN_CONFIGS[name]) == sum(p.numel() for p in model.parameters()), name
