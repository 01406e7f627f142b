"""The server over real HTTP with the real ``openai`` client, in front of a scripted engine (no model):
routes, batching, records, tool calls, and every kind of bad input or fault it must survive."""

from __future__ import annotations

import json
import threading
import time

import helpers
import httpx
import openai
import pytest
from transformers import PreTrainedTokenizerFast

from rlvr.serve import Limits, Server, SessionRecords, is_loopback
from rollouts import Completion, EngineBase, Group
from rollouts.types import cut_at_stop

# a chat template that reads tools, in the shape of Qwen's (tools in the system turn, <tool_call> replies)
TEMPLATE = (
    "{% if tools %}<|system|>tools: {{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
    "{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def byte_tokenizer(template: str | None = TEMPLATE) -> PreTrainedTokenizerFast:
    """One token per byte (tests.helpers.byte_tokenizer), with this file's chat template by default."""
    return helpers.byte_tokenizer(template)


class ScriptEngine(EngineBase):
    """Replies ``reply(prompt_text, seed)``; "SLOW" in a prompt sleeps a second, "BOOM" raises."""

    def __init__(self, reply=None):
        self._set_tokenizer(byte_tokenizer())
        self.reply = reply or (lambda text, seed: f"echo:{text[-8:]}:{seed}")
        self.calls: list[int] = []

    def _generate(self, prompt_ids, texts, seeds, sampling, finished):
        self.calls.append(len(prompt_ids))
        if any("BOOM" in t for t in texts):
            raise RuntimeError("the engine broke")
        if any("SLOW" in t for t in texts):
            time.sleep(1.0)
        groups = []
        for i, text in enumerate(texts):
            completions = []
            for j in range(sampling.n):
                out = self.tokenizer(self.reply(text, seeds[i] + j), add_special_tokens=False)["input_ids"]
                reason = "length" if len(out) > sampling.max_tokens else "stop"
                out = out[: sampling.max_tokens]
                completions.append(Completion(cut_at_stop(self.tokenizer.decode(out), sampling.stop), out,
                                              [-0.25] * len(out), reason))
            groups.append(Group(text, prompt_ids[i], completions))
            finished(i, groups[-1])
        return groups


@pytest.fixture
def served(request):
    """A server of a ScriptEngine; parametrized indirectly with "process", its HTTP side in a child process."""
    engine = ScriptEngine()
    tok = byte_tokenizer()
    with Server(engine, tok, "script", api_key="sk-test", limits=Limits(context=400, max_tokens=100, vocab_size=len(tok)),
                http=getattr(request, "param", "thread")) as server:
        yield server, engine


BOTH_HTTP = pytest.mark.parametrize("served", ["thread", "process"], indirect=True)
# the process variant in the slow tier (~4 s a server start): where the fast tier has it already
BOTH_HTTP_SLOW = pytest.mark.parametrize("served", ["thread", pytest.param("process", marks=pytest.mark.slow)],
                                         indirect=True)


def client(server, session: str | None = None, key: str = "sk-test") -> openai.OpenAI:
    url = server.base_url if session is None else server.session_url(session)
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30)


def post(server, path: str, body, key: str | None = "sk-test", timeout: float = 30) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{server.root_url}{path}", content=content, headers=headers, timeout=timeout)


