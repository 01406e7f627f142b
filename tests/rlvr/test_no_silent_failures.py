"""Every case a new user hit that exited 0 having done the wrong thing, hung, damaged a run or
ended in a traceback: each is now a clear, early error (or a printed note), tested here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from rlvr.config import ConfigError, TrainConfig, load_config
from rlvr.tasks import load_task, split_of
from rlvr.tasks.gsm8k import GSM8KTask


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def gsm_rows(questions):
    return [{"question": q, "answer": f"#### {i}"} for i, q in enumerate(questions)]


# case 1: an empty training split with a separate test file used to spin forever in PromptSampler.next
def test_empty_training_split_is_a_load_time_error(tmp_path):
    from rlvr.draw import PromptSampler

    empty = jsonl(tmp_path / "empty.jsonl", [])
    test = jsonl(tmp_path / "test.jsonl", gsm_rows(["What is 1+1?", "What is 2+2?"]))
    with pytest.raises(ValueError, match=r"gave 0 training and 2 held-out rows"):
        load_task(GSM8KTask(path=empty, test_path=test))
    with pytest.raises(ValueError, match="training split is empty"):
        PromptSampler(0, seed=0)


# case 2: an empty file, or one too small to hold anything out, ended in ZeroDivisionError in evaluate
def test_too_small_file_names_the_file_and_counts(tmp_path):
    questions = [q for q in (f"How many legs do {i} ducks have?" for i in range(100)) if split_of(q, 0.1) == "train"][:4]
    path = jsonl(tmp_path / "four.jsonl", gsm_rows(questions))
    with pytest.raises(ValueError, match=r"four.jsonl.*gave 4 training and 0 held-out rows"):
        load_task(GSM8KTask(path=path))
    with pytest.raises(ValueError, match=r"gave 0 training and 0 held-out rows"):
        load_task(GSM8KTask(path=jsonl(tmp_path / "none.jsonl", [])))


# case 3 (one bad row poisons its batch) is tested per batch path: tests/verifiers/test_math_verifier.py::
# test_one_bad_row_does_not_crash_the_batch, tests/verifiers/test_verifier_batch.py::test_score_many_raising_costs_only_the_bad_row,
# ::test_rubric_batch_keeps_errors_per_row, ::test_code_score_many_gives_a_broken_row_its_own_error


def tiny_run(micro_model, run_dir, *more):
    return load_config(TrainConfig, "configs/tiny_r1zero.yaml", [
        f"model={micro_model}", f"run_dir={run_dir}", "engine.kind=hf", "train.steps=2", "train.prompts_per_step=2",
        "sampling.n=2", "sampling.max_tokens=8", "eval.num_prompts=2", "eval.k=1", "eval.max_tokens=8",
        "logging.progress=false", "logging.tensorboard=false", "checkpoint.every=1", "train.threads=1", *more])


# case 4: a refused --resume rewrote config.yaml and trimmed metrics.jsonl before failing
def test_refused_resume_leaves_the_run_untouched(micro_model, tmp_path):
    from rlvr.cli import main
    from rlvr.loop import train

    run = tmp_path / "run"
    train(tiny_run(micro_model, run))
    before = {p: (run / p).read_bytes() for p in ("config.yaml", "metrics.jsonl")}
    assert main(["train", "--resume", str(run), "train.steps=1"]) == 2  # below the checkpoint's step 2
    assert main(["train", "--resume", str(run), "optim.lr=0.5"]) == 2  # a change that matters
    assert {p: (run / p).read_bytes() for p in before} == before
    assert main(["train", "--resume", str(run), "train.steps=3"]) == 0  # the plain resume still works


# case 5: configs that train nothing, every step, used to run to exit 0
@pytest.mark.parametrize("overrides, match", [
    (["sampling.n=1"], r"sampling\.n: grpo compares completions within a group"),
    (["sampling.n=1", "algorithm=rloo"], r"sampling\.n: rloo"),
    (["rewards=[{verifier: arith, weight: 0}, {verifier: r1_format, weight: 0}]"], r"rewards\.terms: every weight is 0"),
])
def test_degenerate_configs_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TrainConfig, "configs/tiny_r1zero.yaml", ["model=m", *overrides])


def test_zero_gradient_warns_after_n_steps(capsys):
    from rlvr.alarms import Alarms
    from rlvr.config import AlarmsConfig

    alarms = Alarms(AlarmsConfig(zero_grad_steps=3, zero_reward_steps=0), ["arith"])
    for step in range(1, 4):
        alarms.check(step, [], {"grad_norm": 0.0})
    assert "gradient was exactly 0 for 3 steps" in capsys.readouterr().err


# case 6: prompts longer than the model's context were generated past it (HF) or crashed vLLM
def test_prompts_longer_than_the_context_are_dropped_or_refused(micro_model, capsys):
    from transformers import AutoTokenizer

    from rlvr.components import max_prompt_tokens
    from rlvr.tasks import ArithTask, prepare_rows

    cfg = load_config(TrainConfig, "configs/tiny_r1zero.yaml", [f"model={micro_model}"])
    from rlvr.models import context_length

    context = context_length(micro_model)
    assert max_prompt_tokens(cfg, micro_model) == context - max(cfg.sampling.max_tokens, cfg.eval.max_tokens)
    tok = AutoTokenizer.from_pretrained(micro_model)
    task = ArithTask(train_size=50, test_size=20)
    data = load_task(task)
    lengths = sorted(len(tok(task.template.format(question=r["question"]))["input_ids"]) for r in data.train)
    limit = lengths[len(lengths) // 2]  # half the training prompts are longer
    notes = prepare_rows(data, task, tok, limit)
    assert data.train and all(len(r["prompt_ids"]) <= limit for r in data.train + data.test)
    assert any("dropped" in n and "task.max_prompt_tokens" in n for n in notes)
    with pytest.raises(ValueError, match=r"task\.strict"):
        prepare_rows(load_task(task.model_copy(update={"strict": True})), task.model_copy(update={"strict": True}),
                     tok, limit)


# case 7: late or unclear errors, each now one line naming the field, before any model loads
def test_unknown_verifier_and_kwargs_typo_are_config_errors():
    with pytest.raises(ConfigError, match=r"rewards\.terms\.0\.verifier: unknown verifier 'mathh'; available: .*math"):
        load_config(TrainConfig, None, ["model=m", "rewards=[{verifier: mathh}]"])
    with pytest.raises(ConfigError, match=r"rewards\.terms\.0\.kwargs\.timout: 'math' takes no argument 'timout'; "
                                          r"accepted: timeout"):
        load_config(TrainConfig, None, ["model=m", "rewards=[{verifier: math, kwargs: {timout: 3}}]"])


def test_model_dir_without_weights_or_tokenizer(micro_model, tmp_path):
    from rlvr.models import resolve_model

    no_weights, no_tok = tmp_path / "no-weights", tmp_path / "no-tok"
    shutil.copytree(micro_model, no_weights)
    (no_weights / "model.safetensors").unlink()
    shutil.copytree(micro_model, no_tok)
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no weights"):
        resolve_model(str(no_weights))
    with pytest.raises(FileNotFoundError, match=r"has no tokenizer \(none of tokenizer.json"):
        resolve_model(str(no_tok))
    with pytest.raises(FileNotFoundError, match=r"could not be fetched from the Hugging Face hub.*set model=DIR"):
        resolve_model("no-such-org/no-such-model")


def test_error_messages_keep_their_closing_quote(capsys):
    from rlvr.commands._common import fail

    assert fail(FileNotFoundError("model: no such directory '/nope'")) == 2
    assert fail(KeyError("unknown verifier 'x'")) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: model: no such directory '/nope'", "error: unknown verifier 'x'"]


# case 8: the README claimed bit-identical reruns; that holds at train.threads=1 (docs/training.md)
def test_two_fresh_runs_at_one_thread_are_bit_identical(micro_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlvr.logging import read_metrics
    from rlvr.loop import train

    finals = []
    for name in ("a", "b"):
        summary = train(tiny_run(micro_model, tmp_path / name, "checkpoint.every=0"))
        finals.append(AutoModelForCausalLM.from_pretrained(summary["checkpoint"]).state_dict())
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
    strip = lambda recs: [{k: v for k, v in r.items() if not k.endswith(("_s", "_share"))} for r in recs]  # noqa: E731
    assert strip(read_metrics(tmp_path / "a" / "metrics.jsonl")) == strip(read_metrics(tmp_path / "b" / "metrics.jsonl"))


# case 9: silent data choices are printed; the format rate no longer depends on the reward terms
def test_splits_and_eval_counts_are_printed(micro_model, tmp_path, capsys):
    from rlvr.loop import train

    summary = train(tiny_run(micro_model, tmp_path / "run", "eval.num_prompts=500", "logging.samples_every=1"))
    out = capsys.readouterr().out
    assert "task arith: 4000 training and 200 held-out problems" in out
    assert "evaluation: all 200 held-out prompts (eval.num_prompts=500" in out
    assert summary["after"]["num_prompts"] == 200.0
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples and {"question", "completion", "reward"} <= set(samples[0])


def test_format_rate_is_measured_without_a_format_reward():
    """A run that rewards correctness only still reports its format rate: the run's rubric checks the format
    at weight 0 (a metric, no reward), and the rate comes from those scores."""
    from rlvr.components import build_rubric
    from rlvr.draw import rollout_metrics
    from rlvr.pipeline import ScoredGroup
    from rollouts import Completion, Group

    cfg = load_config(TrainConfig, "configs/tiny_r1zero.yaml", ["model=m", "rewards=[{verifier: arith, weight: 1.0}]"])
    rubric = build_rubric(cfg)
    assert [(v.name, w) for v, w in rubric.parts] == [("arith", 1.0), ("r1_format", 0.0)]
    comps = [Completion(" 1+1=2 </think> <answer>2</answer>", [1], [0.0], "stop"),
             Completion(" guess 2", [1], [0.0], "stop")]
    row = {"question": "q", "answer": "2"}
    scores = [rubric.score(c.text, row) for c in comps]
    assert [s.reward for s in scores] == [rubric.parts[0][0].score(c.text, row).reward for c in comps]  # no reward
    assert rollout_metrics([ScoredGroup(row, Group("p", [0], comps), scores)])["format_rate"] == 0.5


@pytest.mark.e2e  # the CLI in a subprocess: seconds of imports (the unit tier stays in-process)
def test_config_command_and_print_config(tmp_path):
    out = subprocess.run([sys.executable, "-m", "rlvr.cli", "config", "alarms"], capture_output=True, text=True,
                         check=True).stdout
    assert "alarms.zero_reward_steps" in out and "alarms.max_error_rate" in out
    out = subprocess.run([sys.executable, "-m", "rlvr.cli", "train", "--config", "configs/tiny_r1zero.yaml",
                          "model=m", "sampling.n=4", "--print-config"], capture_output=True, text=True, check=True).stdout
    import yaml

    printed = yaml.safe_load(out)
    assert printed["sampling"]["n"] == 4 and printed["task"]["kind"] == "arith"
    assert printed["rewards"]["terms"][0]["verifier"] == "arith"


def test_reward_alarms_stop_a_run_naming_the_verifier(micro_model, tmp_path):
    """An arithmetic model on countdown never earns a reward: the run stops at the alarm, not at exit 0."""
    from rlvr.alarms import Alarms, RewardAlarm
    from rlvr.config import AlarmsConfig
    from rlvr.loop import train
    from rlvr.pipeline import ScoredGroup
    from rollouts import Completion, Group
    from verifiers import Score

    cfg = tiny_run(micro_model, tmp_path / "run", "task.kind=countdown", "task.train_size=40", "task.test_size=2",
                   "rewards=[{verifier: countdown}]", "train.steps=6", "alarms.zero_reward_steps=2", "sampling.n=2")
    with pytest.raises(RewardAlarm, match=r"(?s)every reward was 0 for 2 steps in a row.*\['countdown'\].*completion:"):
        train(cfg)
    crashed = [ScoredGroup({"question": "q"}, Group("p", [0], [Completion("x", [1], [0.0], "stop")] * 4),
                           [Score(0.0, None, {}, "timeout")] * 3 + [Score(1.0, True)])]
    with pytest.raises(RewardAlarm, match=r"(?s)3 of 4 samples ended verifier_error \(checks failed in the verifier.*"
                                          r"error=timeout"):
        Alarms(AlarmsConfig(max_error_rate=0.5), ["code"]).check(1, crashed, {})
