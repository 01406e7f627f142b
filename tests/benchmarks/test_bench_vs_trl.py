"""benchmarks/vs_trl.py: both sides are configured alike, and (slow) both train and report times."""

from __future__ import annotations

import importlib.util
import math
import sys
import warnings
from pathlib import Path

import pytest
from helpers import ROOT

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pytest.importorskip("trl")



def _load_bench():
    spec = importlib.util.spec_from_file_location("vs_trl", ROOT / "benchmarks" / "vs_trl.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vs_trl"] = mod
    spec.loader.exec_module(mod)
    return mod


vs_trl = _load_bench()


@pytest.mark.parametrize("gen", ["vllm", "generate", "cb"])
def test_settings_are_equal_on_both_sides(tmp_path, gen):
    s = vs_trl.Settings(model="artifacts/tiny-base", steps=7)
    cfg = vs_trl.rlvr_config(s, str(tmp_path / "rlvr"))
    args = vs_trl.trl_config(s, gen, str(tmp_path / "trl"))
    rows = vs_trl.settings_table(s, args, cfg)
    assert len(rows) >= 15
    for name, trl_value, rlvr_value in rows:
        assert trl_value == rlvr_value, name
    # one optimiser step consumes exactly one generation batch of 16 prompts x 8 completions
    assert args.generation_batch_size == 16 * 8
    assert args.steps_per_generation == args.gradient_accumulation_steps == 2
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 16 * 8
    # token-mean over the whole batch, constant lr, no KL, float32, no IS correction, no eval/saving
    assert args.loss_type == "dapo" and cfg.algorithm.loss_agg == "token-mean"
    assert args.lr_scheduler_type == "constant" and args.warmup_steps == 0
    assert args.scale_rewards == "group" and cfg.algorithm.scale_std
    assert not args.bf16 and cfg.engine.dtype == "float32"
    assert args.vllm_importance_sampling_correction is False
    assert args.save_strategy == "no" and args.eval_strategy == "no" and cfg.eval.every == 0
    assert args.use_vllm == (gen == "vllm") and args.use_transformers_continuous_batching == (gen == "cb")
    assert cfg.engine.kind == "static" and cfg.train.threads == s.threads


def test_overrides_pass_through(tmp_path):
    s = vs_trl.Settings()
    cfg = vs_trl.rlvr_config(s, str(tmp_path), ["train.micro_batch_size=32", "engine.kind=hf"])
    assert cfg.train.micro_batch_size == 32 and cfg.engine.kind == "hf"


def test_trl_sees_rlvrs_prompts_and_rewards():
    from rlvr.draw import PromptSampler
    from rlvr.tasks import ArithTask, load_task, render
    from verifiers import Rubric, get

    s = vs_trl.Settings(steps=3)
    data = vs_trl.trl_dataset(s)
    train = [dict(r, prompt=render(r["question"], ArithTask())) for r in load_task(ArithTask()).train]
    sampler = PromptSampler(len(train), s.seed)
    for step in range(3):  # TRL reads the dataset in order; rlvr draws these prompts at each step
        expected = [train[i]["prompt"] for i in sampler.next(s.prompts_per_step)]
        assert data[step * 16 : (step + 1) * 16]["prompt"] == expected

    rows = [train[0], train[1], train[2]]
    completions = [f" {rows[0]['question']} </think> <answer>{rows[0]['answer']}</answer>",
                   " guess </think> <answer>999</answer>", f"{rows[2]['answer']}"]
    funcs = vs_trl.reward_funcs(list(s.reward_weights))
    per_func = [f(prompts=[r["prompt"] for r in rows], completions=completions, completion_ids=None,
                  answer=[r["answer"] for r in rows], question=[r["question"] for r in rows], n_ops=[0] * 3)
                for f in funcs]
    trl_reward = [sum(w * v[i] for w, v in zip(s.reward_weights.values(), per_func)) for i in range(3)]
    rubric = Rubric([(get(k), w) for k, w in s.reward_weights.items()])
    ours = [rubric.score(c, r).reward for c, r in zip(completions, rows)]
    assert trl_reward == pytest.approx(ours)
    assert ours[0] == pytest.approx(1.1) and ours[1] == pytest.approx(0.1)