@BOTH_HTTP_SLOW
def test_models_and_completions_through_the_openai_client(served):
    server, _ = served
    c = client(server)
    assert [m.id for m in c.models.list().data] == ["script"]
    r = c.completions.create(model="script", prompt="hello world", max_tokens=50, seed=7)
    assert r.choices[0].text.startswith("echo:lo world:") and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == len("hello world")
    assert r.usage.completion_tokens == len(r.choices[0].text)
    r2 = c.completions.create(model="script", prompt="hello world", max_tokens=50, seed=7)
    assert r2.choices[0].text == r.choices[0].text  # a seed is a seed
    # a list of prompts, n choices each, token-id prompts, stop strings, log-probs, the length limit
    r = c.completions.create(model="script", prompt=["a", "bc"], n=2, max_tokens=50, logprobs=0, stop=[":"])
    assert [ch.text for ch in r.choices] == ["echo", "echo", "echo", "echo"]
    assert r.usage.prompt_tokens == 3 and r.choices[0].logprobs.token_logprobs[0] == -0.25
    r = c.completions.create(model="script", prompt=[[98, 99], [100]], max_tokens=50)
    assert r.usage.prompt_tokens == 3 and len(r.choices) == 2
    r = c.completions.create(model="script", prompt="x", max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def test_concurrent_requests_share_engine_calls(served):
    server, engine = served
    c = client(server)
    texts: dict[int, str] = {}

    def ask(i: int) -> None:
        texts[i] = c.completions.create(model="script", prompt=f"prompt {i:02d}", max_tokens=50, seed=i).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(texts[i].startswith(f"echo:rompt {i:02d}:") for i in range(24))  # each got its own answer
    assert sum(engine.calls) == 24 and len(engine.calls) < 24  # and they were batched


@BOTH_HTTP
def test_chat_tool_calls_and_session_records(served):
    server, engine = served
    engine.reply = lambda text, seed: ('Let me add.<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}'
                                       "</tool_call>" if "tool" not in text.rsplit("<|user|>", 1)[-1] else "It is 5.")
    tools = [{"type": "function", "function": {"name": "add", "description": "a + b",
                                                "parameters": {"type": "object", "properties": {}}}}]
    c = client(server, session="ep-1")
    messages = [{"role": "user", "content": "2 + 3?"}]
    r = c.chat.completions.create(model="script", messages=messages, tools=tools, max_tokens=90, logprobs=True)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and msg.content == "Let me add."
    assert msg.tool_calls[0].function.name == "add" and json.loads(msg.tool_calls[0].function.arguments) == {"a": 2, "b": 3}
    assert r.choices[0].logprobs.content[0].logprob == -0.25
    # the agent appends the reply as it came and the tool's result: the template renders both
    messages += [msg, {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "5"}]
    r = c.chat.completions.create(model="script", messages=messages, tools=tools, max_tokens=90)
    assert r.choices[0].message.content == "It is 5." and r.choices[0].message.tool_calls is None
    calls = server.records.calls("ep-1")
    assert [call.endpoint for call in calls] == ["chat.completions"] * 2
    tok = byte_tokenizer()
    rendered = tok.apply_chat_template([{"role": "user", "content": "2 + 3?"}], tools=tools, tokenize=False,
                                       add_generation_prompt=True)
    assert calls[0].prompt_ids == tok(rendered, add_special_tokens=False)["input_ids"]
    assert calls[0].samples[0].token_ids == tok(engine.reply("", 0), add_special_tokens=False)["input_ids"][:90]
    assert calls[0].samples[0].logprobs == [-0.25] * len(calls[0].samples[0].token_ids)
    assert calls[1].prompt_ids[: len(calls[0].prompt_ids)] == calls[0].prompt_ids[: len(calls[0].prompt_ids)]
    assert r.usage.prompt_tokens == len(calls[1].prompt_ids)
    # a header names a session too; a request without one is not recorded
    c2 = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0,
                       default_headers={"X-Session-Id": "ep-2"})
    c2.completions.create(model="script", prompt="hi", max_tokens=20)
    client(server).completions.create(model="script", prompt="hi", max_tokens=20)
    assert sorted(server.records.sessions()) == ["ep-1", "ep-2"]
    assert len(server.records.pop("ep-2")) == 1 and server.records.calls("ep-2") == []


def test_streaming_gives_the_same_text(served):
    server, _ = served
    c = client(server)
    whole = c.completions.create(model="script", prompt="stream me", max_tokens=50, seed=3).choices[0].text
    parts = list(c.completions.create(model="script", prompt="stream me", max_tokens=50, seed=3, stream=True,
                                      stream_options={"include_usage": True}))
    assert "".join(p.choices[0].text for p in parts if p.choices) == whole
    assert parts[-1].usage.completion_tokens == len(whole)
    chunks = list(c.chat.completions.create(model="script", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=50, seed=3, stream=True))
    chat = c.chat.completions.create(model="script", messages=[{"role": "user", "content": "hi"}], max_tokens=50,
                                     seed=3)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == chat.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_auth_is_required_on_every_route(served):
    server, _ = served
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    assert httpx.get(f"{server.base_url}/models", headers={"Authorization": "Bearer"}).status_code == 401
    assert httpx.get(f"{server.base_url}/models", headers={"Authorization": "sk-test"}).status_code == 401
    r = post(server, "/v1/completions", {"model": "script", "prompt": "x"}, key=None)
    assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
    assert httpx.get(f"{server.root_url}/nowhere").status_code == 401  # even a route that does not exist
    assert httpx.get(f"{server.root_url}/docs").status_code == 401
    assert httpx.get(f"{server.root_url}/nowhere", headers={"Authorization": "Bearer sk-test"}).status_code == 404
    with pytest.raises(ValueError, match="empty token"):
        Server(ScriptEngine(), byte_tokenizer(), "m", api_key="")


