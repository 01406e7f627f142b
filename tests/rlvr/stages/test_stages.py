"""The TRL stages (midtrain, sft, dpo) on a micro model: a few steps each, a loadable HF directory
out, their data from the training split only, and one clear error when DPO cannot form a pair."""

from __future__ import annotations

import json

import pytest
import torch

from rlvr.cli import main
from rlvr.config import load_config
from rlvr.stages import STAGES, is_cached, run_stage, stamp_of

FAST = ["num_examples=64", "threads=1", "trl.max_steps=3", "trl.per_device_train_batch_size=8", "trl.logging_steps=1"]
PAIRS = ["pairs.engine=hf", "pairs.num_prompts=24", "pairs.heldout_prompts=16", "pairs.max_tokens=24"]


def stage_cfg(command: str, model: str, out, *extra: str):
    return load_config(STAGES[command].config(), f"configs/stages/{command}.yaml",
                       [f"model={model}", f"out_dir={out}", *FAST, *extra])


def changed_params(a_dir, b_dir) -> int:
    from transformers import AutoModelForCausalLM

    a, b = AutoModelForCausalLM.from_pretrained(a_dir), AutoModelForCausalLM.from_pretrained(b_dir)
    return sum(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("command", ["sft", "midtrain"])
def test_sft_and_midtrain_write_a_loadable_model_and_cache(command, micro_model, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / command
    rc = main([command, "--config", f"configs/stages/{command}.yaml", f"model={micro_model}", f"out_dir={out}", *FAST])
    assert rc == 0
    AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    assert changed_params(micro_model, out) > 0
    stamp = stamp_of(out)
    assert stamp["optimizer_steps"] == 3 and stamp["tokens"] > 0 and not (out / "trl").exists()
    capsys.readouterr()
    assert main([command, "--config", f"configs/stages/{command}.yaml", f"model={micro_model}", f"out_dir={out}",
                 *FAST]) == 0
    assert "reusing" in capsys.readouterr().out


def test_stage_data_formats_and_no_held_out_problem(micro_model):
    from transformers import AutoTokenizer

    from rlvr.stages.data import midtrain_texts, sft_examples, training_rows
    from rlvr.tasks import ArithTask, split_of

    task = ArithTask()
    rows, splits = training_rows(task, 4000, seed=0)
    assert all(split_of(r["question"], task.test_fraction) == "train" for r in rows)
    assert not {r["question"] for r in rows} & {r["question"] for r in splits.test}
    ex = sft_examples(task, rows[:1], AutoTokenizer.from_pretrained(micro_model))[0]
    assert ex["prompt"].endswith("<think>") and ex["completion"].endswith(f"<answer>{rows[0]['answer']}</answer>")
    text = midtrain_texts(task, rows[:1])[0]["text"]
    assert "<answer>" not in text and "Assistant" not in text and text.endswith(f"={rows[0]['answer']}")


def test_sft_trains_on_the_completion_only(micro_model, tmp_path):
    """Labels of the prompt tokens are masked: SFT loss is on the trace, not the prompt."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from rlvr.stages.data import sft_examples, training_rows
    from rlvr.stages.trl_stages import trl_args

    cfg = stage_cfg("sft", micro_model, tmp_path / "x")
    tok = AutoTokenizer.from_pretrained(micro_model)
    rows, _ = training_rows(cfg.task, 4, 0)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(micro_model), processing_class=tok,
                         args=trl_args(SFTConfig, cfg, tmp_path), train_dataset=Dataset.from_list(sft_examples(cfg.task, rows, tok)))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    prompt_len = len(tok(sft_examples(cfg.task, rows[:1], tok)[0]["prompt"], add_special_tokens=False)["input_ids"])
    labels = batch["labels"][0]
    assert (labels[:prompt_len] == -100).all() and (labels[prompt_len:] != -100).any()


def test_trl_section_rejects_unknown_keys(micro_model, tmp_path):
    assert main(["sft", f"model={micro_model}", f"out_dir={tmp_path / 'o'}", "trl.learning_rat=1e-4"]) == 2


def test_dpo_writes_a_model_and_measures_the_held_out_margin(micro_model, tmp_path):
    """Pairs are judged by the strict format check, not by the answer: how often the micro base answers
    right depends on the CPU that pretrained it (0 of 192 samples on a real AVX2 machine, so no pair),
    while about a third of its samples are well-formed on every CPU seen."""
    from verifiers import get

    cfg = stage_cfg("dpo", micro_model, tmp_path / "dpo", *PAIRS, "pairs.verifier=r1_format", "trl.learning_rate=1e-3")
    record = run_stage("dpo", cfg)
    assert record["pairs"] >= 1 and record["optimizer_steps"] == 3
    assert changed_params(micro_model, tmp_path / "dpo") > 0
    assert is_cached("dpo", cfg)
    ex = record["example"]
    assert ex["chosen"] != ex["rejected"] and ex["prompt"].endswith("<think>")
    fmt = get("r1_format")
    assert fmt.score(ex["chosen"], {}).reward == 1.0 and fmt.score(ex["rejected"], {}).reward == 0.0
    # DPO's loss raises the chosen-over-rejected margin on the pairs it trains on. Whether three steps on a
    # micro model carry over to held-out pairs is not guaranteed (it flipped sign under the AVX2 dispatch);
    # the held-out margin is measured on the real base by `make phases`.
    assert record["train_margin_after"] > record["train_margin_before"]
    if record["heldout_pairs"]:
        assert record["heldout_margin_after"] != record["heldout_margin_before"]


def test_dpo_without_pairs_is_one_error_saying_how_many_prompts(micro_model, tmp_path, capsys):
    """An arithmetic-only model on countdown gets every prompt wrong: no pair can be formed."""
    rc = main(["dpo", f"model={micro_model}", f"out_dir={tmp_path / 'dpo'}", *FAST, *PAIRS, "task.kind=countdown",
               "pairs.num_prompts=6", "pairs.n=2", "pairs.heldout_prompts=0"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no preference pairs: tried 6 prompts with 2 samples each" in err and "6 wrong every time" in err
    assert not (tmp_path / "dpo").exists()


def test_stamp_records_the_config_and_input(micro_model, tmp_path):
    cfg = stage_cfg("sft", micro_model, tmp_path / "s")
    run_stage("sft", cfg)
    stamp = json.loads((tmp_path / "s" / "rlvr_stage.json").read_text())
    assert stamp["command"] == "sft" and stamp["config"]["model"] == micro_model
    cfg2 = stage_cfg("sft", micro_model, tmp_path / "s", "trl.learning_rate=3e-4")
    assert not is_cached("sft", cfg2)  # a changed TRL argument reruns the stage