def test_over_seeds_reports_mean_and_se_of_held_out_pass1():
    def seed_result(base, trl, rlvr):
        side = {"summary": {"accuracy_last5": 0.5, "step_s": 1.0}}
        return {"steps": 20, "threads": 1, "eval_prompts": 200, "trl_best": "generate", "trl": {"generate": side},
                "rlvr": side, "eval": {"base": {"pass@1": base}, "trl-generate": {"pass@1": trl},
                                       "rlvr": {"pass@1": rlvr}}}

    agg = vs_trl.over_seeds([seed_result(0.4, 0.50, 0.60), seed_result(0.4, 0.52, 0.62),
                             seed_result(0.4, 0.54, 0.64)], [0, 1, 2])
    t = agg["table"]
    assert t["base"]["pass@1"] == pytest.approx((0.4, 0.0)) and t["rlvr"]["n"] == 3
    assert t["TRL generate"]["pass@1"][0] == pytest.approx(0.52)
    assert t["TRL generate"]["pass@1"][1] == pytest.approx(0.02 / math.sqrt(3))  # sample sd 0.02 over 3 seeds
    (pair,) = agg["pairs"]
    assert pair["a"] == "rlvr" and pair["b"] == "TRL generate" and pair["diff"] == pytest.approx(0.10)
    assert pair["z"] == pytest.approx(0.10 / math.sqrt(2 * (0.02 / math.sqrt(3)) ** 2))
    assert not pair["within_noise"]
    assert [r["pass@1"]["rlvr"] for r in agg["per_seed"]] == [0.60, 0.62, 0.64]


@pytest.mark.slow
def test_both_sides_train_and_report(micro_model, tmp_path):
    """Two steps of each side on the micro model, in subprocesses like the real benchmark."""
    s = vs_trl.Settings(model=micro_model, steps=2, prompts_per_step=4, n=4, micro_batch=8, max_tokens=16,
                        eval_prompts=8)
    results = {}
    for kind in ("trl-generate", "rlvr"):
        res, err = vs_trl._subprocess(kind, s, tmp_path / kind, [], timeout=600)
        assert res is not None, err
        assert [r["step"] for r in res["steps"]] == [1, 2]
        for rec in res["steps"]:
            assert rec["step_s"] > 0 and rec["generate_s"] > 0 and rec["learn_s"] > 0
            assert sum(rec[f"{p}_s"] for p in vs_trl.PHASES) == pytest.approx(rec["step_s"], abs=1e-6)
            assert math.isfinite(rec["reward"]) and 0.0 <= rec["reward"] <= 1.1
        assert (Path(res["checkpoint"]) / "config.json").is_file()
        results[kind] = vs_trl.summarize(res)
    ev, err = vs_trl._subprocess("eval", s, tmp_path / "eval", ["--_checkpoints", _ckpts(s, tmp_path)], timeout=600)
    assert ev is not None, err
    assert set(ev) == {"base", "trl", "rlvr"} and all(0 <= m["pass@1"] <= 1 for m in ev.values())


def _ckpts(s, tmp_path):
    import json

    return json.dumps({"base": s.model, "trl": str(tmp_path / "trl-generate" / "final"),
                       "rlvr": str(tmp_path / "rlvr" / "final")})


def test_reuse_refuses_a_seed_run_with_other_overrides(micro_model, tmp_path, monkeypatch):
    """``--reuse`` reads a finished seed only when it ran with this call's settings: a seed trained with
    ``--rlvr-override engine.kind=vllm`` is not silently averaged into a comparison without it."""
    import json

    seed0 = tmp_path / "seed0"
    seed0.mkdir()
    (seed0 / "results.json").write_text(json.dumps({"steps": 20, "threads": 2, "eval_prompts": 200, "model": micro_model,
                                                    "rlvr_override": ["engine.kind=vllm"]}))
    monkeypatch.setattr(sys, "argv", ["vs_trl.py", "--model", micro_model, "--seeds", "0,1", "--reuse",
                                      "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"rlvr_override \['engine.kind=vllm'\] \(this call: \[\]\)"):
        vs_trl.main()