@BOTH_HTTP_SLOW
def test_bad_input_is_a_400_naming_what_is_wrong(served):
    server, _ = served

    def error(path, body, status=400):
        r = post(server, path, body)
        assert r.status_code == status, r.text
        return r.json()["error"]["message"]

    assert "not valid JSON" in error("/v1/completions", b'{"model": "script", "prompt": ')
    assert "JSON object" in error("/v1/completions", b"[1, 2]")
    assert "unknown field 'max_token'" in error("/v1/completions", {"model": "script", "prompt": "x", "max_token": 5})
    assert "unknown field 'messages.0.colour'" in error(
        "/v1/chat/completions", {"model": "script", "messages": [{"role": "user", "content": "x", "colour": 1}]})
    assert "prompt: Field required" in error("/v1/completions", {"model": "script"})
    assert error("/v1/completions", {"model": "script", "prompt": ["a", [1]]}).startswith("prompt: a string, a list")
    assert "temperature" in error("/v1/completions", {"model": "script", "prompt": "x", "temperature": -1})
    assert "context is 400 tokens" in error("/v1/completions", {"model": "script", "prompt": "y" * 350, "max_tokens": 60})
    assert "limit of 100 tokens" in error("/v1/completions", {"model": "script", "prompt": "x", "max_tokens": 101})
    assert "fills this model's context" in error(
        "/v1/chat/completions", {"model": "script", "messages": [{"role": "user", "content": "z" * 400}]})
    assert "limit of 64" in error("/v1/completions", {"model": "script", "prompt": "x", "n": 65})
    assert "token ids must be in" in error("/v1/completions", {"model": "script", "prompt": [10**6]})
    assert "empty prompt" in error("/v1/completions", {"model": "script", "prompt": ""})
    assert "presence_penalty" in error("/v1/completions", {"model": "script", "prompt": "x", "presence_penalty": 1})
    assert "top alternatives" in error("/v1/completions", {"model": "script", "prompt": "x", "logprobs": 5})
    assert "forced tool choice" in error("/v1/chat/completions", {
        "model": "script", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"})
    assert "'gpt-4' not found" in error("/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404)
    # the openai client sees these as BadRequestError with the message
    with pytest.raises(openai.BadRequestError, match="context is 400 tokens"):
        client(server).completions.create(model="script", prompt="y" * 390, max_tokens=50)
    # neutral values of unimplemented fields pass
    r = post(server, "/v1/completions", {"model": "script", "prompt": "x", "presence_penalty": 0, "echo": False,
                                         "best_of": 1, "user": "me", "max_tokens": 30})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 1


def test_a_tokenizer_without_a_chat_template_answers_400():
    with Server(ScriptEngine(), byte_tokenizer(template=None), "plain", api_key="k") as server:
        c = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="has no chat template"):
            c.chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}])
        assert c.completions.create(model="plain", prompt="hi", max_tokens=20).choices[0].text


