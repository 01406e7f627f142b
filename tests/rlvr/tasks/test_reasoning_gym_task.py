"""``task.kind: reasoning_gym``: a weighted mix of reasoning-gym datasets, rows that carry what the
dataset's scorer needs (as JSON), and the `reasoning_gym` verifier as the task's default."""

from __future__ import annotations

import json
from collections import Counter

import pytest

import verifiers
from rlvr.config import ConfigError, PretrainConfig, TrainConfig, load_config
from rlvr.errors import DataError
from rlvr.tasks import TASKS, load_task
from rlvr.tasks.reasoning_gym import ReasoningGymTask, build_corpus, shares

pytest.importorskip("reasoning_gym")

MIX = [{"name": "chain_sum", "weight": 2, "options": {"min_terms": 2, "max_terms": 3, "max_digits": 2}},
       {"name": "basic_arithmetic", "weight": 1, "options": {"min_terms": 2, "max_terms": 3, "max_digits": 2}},
       {"name": "leg_counting", "weight": 1, "options": {"max_animals": 3}}]


def task(**fields) -> ReasoningGymTask:
    return ReasoningGymTask(**{"datasets": MIX, "train_size": 200, "test_size": 40, **fields})


@pytest.fixture(scope="module")
def splits():
    return load_task(task(), [verifiers.get("reasoning_gym")])


def test_registered_with_its_verifier_and_a_corpus():
    assert TASKS["reasoning_gym"].verifier == "reasoning_gym" and TASKS["reasoning_gym"].corpus is build_corpus


def test_the_mix_follows_the_weights(splits):
    assert Counter(r["dataset"] for r in splits.train) == {"chain_sum": 100, "basic_arithmetic": 50, "leg_counting": 50}
    assert Counter(r["dataset"] for r in splits.test) == {"chain_sum": 20, "basic_arithmetic": 10, "leg_counting": 10}
    assert shares([1, 1, 1], 10) == [4, 3, 3] and shares([0.5, 3], 7) == [1, 6]


def test_rows_are_json_and_carry_the_scorers_context(splits):
    for row in splits.train + splits.test:
        assert json.loads(json.dumps(row)) == row
        assert row["question"].endswith("inside <answer> </answer>, in the form the question asks for.")
        assert row["options"] == next(d["options"] for d in MIX if d["name"] == row["dataset"])
        assert row["answer"] == row["entry"]["answer"]


def test_reference_answers_score_one_and_wrong_ones_zero(splits):
    v = verifiers.get("reasoning_gym")
    rows = splits.train[:60]
    right = verifiers.score_batch(v, [f"<answer>{r['answer']}</answer>" for r in rows], rows, workers=2)
    wrong = verifiers.score_batch(v, [f"<answer>{int(r['answer']) + 1}</answer>" for r in rows], rows, workers=2)
    assert all(s.reward == 1.0 and s.correct for s in right)
    assert all(s.reward == 0.0 and not s.correct and s.error is None for s in wrong)


def test_splits_are_disjoint_distinct_and_reproducible(splits):
    train_q = [r["question"] for r in splits.train]
    test_q = [r["question"] for r in splits.test]
    assert len(set(train_q)) == len(train_q) and not set(train_q) & set(test_q)
    again = load_task(task())
    assert [r["question"] for r in again.train] == train_q
    assert [r["question"] for r in load_task(task(seed=1)).train] != train_q


def test_config_errors_name_the_problem():
    with pytest.raises(DataError, match="no reasoning-gym dataset 'chain_summ'"):
        load_task(task(datasets=[{"name": "chain_summ"}]))
    with pytest.raises(DataError, match="rejects options"):
        load_task(task(datasets=[{"name": "chain_sum", "options": {"no_such_option": 1}}]))
    # 1-digit sums of two terms: ~200 questions, 1,000 asked (the loader gives up after 50 draws a row: 53,000)
    with pytest.raises(DataError, match="too few distinct questions"):
        load_task(task(datasets=[{"name": "chain_sum", "options": {"min_terms": 2, "max_terms": 2, "max_digits": 1}}],
                       train_size=1000))
    with pytest.raises(ValueError, match="set by the task"):
        task(datasets=[{"name": "chain_sum", "options": {"seed": 3}}])
    with pytest.raises(ValueError, match="listed twice"):
        task(datasets=[{"name": "chain_sum"}, {"name": "chain_sum"}])


def test_yaml_config_and_the_example_file():
    cfg = load_config(TrainConfig, "configs/reasoning_gym.yaml", [])
    assert cfg.task.kind == "reasoning_gym" and len(cfg.task.datasets) >= 3
    with pytest.raises(ConfigError):
        load_config(TrainConfig, "configs/reasoning_gym.yaml", ["task.datasets=[{name: chain_sum, wieght: 2}]"])


def test_corpus_holds_training_items_only():
    cfg = PretrainConfig(task=task())
    cfg.corpus.num_docs = 200
    docs = build_corpus(cfg)
    held_out = {r["question"] for r in load_task(task()).test}
    assert len(docs) == 200 and all(" </think> <answer>" in d and d.endswith("</answer>") for d in docs)
    assert not any(q in d for q in held_out for d in docs)
