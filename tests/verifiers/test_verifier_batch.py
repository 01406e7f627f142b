"""Batch scoring gives every row its own error, and verifiers declare the task keys they
need so that a loader can refuse a bad row before the run starts."""

import pytest

import verifiers
from verifiers import Rubric, Score, get, missing_keys, score_batch
from verifiers.code import status_of

GOOD = {"answer": "7"}


class BatchOnBadRow:
    """A batch verifier whose batch call dies on one bad row (as a real one would when its
    pool chokes on a task); ``score`` fails for that row only."""

    name = "batchy"

    def score(self, completion, task):
        if "answer" not in task:
            raise KeyError("answer")
        return Score(float(completion == task["answer"]), completion == task["answer"], {})

    def score_many(self, completions, tasks, workers):
        return [self.score(c, t) for c, t in zip(completions, tasks)]


class ShortBatch(BatchOnBadRow):
    name = "short"

    def score_many(self, completions, tasks, workers):
        return [self.score(c, t) for c, t in zip(completions[:-1], tasks[:-1])]


class NotAScore(BatchOnBadRow):
    name = "not-a-score"

    def score_many(self, completions, tasks, workers):
        return [self.score(c, t) if i else {"reward": 1.0} for i, (c, t) in enumerate(zip(completions, tasks))]


def test_score_many_raising_costs_only_the_bad_row():
    with pytest.warns(RuntimeWarning, match="row by row"):
        scores = score_batch(BatchOnBadRow(), ["7", "x", "7"], [GOOD, {"question": "?"}, GOOD], workers=2)
    assert [s.reward for s in scores] == [1.0, 0.0, 1.0]
    assert scores[0].error is None and scores[2].error is None
    assert "crash in batchy: KeyError" in scores[1].error and scores[1].correct is None


def test_score_many_with_the_wrong_length_is_scored_row_by_row():
    with pytest.warns(RuntimeWarning, match="returned 2 scores for 3 rows"):
        scores = score_batch(ShortBatch(), ["7", "1", "7"], [GOOD] * 3)
    assert [s.reward for s in scores] == [1.0, 0.0, 1.0] and not any(s.error for s in scores)


def test_a_row_that_is_not_a_score_is_that_rows_error():
    scores = score_batch(NotAScore(), ["7", "7"], [GOOD, GOOD])
    assert "returned dict, not Score" in scores[0].error and scores[1].reward == 1.0


def test_rubric_batch_keeps_errors_per_row():
    rubric = Rubric([(BatchOnBadRow(), 1.0), (get("r1_format"), 0.0)])
    with pytest.warns(RuntimeWarning):
        scores = score_batch(rubric, ["7", "7", "7"], [GOOD, {}, GOOD], workers=2)
    assert [s.error is None for s in scores] == [True, False, True]
    assert [s.reward for s in scores] == [1.0, 0.0, 1.0]
    assert scores[1].metrics["batchy/error"] == 1.0


ADD = {"prompt": "def add(a, b):\n", "entry_point": "add",
       "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}


def test_code_score_many_gives_a_broken_row_its_own_error():
    v = get("code", timeout=2.0)
    rows = [ADD, None, ADD, {"prompt": "x"}]  # not a mapping; a task without tests
    bodies = ["    return a + b\n", "    return a + b\n", "    return a - b\n", "    return 1\n"]
    for scores in (v.score_many(bodies, rows), score_batch(v, bodies, rows)):
        assert [status_of(s) for s in scores] == ["passed", "sandbox_error", "failed", "sandbox_error"]
        assert "crash in code: AttributeError" in scores[1].error
        assert scores[0].reward == 1.0 and scores[2].error is None


# --------------------------------------------------------------------------- task keys


def test_declared_keys_of_the_builtins():
    assert get("arith").requires == ("answer",)
    assert get("arith", answer_key="solution").requires == ("solution",)
    assert get("r1_format").requires == ()
    assert get("countdown").requires == ("numbers", "target")
    assert missing_keys(get("arith"), {"question": "2+2"}) == ["answer"]
    assert missing_keys(get("arith"), {"answer": None}) == ["answer"]  # a null column is missing
    assert missing_keys(get("arith"), {"answer": 0}) == []
    assert missing_keys(get("r1_format"), {}) == []
    assert missing_keys(get("arith"), ["not", "a", "row"]) == ["a mapping of task fields (got list)"]


@pytest.mark.parametrize("task,missing", [
    ({"prompt": "def f():\n", "test": "def check(candidate):\n    assert candidate() == 1\n", "entry_point": "f"}, []),
    ({"test": "def check(candidate):\n    assert candidate() == 1\n"}, ["entry_point"]),  # HumanEval needs it
    ({"test": "assert f() == 1\n"}, []),  # MBPP: module-level asserts
    ({"test_list": ["assert f() == 1"]}, []),
    ({"test_list": []}, ["test | test_list | inputs + outputs | input_output"]),
    ({"inputs": ["1\n"], "outputs": ["1\n"]}, []),
    ({"inputs": ["1\n"]}, ["outputs"]),
    ({"outputs": ["1\n"]}, ["inputs"]),
    ({"input_output": '{"inputs": ["1"], "outputs": ["1"]}'}, []),
    ({"prompt": "def f():\n"}, ["test | test_list | inputs + outputs | input_output"]),
])
def test_code_task_keys(task, missing):
    assert missing_keys(get("code"), task) == missing


def test_a_humaneval_test_without_entry_point_is_refused_not_passed():
    # before: nothing called check(), so every completion "passed"
    score = get("code", timeout=2.0).score("def f():\n    return 2\n",
                                           {"test": "def check(candidate):\n    assert candidate() == 1\n"})
    assert status_of(score) == "sandbox_error" and "entry_point" in score.error


def test_rubric_needs_the_union_of_its_parts():
    rubric = Rubric([(get("countdown"), 1.0), (get("arith"), 0.5), (get("r1_format"), 0.1)])
    assert rubric.requires == ("numbers", "target", "answer")
    assert missing_keys(rubric, {"target": 3}) == ["numbers", "answer"]
    assert missing_keys(Rubric([(get("code"), 1.0), (get("r1_format"), 0.1)]), {}) == [
        "test | test_list | inputs + outputs | input_output"]


def test_verifiers_without_a_declaration_need_nothing_and_alternatives_read_as_or():
    class Plain:
        name = "plain"

        def score(self, completion, task):
            return Score(1.0)

    class Alternatives(Plain):
        requires = (("reference", "answer"), "question")

    assert missing_keys(Plain(), {}) == []
    assert missing_keys(Alternatives(), {"answer": "1"}) == ["question"]
    assert missing_keys(Alternatives(), {"question": "q"}) == ["reference | answer"]
    assert verifiers.missing_keys is missing_keys
