"""The ``judge`` verifier against a real OpenAI-compatible HTTP server on 127.0.0.1 (tests/helpers.py's
`JudgeServer`, a deterministic rule in place of a model): scores parsed from real replies, the cache, the
concurrency, and every way a judge fails (times out, answers 500, is down, answers without a score):
each row is ``infra_error``, retried, never a 0 that looks like a wrong answer."""

from __future__ import annotations

import pytest
from helpers import JUDGE_TEMPLATE, JudgeServer, closed_port_url

import verifiers
from verifiers import score_batch

ROW = {"question": "What is 2 + 3?", "answer": "5"}
RIGHT, OTHER, NONE = "<think>2+3</think> <answer>5</answer>", "<answer>6</answer>", "no idea"


@pytest.fixture
def server(request):
    mode, delay = getattr(request, "param", ("ok", 0.0))
    srv = JudgeServer(mode, delay)
    yield srv
    srv.close()


def judge(base_url: str, **kw):
    kw = {"model": "rule-judge", "template": str(JUDGE_TEMPLATE), "retries": 0, "backoff_s": 0.0, **kw}
    return verifiers.get("judge", base_url=base_url, **kw)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_scores_come_from_the_judges_reply(server, endpoint, monkeypatch):
    monkeypatch.setenv("RLVR_TEST_JUDGE_KEY", "sk-test")
    j = judge(server.base_url, endpoint=endpoint, api_key_env="RLVR_TEST_JUDGE_KEY")
    scores = [j.score(c, ROW) for c in (RIGHT, OTHER, NONE)]
    assert [s.reward for s in scores] == [1.0, 0.3, 0.0]
    assert [s.outcome for s in scores] == ["correct", "correct", "wrong"]  # no correct/incorrect verdict: reward > 0
    assert [s.metrics["raw_score"] for s in scores] == [10.0, 3.0, 0.0]
    sent = server.requests[0]
    assert sent["_path"] == ("/v1/chat/completions" if endpoint == "chat" else "/v1/completions")
    assert sent["_auth"] == "Bearer sk-test" and sent["model"] == "rule-judge" and sent["temperature"] == 0.0
    prompt = sent["messages"][-1]["content"] if endpoint == "chat" else sent["prompt"]
    assert "Question: What is 2 + 3?" in prompt and "Reference answer: 5" in prompt and RIGHT in prompt


def test_the_same_prompt_and_completion_is_sent_once(server):
    j = judge(server.base_url, concurrency=8)
    completions = [RIGHT, OTHER, NONE] * 4  # each three times more, all at once on 8 threads
    first = score_batch(j, completions, [ROW] * 12, workers=8)
    assert len(server.requests) == 3 and set(server.seen.values()) == {1}
    assert [s.reward for s in first] == [1.0, 0.3, 0.0] * 4
    again = score_batch(j, completions, [ROW] * 12)
    assert len(server.requests) == 3 and all(s.metrics["cached"] == 1.0 for s in again)
    other_question = dict(ROW, question="What is 1 + 4?")  # another prompt: a new request
    assert j.score(RIGHT, other_question).reward == 1.0 and len(server.requests) == 4
    uncached = judge(server.base_url, cache=False)
    score_batch(uncached, [RIGHT] * 3, [ROW] * 3, workers=3)
    assert len(server.requests) == 7


@pytest.mark.parametrize("server", [("ok", 0.2)], indirect=True)
def test_calls_run_concurrently_up_to_the_limit(server):
    j = judge(server.base_url, concurrency=4)
    scores = j.score_many([f"<answer>{i}</answer>" for i in range(12)], [ROW] * 12, workers=1)
    assert all(s.outcome in ("correct", "wrong") for s in scores)
    assert 2 <= server.max_in_flight <= 4


FAULTS = {  # mode -> (server mode and delay, what the error says)
    "timeout": (("slow", 1.5), "within 0.3s"),
    "500": (("500", 0.0), "HTTP 500"),
    "unparsable": (("garbage", 0.0), "no score in the judge's reply"),
}


@pytest.mark.parametrize("fault", [pytest.param("timeout", marks=pytest.mark.e2e),  # waits out 6 timeouts a row
                                   *[f for f in FAULTS if f != "timeout"], "down"])
def test_a_failing_judge_is_infra_error_retried_never_a_zero(fault):
    srv = JudgeServer(*FAULTS[fault][0]) if fault != "down" else None
    try:
        url = srv.base_url if srv else closed_port_url()
        j = judge(url, retries=1, timeout_s=0.3, concurrency=4)
        scores = score_batch(j, [RIGHT, OTHER, NONE], [ROW] * 3, workers=3, retries=2)
        assert [s.outcome for s in scores] == ["infra_error"] * 3
        assert all(not s.trainable and s.error.startswith("judge: ") and s.metrics["retries"] == 2.0 for s in scores)
        expected = FAULTS[fault][1] if srv else "cannot reach"
        assert all(expected in s.error for s in scores), scores[0].error
        if srv is not None:  # 3 rows x (1 + the judge's own retry) x (1 + score_batch's 2 retries); no failure cached
            assert len(srv.requests) == 3 * 2 * 3
    finally:
        if srv is not None:
            srv.close()


@pytest.mark.parametrize("server", [("flaky", 0.0)], indirect=True)
def test_a_transient_failure_is_retried_and_then_scored(server):
    scores = score_batch(judge(server.base_url), [RIGHT, OTHER], [ROW] * 2, retries=1)
    assert [s.reward for s in scores] == [1.0, 0.3] and all(s.metrics["retries"] == 1.0 for s in scores)
    inside = judge(server.base_url, retries=1).score(RIGHT, dict(ROW, question="again"))  # the judge's own retry
    assert inside.reward == 1.0 and "retries" not in inside.metrics


@pytest.mark.parametrize("server", [("401", 0.0)], indirect=True)
def test_a_refused_request_is_not_sent_again(server):
    s = judge(server.base_url, retries=3).score(RIGHT, ROW)
    assert s.outcome == "infra_error" and "HTTP 401" in s.error and len(server.requests) == 1


def test_a_score_outside_the_scale_is_unparsable(server):
    s = judge(server.base_url, max_score=5).score(RIGHT, ROW)  # the rule judge says 10
    assert s.outcome == "infra_error" and "outside [0, 5]" in s.error


def test_template_slots_and_required_keys(tmp_path):
    j = judge("http://127.0.0.1:9/v1")
    assert j.requires == (("question", "prompt"), ("answer", "reference"))
    assert verifiers.missing_keys(j, {"question": "q"}) == ["answer | reference"]
    only_question = tmp_path / "t.txt"
    only_question.write_text('Rate {{"json": "braces stay"}} {question} -> {completion}')
    k = judge("http://127.0.0.1:9/v1", template=str(only_question))
    assert k.requires == (("question", "prompt"),) and verifiers.missing_keys(k, {"prompt": "p"}) == []
    assert k.render("{answer} as text", {"question": "q"}) == 'Rate {{"json": "braces stay"}} q -> {answer} as text'
    no_slot = tmp_path / "bad.txt"
    no_slot.write_text("Rate {question}")
    with pytest.raises(ValueError, match="no {completion} slot"):
        judge("http://127.0.0.1:9/v1", template=str(no_slot))
    with pytest.raises(ValueError, match="NO_SUCH_KEY_ENV"):
        judge("http://127.0.0.1:9/v1", api_key_env="NO_SUCH_KEY_ENV")
