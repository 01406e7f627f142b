"""The ``reward_model`` verifier (rlvr.rewards) with a real tiny reward model: the micro base's weights
under a sequence-classification head (random, seeded), saved with its tokenizer. Its rewards equal the
model run directly; it normalises per batch; a model that cannot load, or gives NaN, is a failure that
never trains as 0; and a few RL steps with it beside ``arith`` log each term's reward."""

from __future__ import annotations

import shutil

import pytest
import torch

import verifiers
from rlvr.logging import read_metrics
from rlvr.loop import train
from rlvr.rewards import RewardModelVerifier
from verifiers import Rubric, score_batch

ROWS = [{"question": "What is 2 + 3?", "prompt_text": "Q: What is 2 + 3?\nA: <think>", "answer": "5"},
        {"question": "What is 7 - 4?", "prompt_text": "Q: What is 7 - 4?\nA: <think>", "answer": "3"}]
COMPLETIONS = ["2+3 is 5</think> <answer>5</answer>", "no idea</think> <answer>9</answer>",
               "seven minus four</think> <answer>3</answer>", "</think>"]


@pytest.fixture(scope="module")
def reward_model_dir(micro_model, tmp_path_factory) -> str:
    """The micro base with a one-label head (seeded, scaled so rewards differ visibly), and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("reward-model")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(micro_model, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0)
        # scaled so the test texts' largest |reward| is 2, whatever CPU pretrained the base: unscaled, the
        # rewards sat at 7-12 on an AVX-512 machine, where the sigmoid of ``output="prob"`` is flat: the
        # probabilities spread by ~5e-4, and the normalisation's ``+ 1e-6`` moved their std 0.2% off 1
        texts = [t["prompt_text"] + c for c, t in zip(COMPLETIONS, [ROWS[0], ROWS[0], ROWS[1], ROWS[1]])]
        top = max(abs(float(model(**tokenizer(t, return_tensors="pt")).logits[0, 0])) for t in texts)
        model.score.weight.mul_(2.0 / top)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def direct_rewards(model_dir: str, texts: list[str]) -> list[float]:
    """The reward model run here, one text at a time (no padding), as a user would."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return [float(model(**tokenizer(t, return_tensors="pt")).logits[0, 0]) for t in texts]


def test_rewards_are_the_models_batched_and_normalised(reward_model_dir):
    rm = verifiers.get("reward_model", model=reward_model_dir, batch_size=3, input="text")
    tasks = [ROWS[0], ROWS[0], ROWS[1], ROWS[1]]
    try:
        scores = rm.score_many(COMPLETIONS, tasks, workers=2)  # two forward passes: 3 texts, then 1
        expected = direct_rewards(reward_model_dir, [t["prompt_text"] + c for c, t in zip(COMPLETIONS, tasks)])
        assert [s.outcome in ("correct", "wrong") and s.error is None for s in scores] == [True] * 4
        assert [s.reward for s in scores] == pytest.approx(expected, abs=1e-4)
        assert len({round(r, 4) for r in expected}) == 4  # a real signal: every completion scored differently
        assert isinstance(rm, RewardModelVerifier) and verifiers.missing_keys(rm, {"answer": "5"}) == [
            "prompt_text | question"]
    finally:
        rm.close()
    norm = verifiers.get("reward_model", model=reward_model_dir, normalize="batch", output="prob", input="text")
    try:
        scores = norm.score_many(COMPLETIONS, tasks, workers=1)
        probs = [float(torch.tensor(r).sigmoid()) for r in expected]
        assert [s.metrics["raw"] for s in scores] == pytest.approx(probs, abs=1e-4)
        rewards = torch.tensor([s.reward for s in scores])
        assert float(rewards.mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(rewards.std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)
    finally:
        norm.close()


def test_a_broken_reward_model_is_a_failure_never_a_zero(reward_model_dir, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(reward_model_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    nan = tmp_path / "nan"
    shutil.copytree(reward_model_dir, nan)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir)
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    model.save_pretrained(nan)
    for path, outcome, says in ((corrupt, "infra_error", "reward_model: crash"),
                                (nan, "verifier_error", "reward_model: reward is nan")):
        rubric = Rubric([(verifiers.get("arith"), 1.0), (verifiers.get("reward_model", model=str(path)), 0.5)])
        try:
            scores = score_batch(rubric, COMPLETIONS[:2], [ROWS[0]] * 2, retries=1)
        finally:
            rubric.parts[1][0].close()
        assert [s.outcome for s in scores] == [outcome] * 2, scores[0]
        assert all(says in s.error and s.metrics["reward_model/error"] == 1.0 and not s.trainable for s in scores)
    with pytest.raises(ValueError, match="is not a directory"):
        verifiers.get("reward_model", model=str(tmp_path / "missing"))


def test_rl_steps_with_a_reward_model_log_each_terms_reward(micro_model, reward_model_dir, tmp_path, tiny_cfg):
    run_dir = tmp_path / "run"
    terms = [{"verifier": "arith", "weight": 1.0},
             {"verifier": "reward_model", "weight": 0.5,
              "kwargs": {"model": reward_model_dir, "normalize": "batch", "batch_size": 8}}]
    cfg = tiny_cfg("train.steps=2", model=micro_model, run_dir=run_dir, rewards=terms)
    train(cfg)
    records = read_metrics(run_dir / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert {"reward/arith", "reward/reward_model", "reward/r1_format"} <= set(r)
        assert r["outcome/infra_error"] == 0 and r["outcome/verifier_error"] == 0
        assert abs(r["reward/reward_model"]) < 1e-4  # standardised within each group
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals and all("reward/reward_model" in r for r in evals)
