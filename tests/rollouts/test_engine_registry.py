"""One way to choose an engine: the per-kind configs of rollouts.config, their capabilities and build()."""

from __future__ import annotations

import pytest

from rlvr.config import ConfigError, TrainConfig, load_config
from rollouts.config import ENGINES, EngineConfigBase, engine_class, engine_config, trainable_kinds


def test_each_kind_has_its_own_fields_and_capabilities():
    assert trainable_kinds() == ["hf", "static", "vllm"] and not ENGINES["hf-generate"].trainable
    vllm, static, hf = engine_config("vllm"), engine_config("static"), engine_config("hf")
    assert vllm.can_sleep and vllm.receives_nccl and vllm.own_process and not vllm.computes_on_caller_thread
    for cfg in (static, hf):
        assert not (cfg.can_sleep or cfg.receives_nccl or cfg.own_process) and cfg.computes_on_caller_thread
    assert "kv_cache_gib" in static.model_fields and "sleep_level" not in static.model_fields
    assert set(hf.model_fields) == set(EngineConfigBase.model_fields)  # hf adds no field of its own
    assert engine_config("vllm", sleep_level=1).sleeps and not vllm.sleeps and not hf.sleeps


def test_engine_arguments_per_kind():
    """What each kind's engine is constructed with (the arguments the loop passed before the registry)."""
    assert engine_config("hf").engine_kwargs(2, 7, True) == {"dtype": "float32"}
    assert engine_config("static", kv_cache_gib=0.5).engine_kwargs(2, 7, True) == {"dtype": "float32",
                                                                                    "kv_cache_gib": 0.5}
    assert engine_config("vllm").engine_kwargs(2, 7, True) == {
        "dtype": "float32", "kv_cache_gib": 1.0, "gpu_memory_utilization": 0.3, "sleep_level": 0,
        "enforce_eager": True, "seed": 7, "threads": 2, "separate_process": True}
    assert engine_class("static").__name__ == "StaticCacheEngine" and engine_class("vllm").__name__ == "VLLMEngine"


def test_unknown_kind_and_another_kinds_field_are_one_error_naming_them():
    with pytest.raises(ConfigError, match=r"engine\.kind: unknown engine 'vlm'; known: hf, static, vllm"):
        load_config(TrainConfig, "configs/tiny_r1zero.yaml", ["model=m", "engine.kind=vlm"])
    with pytest.raises(ConfigError, match=r"engine\.sleep_level: unknown key for engine\.kind=static"):
        load_config(TrainConfig, "configs/tiny_r1zero.yaml", ["model=m", "engine.kind=static", "engine.sleep_level=1"])
    with pytest.raises(ValueError, match="unknown engine 'nope'"):
        engine_config("nope")
    cfg = load_config(TrainConfig, "configs/tiny_r1zero.yaml", ["model=m", "engine.kind=static",
                                                                "engine.kv_cache_gib=0.5"])
    assert type(cfg.engine).__name__ == "StaticEngineConfig" and cfg.engine.kv_cache_gib == 0.5
    assert TrainConfig(model="m").engine.kind == "hf"


def test_sleep_mode_with_async_is_refused():
    with pytest.raises(ConfigError, match="engine.sleep_level"):
        load_config(TrainConfig, "configs/tiny_r1zero.yaml", ["model=m", "engine.sleep_level=1", "train.async=true"])


def test_build_makes_the_kinds_engine(micro_model):
    from rollouts import SamplingConfig

    engine = engine_config("static").build(micro_model, threads=1, seed=0)
    try:
        assert type(engine).__name__ == "StaticCacheEngine"
        groups = engine.generate(["User: Compute 1+2.\nAssistant: <think>"], SamplingConfig(n=2, max_tokens=4, seed=1))
        assert len(groups[0].completions) == 2
    finally:
        engine.close()


def test_config_command_lists_each_kinds_fields(capsys):
    from rlvr.cli import main

    assert main(["config", "engine"]) == 0
    out = capsys.readouterr().out
    assert "engine.kind" in out and "hf, static, vllm" in out
    assert "engine.sleep_level  [vllm]" in out and "engine.kv_cache_gib  [static, vllm]" in out
