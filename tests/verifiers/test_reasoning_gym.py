"""The `reasoning_gym` verifier: reasoning-gym's own scorers behind our protocol, answers read from
the R1 ``<answer>`` tags, entries carried as JSON (`encode_entry`) without changing a verdict."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import verifiers
from verifiers.reasoning_gym import MAX_BARE_CHARS, decode_entry, encode_entry, extract_answer

rg = pytest.importorskip("reasoning_gym")

# (dataset, generator options): arithmetic, counting, a list answer with its own parser, ARC grids
# (tuples in the metadata, which a plain JSON round trip would turn into lists the scorer does not
# match), and a scorer that reads its config (decimal places)
DATASETS = [
    ("basic_arithmetic", None),
    ("chain_sum", None),
    ("leg_counting", None),
    ("number_sorting", None),
    ("arc_agi", None),
    ("decimal_arithmetic", {"min_num_decimal_places": 1, "max_num_decimal_places": 2}),
]
ITEMS = 200


def perturbed(answer: str) -> str:
    """A deliberately wrong answer in the same form: an integer off by one, else the text changed."""
    try:
        return str(int(answer) + 1)
    except ValueError:
        return answer[::-1] if answer[::-1] != answer else answer + "0"


def cases(name: str, options: dict | None):
    """(completion, task, reasoning-gym's own score) for the right and two wrong answers of each item."""
    ds = rg.create_dataset(name, seed=11, size=ITEMS, **(options or {}))
    own = ds.score_answer if options is not None else rg.get_score_answer_fn(name)
    entries = [ds[i] for i in range(ITEMS)]
    out = []
    for i, entry in enumerate(entries):
        other = next(e["answer"] for e in entries[i + 1:] + entries[:i] if e["answer"] != entry["answer"])
        task = {"dataset": name, "entry": json.loads(json.dumps(encode_entry(entry)))}  # as a task row holds it
        if options is not None:
            task["options"] = options
        for answer, kind in ((entry["answer"], "right"), (other, "wrong"), (perturbed(entry["answer"]), "wrong")):
            out.append((f"<think> work </think> <answer>{answer}</answer>", task, own(answer, entry), kind))
    return out


@pytest.fixture(scope="module")
def verifier():
    return verifiers.get("reasoning_gym", workers=2)


@pytest.mark.parametrize("name,options", DATASETS, ids=[d for d, _ in DATASETS])
def test_agrees_with_reasoning_gyms_own_scorer(verifier, name, options):
    rows = cases(name, options)
    scores = verifiers.score_batch(verifier, [c for c, *_ in rows], [t for _, t, *_ in rows], workers=2)
    disagree = [(c[-60:], own, s) for (c, _, own, _), s in zip(rows, scores) if s.error or s.reward != own]
    assert not disagree, f"{len(disagree)}/{len(rows)} disagree: {disagree[:3]}"
    right = [s for (*_, kind), s in zip(rows, scores) if kind == "right"]
    wrong = [(own, s) for (_, _, own, kind), s in zip(rows, scores) if kind == "wrong"]
    assert len(right) == ITEMS and all(s.correct and s.reward == 1.0 for s in right)
    assert len(wrong) == 2 * ITEMS and all(not s.correct for own, s in wrong if own < 1.0)
    assert sum(own < 1.0 for own, _ in wrong) >= 2 * ITEMS - 5  # the wrong answers are (nearly all) wrong


def test_the_public_call_with_an_entry_as_reasoning_gym_yields_it(verifier):
    entry = rg.create_dataset("chain_sum", seed=3, size=1)[0]
    task = {"dataset": "chain_sum", "entry": entry}
    assert verifier.score(f"<think>add</think><answer>{entry['answer']}</answer>", task).correct is True
    assert verifier.score(f"<answer>{int(entry['answer']) + 1}</answer>", task).correct is False


def test_answers_come_from_the_last_closed_answer_block():
    assert extract_answer("<think>maybe <answer>3</answer></think> <answer> 5 </answer>") == "5"
    assert extract_answer("<think>x</think> <answer>\n7\n</answer> trailing") == "7"
    assert extract_answer("<think>x</think> <answer>7") is None  # cut off: no answer
    assert extract_answer("</answer> 7") is None


def test_an_untagged_completion_is_a_bare_answer_only_when_short():
    assert extract_answer("  -4 ") == "-4"  # a bare answer, as the math verifier reads one
    assert extract_answer("<think>4 - 8</think> -4") == "-4"  # what follows the reasoning
    assert extract_answer("<think>4 - 8 is -4 and more") is None  # reasoning, never closed
    assert extract_answer("x " * MAX_BARE_CHARS) is None  # a monologue is no answer
    assert extract_answer("") is None


def test_no_answer_is_an_ordinary_wrong_answer(verifier):
    entry = rg.create_dataset("leg_counting", seed=3, size=1)[0]
    s = verifier.score(f"<think>there are {entry['answer']} legs " + "and so on " * 40, {"dataset": "leg_counting",
                                                                                           "entry": entry})
    assert (s.reward, s.correct, s.error, s.metrics["extracted"]) == (0.0, False, None, 0.0)


def test_partial_credit_is_reasoning_gyms_unless_turned_off():
    entry = rg.create_dataset("spell_backward", seed=3, size=1)[0]
    own = rg.get_score_answer_fn("spell_backward")
    near = entry["answer"] + "x"
    task = {"dataset": "spell_backward", "entry": entry}
    partial = verifiers.get("reasoning_gym").score(f"<answer>{near}</answer>", task)
    assert 0.0 < own(near, entry) < 1.0 and partial.reward == own(near, entry) and partial.correct is False
    assert verifiers.get("reasoning_gym", partial_credit=False).score(f"<answer>{near}</answer>", task).reward == 0.0


def test_a_scorer_that_raises_is_an_error_not_a_zero(verifier):
    s = verifier.score("<answer>1</answer>", {"dataset": "no_such_dataset", "entry": {"answer": "1"}})
    assert s.error is not None and s.error.startswith("crash") and s.correct is None


def test_entries_round_trip_through_json():
    entry = {"answer": "1", "metadata": {"grid": ((1, 2), (3, 4)), "colors": {0: "red", 1: "blue"},
                                         "seen": {3}, "range": (2, 6), "plain": [1, [2]]}}
    encoded = json.loads(json.dumps(encode_entry(entry)))
    assert decode_entry(encoded) == entry
    assert decode_entry(entry) == entry  # an entry never encoded is left as it is
    with pytest.raises(TypeError, match="object"):
        encode_entry({"x": object()})


def test_verifiers_imports_without_reasoning_gym():
    code = ("import sys; sys.modules['reasoning_gym'] = None\n"
            "import verifiers, verifiers.reasoning_gym\n"
            "assert 'reasoning_gym' in verifiers.available()\n")
    subprocess.run([sys.executable, "-c", code], check=True)