@BOTH_HTTP
def test_engine_failures_and_disconnects_leave_the_server_running(served):
    server, _ = served
    c = client(server, session="s")
    with pytest.raises(openai.InternalServerError, match="the engine broke"):
        c.completions.create(model="script", prompt="BOOM", max_tokens=20)
    with pytest.raises(openai.APIError, match="the engine broke"):  # after a 200: the error as an event
        list(c.completions.create(model="script", prompt="BOOM", max_tokens=20, stream=True))
    # a client that gives up mid-request, and one that closes its stream after the headers
    with pytest.raises(httpx.ReadTimeout):
        post(server, "/s/s/v1/completions", {"model": "script", "prompt": "SLOW", "max_tokens": 20}, timeout=0.3)
    with httpx.stream("POST", f"{server.root_url}/s/s/v1/completions", timeout=30,
                      headers={"Authorization": "Bearer sk-test"},
                      json={"model": "script", "prompt": "SLOW 2", "max_tokens": 20, "stream": True}) as r:
        assert r.status_code == 200
    assert c.completions.create(model="script", prompt="after", max_tokens=20).choices[0].text.startswith("echo")
    tok = byte_tokenizer()
    prompts = [tok.decode(call.prompt_ids) for call in server.records.calls("s")]
    # what was sampled for the client that left is recorded all the same (the stream that closed while
    # its prompt waited in the queue was dropped before sampling, or sampled and recorded: either is fine)
    assert prompts[0] == "SLOW" and prompts[-1] == "after" and set(prompts) <= {"SLOW", "SLOW 2", "after"}


def test_hosts():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    server = Server(ScriptEngine(), byte_tokenizer(), "m")
    try:
        assert server.host == "127.0.0.1" and len(server.api_key) >= 24  # a token is always made
    finally:
        server.close()


def test_records_are_thread_safe_and_small():
    records = SessionRecords()
    assert records.calls("none") == [] and records.pop("none") == []


def test_the_sampling_routes_answer_as_fastapis_do(served):
    """A POST to a sampling endpoint skips FastAPI (rlvr.serve.app.SamplingRoutes); what it answers, and what
    goes on to FastAPI, is the same as through FastAPI's routes."""
    server, _ = served
    body = {"model": "script", "prompt": "x", "max_tokens": 20}
    r = httpx.get(f"{server.root_url}/v1/completions", headers={"Authorization": "Bearer sk-test"})
    assert r.status_code == 405 and r.json()["error"]["message"] == "Method Not Allowed"  # FastAPI's answer
    assert post(server, f"/s/{'a' * 201}/v1/completions", body).status_code == 400
    r = httpx.post(f"{server.root_url}/v1/chat/completions", json={**body, "prompt": None}, timeout=30,
                   headers={"Authorization": "Bearer sk-test", "X-Session-Id": "b" * 201})
    assert r.status_code == 400 and "1 to 200 characters" in r.json()["error"]["message"]
    server.records.open("shut")
    server.records.close("shut")
    r = post(server, "/s/shut/v1/completions", body)
    assert r.status_code == 409 and "is closed" in r.json()["error"]["message"]
    r = httpx.post(f"{server.root_url}/v1/completions", json=body, timeout=30,
                   headers={"Authorization": "Bearer sk-test", "X-Session-Id": "hdr"})
    x_ids = byte_tokenizer()("x", add_special_tokens=False)["input_ids"]
    assert r.status_code == 200 and [c.prompt_ids for c in server.records.calls("hdr")] == [x_ids]
    assert post(server, "/s/path/v1/completions", body).json()["choices"][0]["text"].startswith("echo")
    assert len(server.records.calls("path")) == 1


def test_the_http_process_starts_stops_and_dies_with_clear_errors():
    """``http="process"``: a busy port is refused naming it; ``close`` leaves no child behind; a child that
    died is named by the parent's next records call instead of a hang."""
    import signal
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        with pytest.raises(RuntimeError, match=rf"did not start on 127.0.0.1:{busy.getsockname()[1]}: .*in use"):
            Server(ScriptEngine(), byte_tokenizer(), "m", port=busy.getsockname()[1], http="process")
    finally:
        busy.close()
    server = Server(ScriptEngine(), byte_tokenizer(), "m", api_key="k", http="process")
    child = server._child.proc
    try:
        server.records.open("s", seed=1)
        assert client(server, session="s", key="k").completions.create(model="m", prompt="hi", max_tokens=20).choices
        assert [call.seed for call in server.records.pop("s")] == [1_000_003 * 10_007 + 7]  # the session's seed 0
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        with pytest.raises(RuntimeError, match=r"HTTP process (has stopped \(records.ask|did not answer records.pop.*it has stopped)"):
            server.records.pop("s")
    finally:
        server.close()
    server = Server(ScriptEngine(), byte_tokenizer(), "m", http="process")
    child = server._child.proc
    server.close()
    assert child.poll() is not None
