"""The countdown verifier: answer forms models write, the number rules, task formats and
hostile input (one property at a time)."""

import time

import pytest

import verifiers
from verifiers import Score, get
from verifiers.countdown import CountdownVerifier, parse_numbers, parse_target

V = get("countdown")
TASK = {"numbers": [25, 5, 3], "target": 60}


def reward(completion, task=TASK, verifier=V):
    s = verifier.score(completion, task)
    assert isinstance(s, Score) and s.error is None and s.correct is (s.reward == 1.0)
    return s.reward


@pytest.mark.parametrize("completion", [
    "<think>20 times 3</think> <answer>(25 - 5) * 3</answer>",
    "<answer>(25-5)*3</answer>",
    "(25 - 5) * 3",  # bare, no tags
    "<answer>(25 - 5) * 3 = 60</answer>",
    "<answer>60 = (25 - 5) * 3</answer>",
    "<answer>25 - 5 = 20, 20 * 3 = 60</answer>",  # a chain reusing a step's result
    "<answer>25 - 5 = 20; 20 * 3 = 60</answer>",
    "<answer>\n25 - 5 = 20\n20 * 3 = 60\n</answer>",
    "<answer>25 - 5 = 20\n20 * 3 = 60\n60</answer>",
    "<answer>(25 − 5) × 3</answer>",  # Unicode minus and times
    "<answer>(25 – 5) · 3</answer>",
    "<answer>(25 - 5) \\times 3</answer>",
    "<answer>$\\left(25 - 5\\right) \\cdot 3$</answer>",
    "<answer>[25 - 5] * 3</answer>",
    "<answer>\\boxed{(25 - 5) * 3}</answer>",
    "<answer>(25 - 5) x 3</answer>",
    "<answer>Answer: (25 - 5) * 3.</answer>",
    "<answer>3 * (25 - 5)</answer>",
    "<answer>-(5 - 25) * 3</answer>",  # unary minus
    "Let me think.\nThe equation is below.\n(25 - 5) * 3",  # bare: the last line
    "<answer>1</answer> no wait <answer>(25-5)*3</answer>",  # the last answer wins
])
def test_correct_answers(completion):
    assert reward(completion) == 1.0


@pytest.mark.parametrize("completion", [
    "<answer>25 * 5 * 3</answer>",  # wrong value
    "<answer>(25 - 5) * 3 = 61</answer>",  # a false stated result
    "<answer>25 - 5 = 21, 21 * 3 = 63</answer>",  # a false step
    "<answer>25 - 5 = 20, 20 * 3 = 60, 60 * 1 = 60</answer>",  # 1 is not given
    "<answer>(25 - 5) * 3 * 1</answer>",  # a number not in the list
    "<answer>(25 - 5) * 3 + 5 - 5</answer>",  # 5 used twice
    "<answer>25 - 5 = 20, 20 * 3 = 60, 20 * 3 = 60</answer>",  # a result used twice
    "<answer>20 * 3</answer>",  # 20 is not given
    "<answer>2.5 * 24</answer>",  # a float not in the list
    "<answer>(25 - 5) / 0 * 3</answer>",  # division by zero
    "<answer>(25-5)*3",  # unclosed (truncated) answer
    "</answer>(25-5)*3",
    "<answer></answer>",
    "",
    "The answer is 60.",
    "<answer>60</answer>",  # the target itself is not a given number
    "<answer>4 ** 3 - 4</answer>",  # ** is not an operation of the game
    "<answer>(25 - 5) // 1 * 3</answer>",
    "<answer>6e1</answer>",
    "<answer>__import__('os').system('true')</answer>",
    "<answer>(25-5)(3)</answer>",  # implicit multiplication is a call
    "<answer>(25 - 5) * 3, 1</answer>",  # a comma outside a chain
])
def test_wrong_answers(completion):
    assert reward(completion) == 0.0


def test_exact_rational_arithmetic():
    task = {"numbers": [1, 3, 3], "target": 1}
    assert reward("<answer>1 / 3 * 3</answer>", task) == 1.0  # a float sum would say 0.999...
    assert reward("<answer>(3 + 3) / 3 - 1</answer>", {"numbers": [1, 3, 3, 3], "target": 1}) == 1.0
    assert reward("<answer>3 / 3</answer>", {"numbers": [3, 3], "target": "1"}) == 1.0
    assert reward("<answer>1 / 3</answer>", {"numbers": [1, 3], "target": 0.3333333333}) == 0.0


