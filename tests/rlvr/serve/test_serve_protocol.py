"""rlvr.serve.protocol without a server: tool-call parsing, the budget checks, the batcher's grouping."""

from __future__ import annotations

import json
import threading

import pytest

from rlvr.serve.batcher import Batcher, Settings
from rlvr.serve.protocol import ApiError, CompletionRequest, Limits, parse_request, parse_tool_calls, settings
from rollouts import Completion, Group


def test_tool_calls_from_hermes_blocks():
    text = 'Sure.\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>\n<tool_call>{"name": "f"}</tool_call>'
    content, calls = parse_tool_calls(text)
    assert content == "Sure."
    assert [c["function"]["name"] for c in calls] == ["add", "f"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"a": 1} and calls[1]["function"]["arguments"] == "{}"
    assert calls[0]["id"] != calls[1]["id"] and calls[0]["type"] == "function"
    assert parse_tool_calls('<tool_call>{"name": "g", "arguments": "{\\"x\\": 2}"}</tool_call>')[0] is None
    for kept in ("no calls here", "<tool_call>{not json}</tool_call>", '<tool_call>{"arguments": {}}</tool_call>',
                 '<tool_call>{"name": "cut", "argum'):  # malformed or cut: the text whole, no calls
        assert parse_tool_calls(kept) == (kept, [])


def test_budgets_name_the_limit():
    req = CompletionRequest(model="m", prompt="x", max_tokens=50)
    limits = Limits(context=100, max_tokens=60)
    assert settings(req, [50], limits, 16).max_tokens == 50
    with pytest.raises(ApiError, match=r"context is 100 tokens; the prompt has 51 and max_tokens is 50 \(101"):
        settings(req, [10, 51], limits, 16)
    with pytest.raises(ApiError, match="limit of 60 tokens"):
        settings(CompletionRequest(model="m", prompt="x", max_tokens=61), [1], limits, 16)
    # without max_tokens: the endpoint's default, or (chat) what the context leaves, at most the limit
    assert settings(CompletionRequest(model="m", prompt="x"), [1], limits, 16).max_tokens == 16
    assert settings(CompletionRequest(model="m", prompt="x"), [70], limits, None).max_tokens == 30
    assert settings(CompletionRequest(model="m", prompt="x"), [5], limits, None).max_tokens == 60
    s = settings(CompletionRequest(model="m", prompt="x", stop="\n", temperature=0, n=3), [1], limits, 16)
    assert s == Settings(n=3, temperature=0.0, top_p=1.0, max_tokens=16, stop=("\n",))


def test_parse_request_messages():
    with pytest.raises(ApiError, match="not valid JSON") as err:
        parse_request(CompletionRequest, b"\xff")
    assert err.value.status == 400
    with pytest.raises(ApiError, match="max_tokens: Input should be greater than or equal to 1; unknown field 'foo'"):
        parse_request(CompletionRequest, json.dumps({"model": "m", "prompt": "x", "foo": 1, "max_tokens": 0}).encode())


class CountingEngine:
    """Records each generate call's prompts and settings; a prompt's one completion is its own ids."""

    def __init__(self):
        self.calls = []
        self.gate = threading.Event()

    def generate(self, prompts, sampling, on_group=None):
        self.gate.wait(5)
        self.calls.append(([list(p) for p in prompts], sampling))
        return [Group("", list(p), [Completion("", list(p), [0.0] * len(p), "stop")] * sampling.n) for p in prompts]


def test_batcher_groups_by_settings_and_keeps_seeds():
    engine = CountingEngine()
    batcher = Batcher(engine, max_batch=64, window_s=0.2)
    try:
        a, b = Settings(max_tokens=8), Settings(max_tokens=9)
        futures = [batcher.submit([i], a if i % 2 else b, seed=100 + i) for i in range(6)]
        engine.gate.set()
        assert [f.result(5)[0].token_ids for f, _ in futures] == [[i] for i in range(6)]
        assert [seed for _, seed in futures] == [100 + i for i in range(6)]
        assert len(engine.calls) == 2  # one call per settings, in arrival order
        assert engine.calls[0][0] == [[0], [2], [4]] and engine.calls[0][1].seeds == [100, 102, 104]
        assert engine.calls[1][1].max_tokens == 8 and engine.calls[1][1].seeds == [101, 103, 105]
        _, random_seed = batcher.submit([9], a)
        assert isinstance(random_seed, int)  # unseeded prompts get a seed of their own
    finally:
        batcher.close()


def test_batcher_respects_max_batch_and_fails_queued_work_on_close():
    engine = CountingEngine()
    batcher = Batcher(engine, max_batch=2, window_s=0.2)
    futures = [batcher.submit([i], Settings(), seed=i)[0] for i in range(5)]
    engine.gate.set()
    for f in futures:
        f.result(5)
    assert [len(p) for p, _ in engine.calls] == [2, 2, 1]
    batcher.close()
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.submit([1], Settings())


