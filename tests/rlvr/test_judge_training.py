"""The ``judge`` verifier in training, served over real HTTP by tests/helpers.py's `JudgeServer` (a
deterministic rule standing in for a model): a judge that times out, answers 500 or is down leaves its
samples ``infra_error``, retried (``rewards.retries``), then masked out of the baseline and the loss while
the healthy groups train; and a few RL steps with the judge beside ``arith`` log each term's reward."""

from __future__ import annotations

import pytest
import torch
from helpers import JUDGE_TEMPLATE, ROOT, JudgeServer, closed_port_url

from rlvr.algorithms import ADVANTAGES, AlgorithmConfig
from rlvr.config import load_config
from rlvr.draw import rollout_metrics
from rlvr.logging import read_metrics
from rlvr.loop import train
from rlvr.pipeline import ScoredGroup
from rlvr.scoring import Scorer
from rlvr.train.batch import build_batch
from rollouts import Completion, Group
from verifiers import Rubric, get

ROW = {"question": "What is 2 + 3?", "answer": "5"}
TEXTS = ["<think>a</think> <answer>5</answer>", "<think>b</think> <answer>6</answer>",
         "<think>a</think> <answer>5</answer>", "<think>d</think>"]  # the first and third alike


def judge_term(base_url: str, **kw) -> dict:
    return {"verifier": "judge", "weight": 0.5,
            "kwargs": {"base_url": base_url, "model": "rule-judge", "template": str(JUDGE_TEMPLATE), **kw}}


def test_judge_faults_are_retried_then_masked_while_healthy_groups_train():
    healthy, slow, failing = JudgeServer(), JudgeServer("slow", 1.0), JudgeServer("500")
    urls = {"healthy": healthy.base_url, "timeout": slow.base_url, "500": failing.base_url, "down": closed_port_url()}
    groups = []
    try:
        for url in urls.values():
            judge = get("judge", base_url=url, model="rule-judge", template=str(JUDGE_TEMPLATE), timeout_s=0.3,
                        retries=0, concurrency=4)
            scorer = Scorer(Rubric([(get("arith"), 1.0), (judge, 0.5)], retries=1), workers=2)
            group = Group("p", [1, 2], [Completion(t, [3, 4, 5], [-0.5] * 3, "stop") for t in TEXTS])
            try:
                groups.append(ScoredGroup(ROW, group, scorer.submit(group, ROW).result()))
            finally:
                scorer.close()
                judge.close()
        assert len(healthy.requests) == 3  # two completions are the same text: judged once
        # each distinct prompt sent, then once more on the retry (failures are not cached; the alike
        # completion waits for its twin's request, unless that one had already failed)
        assert 3 * 2 <= len(slow.requests) <= 4 * 2 and 3 * 2 <= len(failing.requests) <= 4 * 2
    finally:
        for srv in (healthy, slow, failing):
            srv.close()
    ok = groups[0].scores
    assert [s.reward for s in ok] == [1.5, 0.15, 1.5, 0.0] and all(s.trainable for s in ok)
    for sg, kind in zip(groups[1:], ["timeout", "500", "down"]):
        assert [s.outcome for s in sg.scores] == ["infra_error"] * 4, kind
        assert all(s.metrics["retries"] == 1.0 and s.metrics["judge/error"] == 1.0 for s in sg.scores), kind
        assert not sg.valid.any()  # none of them enters the batch's statistics as a 0
    batch, inp = build_batch(groups, pad_id=0, algo=AlgorithmConfig(), max_tokens=4)
    assert inp.valid.tolist() == [True] * 4 + [False] * 12
    assert batch.response_mask[4:].sum() == 0 and batch.response_mask[:4].sum() > 0
    adv = ADVANTAGES["grpo"](inp, AlgorithmConfig())  # [B, T]
    assert torch.equal(adv[4:], torch.zeros_like(adv[4:])) and adv[:4].abs().sum() > 0
    m = rollout_metrics(groups, terms=["arith", "judge"])
    assert (m["outcome/infra_error"], m["outcome/groups_dropped"], m["outcome/excluded"]) == (12.0, 3.0, 12.0)
    assert m["reward/judge"] == pytest.approx((1.0 + 0.3 + 1.0 + 0.0) / 4)  # the healthy group only
    assert m["reward/arith"] == pytest.approx(0.5)


