"""Multi-turn episodes end to end, on the micro base and real engines: the learner trains on exactly the
ids the engine sampled and the environment appended (never the text re-tokenised, which this tokenizer
would change), its log-probs of the model's tokens match the engine's, and a run trains through them."""

from __future__ import annotations

import pytest
import torch
from helpers import train_and_read

GUESS = ["task.kind=guess_number", "env.kind=guess_number", "env.max_turns=3", "rewards=null"]


def draw_episodes(micro_model: str, cfg):
    from transformers import AutoTokenizer

    from rlvr.components import build_rubric, load_rows
    from rlvr.pipeline import ScoredGroup
    from rlvr.rollout import LocalRollouts
    from rollouts import SamplingConfig

    tokenizer = AutoTokenizer.from_pretrained(micro_model)
    rubric = build_rubric(cfg)
    rows = load_rows(cfg, tokenizer, rubric, micro_model, verbose=False).train[:4]
    rollouts = LocalRollouts(cfg, micro_model, rubric, threads=1)
    try:
        groups, scores, _ = rollouts.generate_and_score(rows, SamplingConfig(n=3, max_tokens=16, seed=5))
    finally:
        rollouts.close()
    return tokenizer, [ScoredGroup(r, g, s) for r, g, s in zip(rows, groups, scores)]


@pytest.mark.parametrize("engine", ["static", "hf", pytest.param("vllm", marks=pytest.mark.slow)])
def test_learner_trains_on_the_sampled_and_appended_ids_with_the_engines_logprobs(micro_model, tiny_cfg, engine):
    if engine == "vllm":
        pytest.importorskip("vllm")
    from rlvr.envs import hf_encoder
    from rlvr.envs.trajectory import EnvSegment, ModelSegment
    from rlvr.train.batch import build_batch
    from rlvr.train.side import build_policy_side

    cfg = tiny_cfg(*GUESS, f"engine.kind={engine}", model=micro_model)
    tokenizer, scored = draw_episodes(micro_model, cfg)
    episodes = [t for sg in scored for t in sg.group.episodes]
    # more than one turn: the micro base does not guess a secret from 1..16 at once in all 12 episodes (on any
    # CPU that pretrained it; which episodes run to max_turns depends on its weights)
    assert max(t.turns for t in episodes) > 1 and any(isinstance(s, EnvSegment) for t in episodes for s in t.segments)
    encode = hf_encoder(tokenizer)
    # the premise: this tokenizer's merges cross the boundary of two texts (so text history, re-tokenised,
    # can differ from the ids sampled); the learner must see the ids themselves
    assert encode("highe") + encode("r") != encode("higher")
    for sg in scored:
        for t, comp in zip(sg.group.episodes, sg.group.completions):
            assert t.prompt_ids == tuple(sg.row["prompt_ids"])
            for seg in t.segments:  # observations are their own text encoded once, appended as ids
                if isinstance(seg, EnvSegment):
                    assert list(seg.ids) == encode(seg.text)
                else:
                    assert isinstance(seg, ModelSegment) and len(seg.ids) == len(seg.logprobs) and seg.version == 0
            whole = t.token_ids()
            assert whole == list(t.prompt_ids) + [i for s in t.segments for i in s.ids]
            assert comp.token_ids == whole[len(t.prompt_ids):] and comp.text == t.text()

    batch, _ = build_batch(scored, tokenizer.pad_token_id, cfg.algorithm, cfg.sampling.max_tokens)
    for row, t in enumerate(episodes):  # the learner's ids: the episode's, token for token
        n = len(t)
        assert batch.input_ids[row, :n].tolist() == t.token_ids() and batch.attention_mask[row].sum() == n
        assert batch.response_mask[row, : n - 1].tolist() == [float(m) for m in t.loss_mask()[1:]]
    side = build_policy_side(cfg, micro_model, "cpu")
    with torch.no_grad():
        learner = side.learner.policy_logp(batch)
    mask = batch.response_mask.bool()
    gap = (learner - batch.engine_logp)[mask].abs().max().item()
    assert mask.sum() > 0 and gap < 1e-3, f"{engine}: learner vs engine log-prob gap {gap}"


def test_a_guess_number_run_trains_on_episodes(micro_model, tiny_cfg, tmp_path):
    """Two steps of a multi-turn run on the static engine: the parity gate passes on multi-turn batches,
    and the metrics count turns and finish reasons; evaluation counts the greedy episode's turns."""

    cfg = tiny_cfg(*GUESS, "engine.kind=static", model=micro_model, run_dir=tmp_path / "run", **{"train.steps": 2})
    steps, evals = train_and_read(cfg)
    for r in steps:
        assert 1.0 <= r["turns_mean"] <= 3.0 and r["turns_max"] <= 3.0 and r["env_errors"] == 0.0
        assert sum(r[f"finish/{k}"] for k in ("stop", "length", "max_turns", "max_tokens", "context", "env_error")) \
            == pytest.approx(1.0)
        assert r["logp_diff_max"] < 1e-3
    assert any(r["turns_mean"] > 1.0 for r in steps)
    assert evals and all(1.0 <= r["turns"] <= 3.0 for r in evals)
