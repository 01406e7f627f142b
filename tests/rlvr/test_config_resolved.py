"""The run's config as written and as derived: ``config.yaml`` keeps what the user wrote and lists derived
values under ``resolved:``; a preset named on the command line never loses silently to the file's fields;
``eval.num_prompts: 0`` turns evaluation off."""

from __future__ import annotations

import pytest
import yaml

from rlvr.config import ConfigError, TrainConfig, config_yaml, load_config


def test_config_yaml_keeps_what_the_user_wrote_and_lists_derived_values_under_resolved():
    cfg = load_config(TrainConfig, "configs/tiny_r1zero.yaml", ["model=m", "train.async=true",
                                                               "algorithm.loss_agg=seq-mean-token-sum-norm"])
    assert cfg.algorithm.is_cap == 2.0 and cfg.algorithm.loss_agg_norm == float(cfg.sampling.max_tokens)
    data = yaml.safe_load(config_yaml(cfg))
    # as written: the fields the run derived are the user's (None: "derive it")
    assert data["algorithm"]["is_cap"] is None and data["algorithm"]["loss_agg_norm"] is None
    assert data["engine"]["max_logprob_diff"] is None
    assert data["resolved"] == {"algorithm.is_cap": 2.0, "algorithm.loss_agg_norm": float(cfg.sampling.max_tokens),
                                "engine.max_logprob_diff": 0.5, "logging.report_to": ["tensorboard"]}
    # read back (a run's config.yaml: `rlvr eval RUN/final`, resume): the block is derived again, not read
    again = TrainConfig.model_validate(data)
    assert again.model_dump() == cfg.model_dump() and again.resolved() == cfg.resolved()


def test_a_value_the_user_set_is_not_listed_as_resolved():
    cfg = load_config(TrainConfig, "configs/tiny_r1zero.yaml", ["model=m", "train.async=true", "algorithm.is_cap=3"])
    data = yaml.safe_load(config_yaml(cfg))
    assert data["algorithm"]["is_cap"] == 3 and "algorithm.is_cap" not in data["resolved"]


def test_a_command_line_preset_conflicting_with_the_file_is_an_error_naming_the_fields():
    with pytest.raises(ConfigError, match=r"algorithm\.preset=ppo.*conflicts.*algorithm\.advantage='grpo' \(the "
                                          r"preset: 'gae'\)"):
        load_config(TrainConfig, "configs/tiny_r1zero.yaml", ["model=m", "algorithm.preset=ppo"])
    # the same field also set on the command line: the user chose, no conflict
    cfg = load_config(TrainConfig, "configs/tiny_r1zero.yaml", ["model=m", "algorithm.preset=ppo",
                                                               "algorithm.advantage=gae"])
    assert cfg.algorithm.advantage == "gae" and cfg.algorithm.needs_critic
    # `algorithm=NAME` replaces the file's whole section: the preset wins
    assert load_config(TrainConfig, "configs/tiny_r1zero.yaml", ["model=m", "algorithm=ppo"]).algorithm.needs_critic


def test_eval_num_prompts_zero_turns_evaluation_off(micro_model, tmp_path, tiny_cfg):
    from rlvr.logging import read_metrics
    from rlvr.loop import train

    summary = train(tiny_cfg(model=micro_model, run_dir=tmp_path / "run", **{
        "train.steps": 2, "checkpoint.every": 3, "eval.num_prompts": 0, "train.threads": 1}))
    assert summary["before"] is None and summary["after"] is None
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["kind"] for r in records] == ["train", "train"]  # no evaluation at step 0 or at the end
    # the loop logs the tokens it trained on: the batch's real tokens (prompts and completions), once per pass
    assert all(r["tokens_trained"] >= r["response_len_mean"] * 16 for r in records)
