"""The labelled corpus (tests/data/math_corpus.jsonl): every case through the real `math`
verifier (worker processes, extraction, equivalence), in one batch."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from helpers import DATA

import verifiers

CORPUS = DATA / "math_corpus.jsonl"
ROWS = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]

# Every category the issue names, including each named false-positive class.
REQUIRED_CATEGORIES = {
    "extraction", "integer_separators", "decimals", "fractions", "percentages", "scientific_notation",
    "sqrt", "pi", "powers", "mixed_numbers", "negative_signs", "units_and_text", "symbolic", "equations",
    "tuples_ordered", "unordered_sets", "intervals", "matrices", "plain_text",
    "fp_constant_e", "fp_factorial", "fp_tiny_difference", "fp_ldots", "fp_malformed_sqrt",
    "fp_degenerate_equation", "fp_float_rounding",
}
# The recall categories: each holds positives and near-miss negatives (a wrong value in the same form).
RECALL_CATEGORIES = {
    "unmarked_answers", "plain_expressions", "text_wrappers", "relations", "several_answers",
    "matrices_vectors", "decimal_vs_exact", "undefined_values",
    # issue 29: forms other graders accept (an approximation after the answer, an option letter with its
    # text, lists ordered by the question's words); a row's optional "question" reaches the verifier
    "approximations", "multiple_choice", "ordered_lists",
}


def test_corpus_shape():
    assert len(ROWS) >= 520
    counts = Counter(r["category"] for r in ROWS)
    assert REQUIRED_CATEGORIES <= set(counts), REQUIRED_CATEGORIES - set(counts)
    for cat in REQUIRED_CATEGORIES:
        assert counts[cat] >= 5, (cat, counts[cat])
    # Each false-positive class holds cases that must be rejected.
    for cat in (c for c in REQUIRED_CATEGORIES if c.startswith("fp_")):
        assert any(r["expected"] is False for r in ROWS if r["category"] == cat), cat
    for cat in RECALL_CATEGORIES:
        labels = [r["expected"] for r in ROWS if r["category"] == cat]
        assert len(labels) >= 15 and True in labels and False in labels, (cat, len(labels))


@pytest.fixture(scope="module")
def scores():
    v = verifiers.get("math", timeout=10.0)
    completions = [r["prediction"] for r in ROWS]
    tasks = [{"answer": r["reference"], **({"question": r["question"]} if "question" in r else {})} for r in ROWS]
    return verifiers.score_batch(v, completions, tasks, workers=2)


def test_corpus_all_pass(scores):
    wrong = []
    for row, s in zip(ROWS, scores):
        if s.error is not None or bool(s.correct) is not row["expected"]:
            wrong.append(f"[{row['category']}] {row['prediction']!r} vs {row['reference']!r}: "
                         f"expected {row['expected']}, got correct={s.correct} error={s.error}")
    assert not wrong, f"{len(wrong)}/{len(ROWS)} corpus cases fail:\n" + "\n".join(wrong)


def test_reward_matches_correct(scores):
    for s in scores:
        assert s.reward == (1.0 if s.correct else 0.0)
