"""The typed outcome of a score (issue 29 item 1): derived for verifiers written before it, said
precisely by the built-in ones, kept through batches, rubrics and retries.

The code sandbox's outcomes and its fault injection (workers killed mid-batch) are in
test_code_outcomes.py; what the trainer does with the outcomes is in tests/rlvr/test_outcomes_in_training.py."""

from __future__ import annotations

import dataclasses

import pytest

import verifiers
from verifiers import FAILURE_OUTCOMES, OUTCOMES, POLICY_OUTCOMES, InfraError, Rubric, Score, score_batch
from verifiers.batch import crash_score, summarize

R1 = "<think>thinking</think> <answer>{}</answer>"


def test_outcome_is_derived_for_scores_made_the_old_way():
    """A plugin that never heard of outcomes keeps working: positional and keyword Scores get one."""
    assert Score(1.0, True).outcome == "correct" and Score(0.0, False).outcome == "wrong"
    assert Score(0.0, None, {}, "timeout").outcome == "verifier_error"
    assert Score(0.0, True, {}, "crash in x").outcome == "verifier_error"  # an error wins over correct
    # a check that does not judge correctness (a format check, a reward model): by its reward
    assert Score(0.5).outcome == "correct" and Score(0.0).outcome == "wrong" and Score(-1.0).outcome == "wrong"
    assert Score(reward=0.0, correct=False, metrics={"extracted": 0.0}, error=None).outcome == "wrong"


def test_outcome_given_is_kept_and_checked():
    assert Score(0.0, False, outcome="unparsed").outcome == "unparsed"
    assert Score(0.0, None, {}, "sandbox died", "infra_error").outcome == "infra_error"
    with pytest.raises(ValueError, match="Score.outcome must be one of"):
        Score(0.0, False, outcome="zero")
    assert set(OUTCOMES) == set(POLICY_OUTCOMES) | set(FAILURE_OUTCOMES) and len(OUTCOMES) == 7
    assert all(Score(0.0, outcome=o).trainable for o in POLICY_OUTCOMES)
    assert not any(Score(0.0, outcome=o).trainable for o in FAILURE_OUTCOMES)


def test_outcome_survives_a_round_trip_through_a_dict():
    """Checkpoints store scores as dicts (rlvr.pipeline.ScoredGroup.to_json); older ones have no outcome."""
    s = Score(0.0, False, {"extracted": 0.0}, None, "unparsed")
    assert Score(**dataclasses.asdict(s)) == s
    old = {"reward": 0.0, "correct": None, "metrics": {}, "error": "timeout"}
    assert Score(**old).outcome == "verifier_error"


def test_public_math_and_countdown_calls_expose_the_outcome():
    math = verifiers.get("math")
    assert math.score("so the answer is \\boxed{\\frac12}", {"answer": "0.5"}).outcome == "correct"
    assert math.score("\\boxed{3}", {"answer": "0.5"}).outcome == "wrong"
    unread = math.score("so the answer is \\boxed{}", {"answer": "0.5"})  # no answer found in it
    assert unread.outcome == "unparsed" and unread.reward == 0.0 and unread.error is None
    bomb = math.score("\\boxed{9^{9^{9^{9}}}}", {"answer": "1"})  # the policy's answer, refused unread
    assert bomb.error is not None and bomb.outcome == "unparsed" and bomb.trainable
    bad_ref = math.score("\\boxed{1}", {"answer": "9^{9^{9^{9}}}"})  # the dataset's fault: not trained on
    assert bad_ref.error.startswith("reference") and bad_ref.outcome == "verifier_error"

    countdown = verifiers.get("countdown")
    task = {"numbers": [1, 2, 3], "target": 6}
    assert countdown.score(R1.format("1 + 2 + 3"), task).outcome == "correct"
    assert countdown.score(R1.format("1 + 2 * 3"), task).outcome == "wrong"
    assert countdown.score("no equation here", task).outcome == "unparsed"

    arith = verifiers.get("arith")
    assert arith.score(R1.format("7"), {"answer": "7"}).outcome == "correct"
    assert arith.score(R1.format("seven"), {"answer": "7"}).outcome == "unparsed"
    assert verifiers.get("r1_format").score(R1.format("7"), {}).outcome == "correct"