def test_a_batch_ends_once_every_open_session_is_in_it():
    """With a gap of a minute, only the "everyone is in" rule can end a batch before the futures' timeout."""
    engine = CountingEngine()
    engine.gate.set()
    waiting = {"a", "b"}
    batcher = Batcher(engine, max_batch=64, window_s=60.0, max_wait_s=120.0, waiting_on=lambda: frozenset(waiting))
    try:
        first = [batcher.submit([1], Settings(), seed=1, session="a")[0],
                 batcher.submit([2], Settings(), seed=2, session="b")[0]]
        assert [f.result(30)[0].token_ids for f in first] == [[1], [2]]
        assert batcher.batch_sizes == [2]
        waiting.discard("b")  # b's agent returned: a alone is everyone
        assert batcher.submit([3], Settings(), seed=3, session="a")[0].result(30)[0].token_ids == [3]
        assert batcher.batch_sizes == [2, 1]
    finally:
        batcher.close()


def test_a_session_temperature_is_the_default_of_its_calls():
    limits = Limits(max_tokens=60)
    assert settings(CompletionRequest(model="m", prompt="x"), [1], limits, 16, default_temperature=0.0).temperature == 0
    assert settings(CompletionRequest(model="m", prompt="x"), [1], limits, 16).temperature == 1.0
    given = CompletionRequest(model="m", prompt="x", temperature=0.7)
    assert settings(given, [1], limits, 16, default_temperature=0.0).temperature == 0.7


def test_the_gap_ends_a_batch_only_once_half_the_open_sessions_are_in():
    import time

    engine = CountingEngine()
    engine.gate.set()
    batcher = Batcher(engine, max_batch=64, window_s=0.01, max_wait_s=120.0,
                      waiting_on=lambda: frozenset("abcd"))
    try:
        first = batcher.submit([0], Settings(), seed=0, session="a")[0]
        time.sleep(0.3)  # 30 gaps long: a alone is not half of the sessions, so the batch waits on
        rest = [batcher.submit([i], Settings(), seed=i, session=s)[0] for i, s in enumerate("bc", 1)]
        # a, b, c: half are in, and d never calls: the gap ends the batch
        assert [f.result(30)[0].token_ids for f in [first, *rest]] == [[0], [1], [2]]
        assert batcher.batch_sizes == [3]
    finally:
        batcher.close()


def test_a_token_stepping_engine_takes_each_prompt_into_its_own_batching(micro_model):
    """With the static engine (``steps_tokens``), the batcher has no windows: each prompt goes to
    ``engine.submit`` at once and the engine thread steps the engine; each prompt samples what one
    ``generate`` with its seed samples, and close() stops the thread."""
    from rollouts import SamplingConfig
    from rollouts.static_engine import StaticCacheEngine

    engine = StaticCacheEngine(micro_model, compile=False)
    batcher = Batcher(engine, window_s=60.0, max_wait_s=120.0)  # windows that would outlast the futures' timeout
    try:
        assert batcher.continuous
        prompts, settings_ = [[5, 6, 7, 8], [9, 10, 11]], Settings(max_tokens=12)
        futures = [batcher.submit(ids, settings_, seed=3 + i)[0] for i, ids in enumerate(prompts)]
        got = [f.result(120)[0].token_ids for f in futures]
        assert (batcher.prompts, batcher.calls) == (2, 0)  # no generate calls: the engine's scheduler batched
    finally:
        batcher.close()
    want = engine.generate(prompts, SamplingConfig(max_tokens=12, seeds=[3, 4]))
    assert got == [g.completions[0].token_ids for g in want]
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.submit([1], settings_)


def test_the_http_sides_encoder_gives_the_tokenizers_ids():
    """Backend encodes text through the fast tokenizer's Rust backend (rlvr.serve.app.text_encoder): the same
    ids as ``tokenizer(text, add_special_tokens=False)``, even after a call that truncated or padded."""
    import helpers

    from rlvr.serve.app import text_encoder

    tok = helpers.byte_tokenizer(merges=(("a", "b"), ("ab", "c")))
    tok.pad_token = tok.eos_token
    tok(["abcabc", "a"], truncation=True, max_length=3, padding="max_length")  # leaves the backend truncating
    encode = text_encoder(tok)
    assert encode.__name__ == "fast"
    for text in ["", " ", "abcab c", "ab<eos>c<eos>", "é 中 🙂\n\t", "abc" * 300]:
        assert encode(text) == tok(text, add_special_tokens=False)["input_ids"], text

    class Plain:  # a tokenizer without a Rust backend keeps its own __call__
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [len(text)]}

    encode = text_encoder(Plain())
    assert encode.__name__ == "plain" and encode("abc") == [3]
