"""The code verifier reads an R1 completion's code from its last <answer> block."""

from __future__ import annotations

import pytest

from verifiers.code.program import extract_code

TASK = {"prompt": 'def f(x):\n    """Return x times 3 plus 2."""\n', "entry_point": "f",
        "test": "def check(candidate):\n    assert candidate(4) == 14\n    assert candidate(-1) == -1\n"}
GOOD = "def f(x):\n    return x * 3 + 2\n"


@pytest.mark.parametrize("completion", [
    f" multiply then add </think> <answer>\n{GOOD}</answer>",
    f" plan </think> <answer> {GOOD}</answer>",
    f" plan </think> <answer>\n```python\n{GOOD}```\n</answer>",
    # the last answer block wins, whatever came before it
    f" plan </think> <answer>\ndef f(x):\n    return 0\n</answer> retry <answer>\n{GOOD}</answer>",
    # a fence in the reasoning is not the answer
    f" draft ```python\ndef f(x):\n    return 0\n``` </think> <answer>\n{GOOD}</answer>",
])
def test_answer_block_is_the_code(completion):
    assert extract_code(completion).strip() == GOOD.strip()


def test_without_answer_block_the_old_rules_hold():
    assert extract_code(f"Here it is:\n```python\n{GOOD}```\nDone.") == GOOD
    assert extract_code(GOOD) == GOOD
    # an unclosed answer (a truncated generation) is not an answer block
    assert extract_code(f"<answer>\n```python\n{GOOD}") == GOOD


def test_sandbox_scores_the_answer_block():
    import verifiers
    from verifiers.code import status_of

    v = verifiers.get("code")
    good = v.score(f" multiply by 3, add 2 </think> <answer>\n{GOOD}</answer>", TASK)
    wrong = v.score(" quick draft </think> <answer>\ndef f(x):\n    return x * 3 + 3\n</answer>", TASK)
    assert good.reward == 1.0 and status_of(good) == "passed"
    assert wrong.reward == 0.0 and status_of(wrong) == "failed"
