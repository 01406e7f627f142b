"""The task's answer checker and the strict R1 format checker, under hostile input."""

import time

import pytest

import verifiers
from verifiers import Rubric, Score, get

ARITH = get("arith")
FMT = get("r1_format")
TASK = {"answer": "17"}


@pytest.mark.parametrize("completion,expected", [
    (" 8+9=17 </think> <answer>17</answer>", 1.0),
    ("<think>x</think><answer> 17 </answer>", 1.0),
    (" </think> <answer>17.0</answer>", 0.0),  # integers only
    (" </think> <answer>16</answer>", 0.0),
    (" </think> <answer>-17</answer>", 0.0),
    (" </think> <answer>17</answer><answer>17</answer>", 0.0),  # two answers
    ("17", 1.0),  # bare answer, no tags
    (" </think> 17", 0.0),  # tags missing but text around it
    (" </think> <answer>10+7</answer>", 0.0),  # expressions not accepted by default
])
def test_arith_cases(completion, expected):
    assert ARITH.score(completion, TASK).reward == expected


def test_arith_expressions_when_allowed():
    v = get("arith", allow_expressions=True)
    assert v.score("<answer>(10+7)*1</answer>", TASK).reward == 1.0
    assert v.score("<answer>34/2</answer>", TASK).reward == 1.0
    assert v.score("<answer>35/2</answer>", TASK).reward == 0.0


HOSTILE = [
    "9**9**9", "<answer>9**9**9</answer>", "<answer>" + "(" * 10000 + "1" + ")" * 10000 + "</answer>",
    "<answer>" + "1" * 1_000_000 + "</answer>", "x" * 1_000_000, "", "<answer></answer>", "<answer>١٧</answer>",
    "<answer>１７</answer>", "<answer>17\u200b</answer>", "<answer>__import__('os').system('true')</answer>",
    "<answer>" + "+".join(["99999999"] * 5000) + "</answer>", "\x00\x00<answer>\x00</answer>",
    "<answer>" + "-" * 100_000 + "17</answer>",
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_inputs_return_promptly_with_zero(text):
    for verifier in (ARITH, get("arith", allow_expressions=True)):
        t0 = time.perf_counter()
        s = verifier.score(text, TASK)
        assert time.perf_counter() - t0 < 1.0
        assert s.reward == 0.0


@pytest.mark.parametrize("completion,ok", [
    (" 8+9=17 </think> <answer>17</answer>", True),
    ("<think> 8+9=17 </think>\n<answer>17</answer>\n", True),
    (" </think> <answer>17</answer>", True),
    (" quick </think> 17", False),
    (" </think> <answer> </answer>", False),  # empty answer
    (" </think> <answer>17</answer> trailing", False),
    (" </think> <answer>1</answer><answer>2</answer>", False),
    ("<think> a <think> b </think> <answer>17</answer>", False),  # nested <think>
    (" a <think> b </think> <answer>17</answer>", False),  # second <think> after the prefilled one
    ("<answer>17</answer> </think>", False),
    (" </think> <answer><answer>17</answer>", False),
    ("", False),
    ("x" * 1_000_000, False),
])
def test_r1_format_strict(completion, ok):
    assert FMT.score(completion, TASK).reward == (1.0 if ok else 0.0)


def test_r1_format_without_prefill():
    v = get("r1_format", prefilled_think=False)
    assert v.score("<think>a</think><answer>1</answer>", {}).reward == 1.0
    assert v.score("a</think><answer>1</answer>", {}).reward == 0.0


class Crashy:
    name = "crashy"

    def score(self, completion, task):
        raise RuntimeError("boom")


def test_rubric_weights_metrics_and_errors():
    r = Rubric([(ARITH, 1.0), (FMT, 0.1)])
    s = r.score(" 8+9=17 </think> <answer>17</answer>", TASK)
    assert s.reward == pytest.approx(1.1) and s.correct is True and s.metrics["r1_format"] == 1.0
    s = Rubric([(ARITH, 1.0), (FMT, 0.0)]).score(" </think> <answer>17</answer>", TASK)
    assert s.reward == 1.0 and s.metrics["r1_format"] == 1.0  # weight 0: logged, not rewarded
    s = Rubric([(ARITH, 1.0), (Crashy(), 1.0)]).score("<answer>17</answer>", TASK)
    assert s.error is not None and "boom" in s.error and s.reward == 0.0
    errs = verifiers.score_batch(Crashy(), ["a", "b"], [TASK, TASK], workers=2)
    assert all(isinstance(e, Score) and e.error for e in errs)


def test_registry():
    assert {"arith", "r1_format"} <= set(verifiers.available())
    with pytest.raises(KeyError, match="unknown verifier 'nope'"):
        get("nope")


def test_missing_reference_is_a_clear_error():
    with pytest.raises(KeyError, match="answer"):
        ARITH.score("<answer>1</answer>", {"question": "x"})