class Flaky:
    """Raises on the rows whose completion starts with "!" for its first ``fails`` calls on each."""

    name = "flaky"

    def __init__(self, fails: int, exc: type[Exception] = RuntimeError):
        self.fails, self.exc, self.calls = fails, exc, {}

    def score(self, completion, task):
        self.calls[completion] = self.calls.get(completion, 0) + 1
        if completion.startswith("!") and self.calls[completion] <= self.fails:
            raise self.exc(f"flaky on {completion!r}")
        ok = completion.strip("!") == task["answer"]
        return Score(float(ok), ok)


def test_a_verifier_that_raises_on_some_rows_is_labelled_and_retried():
    texts, tasks = ["7", "!7", "3", "!3"], [{"answer": "7"}] * 4
    once = score_batch(Flaky(fails=1), texts, tasks)  # no retries: the failures are labelled, not zeros
    assert [s.outcome for s in once] == ["correct", "verifier_error", "wrong", "verifier_error"]
    assert all("crash in flaky: RuntimeError" in once[i].error for i in (1, 3))

    v = Flaky(fails=1)
    again = score_batch(v, texts, tasks, retries=2)  # the second try succeeds
    assert [s.outcome for s in again] == ["correct", "correct", "wrong", "wrong"]
    assert [s.metrics.get("retries") for s in again] == [None, 1.0, None, 1.0]
    assert v.calls == {"7": 1, "!7": 2, "3": 1, "!3": 2}  # only the failed rows were scored again

    v = Flaky(fails=10)
    stuck = score_batch(v, texts, tasks, workers=2, retries=2)  # the budget runs out: still labelled
    assert [s.outcome for s in stuck] == ["correct", "verifier_error", "wrong", "verifier_error"]
    assert stuck[1].metrics["retries"] == 2.0 and v.calls["!7"] == 3


def test_an_infra_error_raised_by_a_verifier_is_infra_error():
    scores = score_batch(Flaky(fails=1, exc=InfraError), ["!7", "7"], [{"answer": "7"}] * 2)
    assert [s.outcome for s in scores] == ["infra_error", "correct"]
    assert crash_score(Flaky(0), KeyError("answer")).outcome == "verifier_error"


def test_rubric_outcome_failures_first_then_the_judging_part():
    fmt, arith = verifiers.get("r1_format"), verifiers.get("arith")
    rubric = Rubric([(arith, 1.0), (fmt, 0.1)])
    assert rubric.score(R1.format("7"), {"answer": "7"}).outcome == "correct"
    assert rubric.score(R1.format("8"), {"answer": "7"}).outcome == "wrong"
    assert rubric.score("7", {"answer": "7"}).outcome == "correct"  # a bare answer: right, not in R1 format
    assert rubric.score(R1.format("x"), {"answer": "7"}).outcome == "unparsed"  # format fine, answer unread
    judged_second = Rubric([(fmt, 0.0), (arith, 1.0)])  # the format part does not judge the answer
    assert judged_second.score(R1.format("x"), {"answer": "7"}).outcome == "unparsed"

    infra = Score(0.0, None, {}, "sandbox died", "infra_error")
    combined = rubric.combine([Score(0.0, None, {}, "crash in arith: boom"), infra])
    assert combined.outcome == "infra_error" and combined.reward == 0.0 and not combined.trainable
    silent = rubric.combine([Score(1.0, True), Score(0.0, outcome="infra_error")])  # a failure without a message
    assert silent.outcome == "infra_error" and silent.error == "r1_format: infra_error" and silent.reward == 0.0
    # the rubric's own batch path retries its parts
    flaky = Rubric([(Flaky(fails=1), 1.0)], retries=1)
    out = flaky.score_many(["!7", "7"], [{"answer": "7"}] * 2, workers=1)
    assert [s.outcome for s in out] == ["correct", "correct"] and out[0].metrics["retries"] == 1.0
    with pytest.raises(ValueError, match="retries"):
        Rubric([(fmt, 1.0)], retries=-1)


def test_summarize_counts_every_outcome():
    scores = [Score(1.0, True), Score(0.0, False, outcome="unparsed"), Score(0.0, None, {}, "timeout")]
    out = summarize(scores)
    assert {k: v for k, v in out.items() if k.startswith("outcome/")} == {
        "outcome/correct": 1.0, "outcome/wrong": 0.0, "outcome/unparsed": 1.0, "outcome/policy_timeout": 0.0,
        "outcome/truncated": 0.0, "outcome/verifier_error": 1.0, "outcome/infra_error": 0.0}
    assert out["errors"] == 1.0  # the error counts are as before
