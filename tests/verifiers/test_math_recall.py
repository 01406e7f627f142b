"""Recall of the `math` verifier: where answers are found, plain expressions read safely,
the decimal rule's threshold, and undefined values (the labelled cases are in the corpus)."""

from __future__ import annotations

import importlib

import pytest

import verifiers

extract_mod = importlib.import_module("verifiers.math.extract")  # the package re-exports a function of that name


@pytest.mark.parametrize(
    "text, answer, source",
    [
        ("Final Answer: The largest $m$ is 21.", "21", "final_answer"),
        ("\\boxed{5}. Final Answer: The final answer is $6$. I hope it is correct.", "$6$", "final_answer"),
        ("Final answer: \\boxed{8}", "8", "boxed"),
        ("\\boxed{2}, \\boxed{5}", "2, 5", "boxed"),
        ("\\boxed{1} \\quad\\text{and}\\quad \\boxed{4}", "1, 4", "boxed"),
        ("\\boxed{1} so far, but then \\boxed{4}", "4", "boxed"),
        ("Answer \\[ \n 9 \n \\]", "9", "last_math"),
        ("Hence the distance is $17$ metres.", "$17$ metres", "last_math"),
        ("The pairs are $(1, 2)$ and $(2, 1)$.", "$(1, 2)$ and $(2, 1)$", "last_math"),
        ("Both $(1, 2)$ and $(2, 1)$ work", "(1, 2), (2, 1)", "last_math"),
        ("So the result is sqrt(2)/2.", "sqrt(2)/2", "last_math"),
        ("<answer>3</answer> then \\boxed{4}", "3", "answer_tag"),
    ],
)
def test_extraction_sources(text, answer, source):
    found = extract_mod.extract(text)
    assert found is not None and (found.answer, found.source) == (answer, source)


@pytest.mark.parametrize("text", ["Answer $ \n 9 \n $", "I guess \\boxed{7", "word9 stuff"])
def test_no_answer_is_guessed(text):
    assert extract_mod.extract(text) is None


def test_plain_parser_whitelist_refuses_code():
    plain = importlib.import_module("verifiers.math.plain")
    for hostile in ("__import__('os').system('true')", "x.__class__", "(lambda: 1)()", "[1][0]", "open", "a_b"):
        assert plain.parse_plain(hostile) is None, hostile
    assert str(plain.parse_plain("2pi")) == "2*pi"


@pytest.fixture(scope="module")
def v():
    return verifiers.get("math", timeout=5.0)


def test_huge_plain_power_is_refused(v):
    s = v.score("\\boxed{2**10**10**10}", {"answer": "1"})
    assert s.error == "too_large"


def test_min_sig_digits_is_configurable():
    strict = verifiers.get("math", min_sig_digits=4)
    lax = verifiers.get("math", min_sig_digits=2)
    assert strict.score("0.0833", {"answer": "\\frac{1}{12}"}).correct is False
    assert verifiers.get("math").score("0.0833", {"answer": "\\frac{1}{12}"}).correct is True
    assert lax.score("0.33", {"answer": "\\frac{1}{3}"}).correct is True
    with pytest.raises(ValueError):
        verifiers.get("math", min_sig_digits=0)


def test_reference_may_be_a_minerva_solution(v):
    ref = "so we get 3 + 4 = 7.\nFinal Answer: The final answer is $7$. I hope it is correct."
    assert v.score("\\boxed{7}", {"answer": ref}).correct is True
    assert v.score("\\boxed{3}", {"answer": ref}).correct is False


@pytest.mark.parametrize("pred, ref", [("\\frac{1}{0}", "\\frac{1}{0}"), ("12:00", "1:00"), ("nan", "nan")])
def test_undefined_values_never_equal(v, pred, ref):
    assert v.score(pred, {"answer": ref}).correct is False