def test_rl_steps_with_a_judge_served_over_http(micro_model, tmp_path, tiny_cfg):
    server = JudgeServer()
    try:
        run_dir = tmp_path / "run"
        terms = [{"verifier": "arith", "weight": 1.0}, judge_term(server.base_url, concurrency=4)]
        cfg = tiny_cfg("train.steps=2", model=micro_model, run_dir=run_dir, rewards=terms)
        train(cfg)
        assert server.requests and all(r["model"] == "rule-judge" for r in server.requests)
        assert len(server.requests) == len(server.seen)  # no prompt was sent twice
    finally:
        server.close()
    records = read_metrics(run_dir / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert {"reward/arith", "reward/judge", "reward/r1_format"} <= set(r)
        assert r["outcome/infra_error"] == 0 and 0.0 <= r["reward/judge"] <= 1.0
    assert all("reward/judge" in r for r in records if r["kind"] == "eval")


def test_a_judge_term_is_configured_like_any_other():
    from rlvr.components import build_rubric
    from rlvr.config import TrainConfig

    cfg = load_config(TrainConfig, "configs/tiny_r1zero.yaml",
                      ["rewards=" + str([{"verifier": "arith", "weight": 1.0},
                                         judge_term("http://127.0.0.1:9/v1", name="judge_a")]).replace("'", '"')])
    rubric = build_rubric(cfg)
    assert [(v.name, w) for v, w in rubric.parts] == [("arith", 1.0), ("judge_a", 0.5), ("r1_format", 0.0)]
    assert rubric.missing_keys({"question": "q"}) == ["answer", "answer | reference"]


def test_rl_steps_with_a_real_tiny_model_as_the_judge_behind_rlvr_serve(micro_model, tmp_path, tiny_cfg):
    """The judge is the micro base itself, served by `rlvr serve`'s server (rlvr.serve.Server) over HTTP
    with a token: its completions are parsed for a score (its <answer> number / 100). A reply without one
    is an infra_error, masked; the run goes on and logs the term. The template ends inside ``<answer>``,
    so the judge's first tokens are the number: whether the micro base closes its thinking within the
    judge's 16 tokens depends on the CPU that pretrained it."""
    from transformers import AutoTokenizer

    from rlvr.models import context_length
    from rlvr.serve.protocol import Limits
    from rlvr.serve.server import Server
    from rollouts.config import engine_config

    engine = engine_config("hf").build(micro_model)
    limits = Limits(context=context_length(micro_model), max_tokens=16)
    run_dir = tmp_path / "run"
    try:
        with Server(engine, AutoTokenizer.from_pretrained(micro_model), "micro-judge", limits=limits) as server:
            judge = {"verifier": "judge", "weight": 0.5, "kwargs": {
                "base_url": server.base_url, "model": "micro-judge", "api_key": server.api_key,
                "endpoint": "completions", "template": str(ROOT / "tests" / "data" / "judge_micro_model.txt"),
                "score_regex": r"^\s*(\d+)", "max_score": 100.0, "max_tokens": 16, "concurrency": 4}}
            cfg = tiny_cfg("train.steps=2", model=micro_model, run_dir=run_dir,
                           rewards=[{"verifier": "arith", "weight": 1.0}, judge])
            train(cfg)
    finally:
        engine.close()
    steps = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in steps] == [1, 2]
    samples = 4 * 4  # prompts_per_step x n of the small run
    for r in steps:
        assert "reward/judge" in r and 0.0 <= r["reward/judge"] <= 1.0
        assert r["outcome/infra_error"] < samples  # the tiny judge's replies mostly parse
    assert any(r["reward/judge"] > 0 for r in steps)
