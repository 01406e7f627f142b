"""The `math` verifier: extraction, normalisation, equivalence rules, and its Score contract."""

from __future__ import annotations

import sys

import pytest

import verifiers
from verifiers.math.extract import extract, find_boxed
from verifiers.math.normalize import normalize

# ---- extraction (pure Python) ------------------------------------------------------------


def test_find_boxed_nested_and_last():
    assert find_boxed("a \\boxed{1} b \\boxed{\\frac{1}{\\sqrt{2}}} c") == "\\frac{1}{\\sqrt{2}}"
    assert find_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert find_boxed("\\boxed{unclosed") is None
    assert find_boxed("no box") is None


@pytest.mark.parametrize(
    "text, answer, source",
    [
        ("<think>x</think><answer> 4 </answer>", "4", "answer_tag"),
        ("<answer>so \\boxed{5}</answer>", "5", "answer_tag"),
        ("work \\boxed{3} more \\boxed{7}", "7", "boxed"),
        ("Thus the answer is $\\frac{1}{2}$. Done.", "$\\frac{1}{2}$", "answer_is"),
        ("Final answer: 12", "12", "final_answer"),
        ("steps\n#### 1,234\n", "1,234", "hash"),
        ("  \\sqrt{2}  ", "\\sqrt{2}", "bare"),
    ],
)
def test_extract_sources(text, answer, source):
    found = extract(text)
    assert found is not None and (found.answer, found.source) == (answer, source)


def test_extract_priority_is_configurable():
    text = "<answer>1</answer> \\boxed{2}"
    assert extract(text).answer == "1"
    assert extract(text, ("boxed", "answer_tag")).answer == "2"
    assert extract("it is 17 apples", ("last_number",)).answer == "17"


def test_long_text_without_marker_has_no_answer():
    assert extract("word " * 1000) is None


# ---- normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("$\\dfrac{1}{2}$", "\\frac{1}{2}"),
        ("**73**", "73"),
        ("1{,}000", "1000"),
        ("\\$18 dollars", "18"),
        ("4\\sqrt(2)", "4\\sqrt{2}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\left( 1, 2 \\right)", "( 1, 2 )"),
        ("1.5 \\times 10^{3}", "1.5e3"),
        ("30^\\circ", "30"),
        ("5 \\text{ or } 7", "5 \\text{ or } 7"),
        ("1, 2, \\dots", "1, 2, \\ldots"),
    ],
)
def test_normalize(raw, norm):
    assert normalize(raw) == norm


# ---- the verifier --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v():
    return verifiers.get("math", timeout=5.0)


def test_registry_builds_math(v):
    assert v.name == "math"
    assert isinstance(v, verifiers.Verifier)


def test_parent_process_never_imports_sympy(v):
    v.score("\\boxed{1}", {"answer": "1"})
    assert "latex2sympy2_extended" not in sys.modules


def test_bare_answer_is_accepted(v):
    s = v.score("\\frac{2}{4}", {"answer": "0.5"})
    assert s == verifiers.Score(1.0, True, {"extracted": 1.0}, None)


def test_wrong_answer_is_a_plain_zero(v):
    s = v.score("The answer is \\boxed{3}.", {"answer": "4"})
    assert (s.reward, s.correct, s.error, s.metrics["extracted"]) == (0.0, False, None, 1.0)


def test_no_answer_is_counted_as_extraction_failure(v):
    s = v.score("I could not solve it. " * 100, {"answer": "4"})
    assert (s.correct, s.error, s.metrics["extracted"]) == (False, None, 0.0)


def test_reference_may_be_a_full_solution(v):
    assert v.score("7", {"answer": "so we get \\boxed{7}"}).correct
    assert v.score("72", {"answer": "48 + 24 = 72\n#### 72"}).correct


def test_missing_answer_field_is_loud(v):
    with pytest.raises(KeyError):
        v.score("1", {"reference": "1"})
    s = verifiers.score_batch(v, ["1"], [{"reference": "1"}])[0]
    assert s.error is not None and s.error.startswith("crash in math")


def test_one_bad_row_does_not_crash_the_batch(v):
    preds = ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}", "\\boxed{4}"]
    tasks = [{"answer": "1"}, {"reference": "2"}, {"answer": "3"}, {"answer": "5"}]
    scores = verifiers.score_batch(v, preds, tasks, workers=2)
    assert [s.correct for s in scores] == [True, None, True, False]
    assert [s.error is None for s in scores] == [True, False, True, True]
    assert scores[1].error.startswith("crash in math: KeyError") and "answer" in scores[1].error
    one = verifiers.score_batch(v, preds[:2], tasks[:2], workers=1)
    assert one[0].correct is True and one[1].error.startswith("crash in math")


def test_requires_names_the_answer_key():
    from verifiers.math import MathVerifier

    assert MathVerifier.requires == ("answer",)
    assert verifiers.get("math").requires == ("answer",)
    assert verifiers.get("math", answer_key="solution").requires == ("solution",)


def test_input_size_bound_rejects_without_parsing(v):
    from verifiers.math import MAX_INPUT_CHARS

    s = v.score("1" * (MAX_INPUT_CHARS + 1), {"answer": "1"})
    assert s.error == "input_too_large" and s.reward == 0.0


def test_bad_priority_is_rejected():
    with pytest.raises(ValueError):
        verifiers.get("math", priority=("boxed", "nonsense"))


def test_score_batch_keeps_order_and_uses_workers(v):
    preds = [f"\\boxed{{{i}}}" for i in range(40)]
    tasks = [{"answer": str(i if i % 3 else i + 1)} for i in range(40)]
    scores = verifiers.score_batch(v, preds, tasks, workers=2)
    assert [s.correct for s in scores] == [bool(i % 3) for i in range(40)]


def test_rubric_with_math_and_format_weight_zero(v):
    r = verifiers.Rubric([(v, 1.0), (verifiers.get("r1_format"), 0.0)])
    scores = verifiers.score_batch(r, ["<think>t</think><answer>6</answer>", "6"], [{"answer": "6"}] * 2, workers=2)
    assert [s.reward for s in scores] == [1.0, 1.0]
    assert [s.metrics["r1_format"] for s in scores] == [1.0, 0.0]


def test_timeout_error_is_counted_in_summary():
    slow = verifiers.get("math", timeout=0.5)
    scores = verifiers.score_batch(slow, ["\\boxed{\\sqrt{10000!+1}}", "\\boxed{2}"], [{"answer": "1"}, {"answer": "2"}], workers=2)
    summary = verifiers.batch.summarize(scores)
    assert scores[0].error == "timeout" and scores[1].correct is True
    assert summary["timeouts"] == 1.0 and summary["errors"] == 1.0 and summary["accuracy"] == 0.5


@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        ("x = 3", "3", True),
        ("(1,2)", "(2,1)", False),
        ("\\{1,2\\}", "\\{2,1\\}", True),
        ("[1,2)", "[1,2]", False),
        ("1-1/e", "1+1/e", False),
        ("\\frac{1}{2004!}", "\\frac{1}{2006!}", False),
        ("4\\sqrt(2)", "4", False),
        ("**73**", "73", True),
        ("2=2", "3=3", False),
        ("\\frac{1}{3}", "0.33", True),
        ("0.33", "\\frac{1}{3}", False),
        ("1, 2, \\ldots, 10", "1, 2, 10", False),
        ("0.\\overline{3}", "\\frac{1}{3}", True),
    ],
)
def test_equivalence_headline_cases(v, pred, ref, expected):
    s = v.score(pred, {"answer": ref})
    assert s.error is None and s.correct is expected