def test_at_most_once_by_default_exactly_once_with_use_all():
    task = {"numbers": [25, 5, 3, 7], "target": 60}
    assert reward("<answer>(25 - 5) * 3</answer>", task) == 1.0  # 7 unused: fine by default
    strict = CountdownVerifier(use_all=True)
    assert reward("<answer>(25 - 5) * 3</answer>", task, strict) == 0.0
    assert reward("<answer>(25 - 5) * 3 + 7 - 7</answer>", {"numbers": [25, 5, 3, 7, 7], "target": 60}, strict) == 1.0
    assert reward("<answer>(25 - 5) * 3</answer>", TASK, strict) == 1.0
    assert reward("<answer>25 - 5 = 20, 20 * 3 = 60</answer>", TASK, strict) == 1.0
    # every intermediate result must be used too: 7 * 1 = 7 is a dead end
    assert reward("<answer>7 * 1 = 7, (25 - 5) * 3 = 60</answer>", {"numbers": [25, 5, 3, 7, 1], "target": 60},
                  strict) == 0.0
    assert get("countdown", use_all=True).use_all is True


def test_duplicate_numbers_are_a_multiset():
    task = {"numbers": [3, 3, 4], "target": 24}
    assert reward("<answer>(3 + 3) * 4</answer>", task) == 1.0
    assert reward("<answer>(3 + 3 + 3) * 4 - 12</answer>", task) == 0.0


def test_metrics_say_what_was_extracted():
    s = V.score("<answer>(25 - 5) * 3</answer>", TASK)
    assert s.metrics == {"extracted": 1.0, "numbers_ok": 1.0}
    s = V.score("<answer>(25 - 5) * 3 * 1</answer>", TASK)
    assert s.metrics == {"extracted": 1.0, "numbers_ok": 0.0} and s.correct is False
    s = V.score("I cannot solve this.", TASK)
    assert s.metrics["extracted"] == 0.0 and s.correct is False and s.error is None


@pytest.mark.parametrize("numbers", [[25, 5, 3], (25, 5, 3), "[25, 5, 3]", "25 5 3", "25,5,3", ["25", "5", "3"],
                                     [25.0, 5, 3]])
def test_task_formats(numbers):
    for target in (60, "60", " 60 ", 60.0):
        assert reward("(25 - 5) * 3", {"numbers": numbers, "target": target}) == 1.0


def test_malformed_tasks_raise():
    with pytest.raises(KeyError, match="target"):
        V.score("1", {"numbers": [1]})
    for bad in ("one two", "[1.5, 2]", [1.5], "", [], None):
        with pytest.raises(ValueError):
            parse_numbers(bad)
    with pytest.raises(ValueError):
        parse_target("sixty")
    assert parse_numbers("[1, 2, 3]") == [1, 2, 3] and parse_target("7") == 7


def test_registered_and_declares_its_keys():
    assert "countdown" in verifiers.available() and isinstance(V, CountdownVerifier)
    assert V.requires == ("numbers", "target")
    assert verifiers.missing_keys(V, {"numbers": [1]}) == ["target"]
    assert verifiers.missing_keys(V, {"numbers": None, "target": 3}) == ["numbers"]
    assert verifiers.missing_keys(V, TASK) == []


HOSTILE = [
    "<answer>" + "(" * 10_000 + "25" + ")" * 10_000 + "</answer>",  # deep nesting
    "<answer>" + "(" * 30 + "25" + ")" * 30 + "</answer>",
    "<answer>" + "1" * 1_000_000 + "</answer>",  # 1 MB answer
    "x" * 1_000_000,  # 1 MB bare completion
    "9" * 999,  # huge number, under the length bound
    "<answer>" * 200_000,  # many openings, no close: linear scan
    "<answer>" + "</answer><answer>" * 100_000 + "</answer>",
    "<answer>" + "+".join(["25"] * 400) + "</answer>",  # many literals
    "<answer>" + "-" * 900 + "25</answer>",  # a long unary chain
    "<answer>" + "\n".join(["25 - 5 = 20"] * 500) + "</answer>",  # many steps
    "<answer>9**9**9**9</answer>",
    "<answer>" + "9" * 40 + " * " + "9" * 40 + "</answer>",  # beyond the value bound
    "<answer>(25-5)*3\x00</answer>",
    "<answer>\\frac{" * 500 + "1" + "}{1}" * 500 + "</answer>",
    "<answer>" + "=" * 5000 + "</answer>",
    "<answer>" + ",".join(["1=1"] * 2000) + "</answer>",
    "<answer>(25 - 5) * 3.0000000000000000001</answer>",  # not 3
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_inputs_return_promptly_with_zero(text):
    for verifier in (V, CountdownVerifier(use_all=True)):
        t0 = time.perf_counter()
        s = verifier.score(text, TASK)
        assert time.perf_counter() - t0 < 1.0
        assert s.reward == 0.0 and s.error is None
