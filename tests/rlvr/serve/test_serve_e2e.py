"""The server on the micro model with a real engine, and `rlvr serve` as a user runs it, through the openai client."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import openai
import pytest

from rlvr.models import context_length
from rlvr.serve import Limits, Server
from rollouts import SamplingConfig, engine_config

CHAT_TEMPLATE = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def hf_engine(micro_model):
    engine = engine_config("hf").build(micro_model)
    yield engine
    engine.close()


def test_openai_client_gets_the_engines_tokens(micro_model, hf_engine):
    from transformers import AutoTokenizer  # transformers' auto classes: seconds, not at collection

    tok = AutoTokenizer.from_pretrained(micro_model)
    limits = Limits(context=context_length(micro_model), max_tokens=64)
    prompt = "Q: What is 3+4?\nA:"
    with Server(hf_engine, tok, "micro", limits=limits) as server:
        c = openai.OpenAI(base_url=server.session_url("e2e"), api_key=server.api_key, max_retries=0)
        assert [m.id for m in c.models.list().data] == ["micro"]
        r = c.completions.create(model="micro", prompt=prompt, max_tokens=24, seed=11, logprobs=0)
        (call,) = server.records.pop("e2e")
        sample = call.samples[0]
        assert call.prompt_ids == tok(prompt, add_special_tokens=False)["input_ids"]
        assert r.usage.prompt_tokens == len(call.prompt_ids) and r.usage.completion_tokens == len(sample.token_ids)
        assert r.choices[0].text == sample.text and r.choices[0].logprobs.token_logprobs == sample.logprobs
        with pytest.raises(openai.BadRequestError, match="no chat template"):
            c.chat.completions.create(model="micro", messages=[{"role": "user", "content": "hi"}])
    # the same prompt and seed in process: the same tokens
    (group,) = hf_engine.generate([call.prompt_ids], SamplingConfig(max_tokens=24, seeds=[call.seed]))
    assert group.completions[0].token_ids == sample.token_ids and group.completions[0].text == r.choices[0].text


def test_chat_through_the_tokenizers_template(micro_model, hf_engine, tmp_path):
    from transformers import AutoTokenizer

    model = tmp_path / "micro-chat"
    shutil.copytree(micro_model, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(model)
    tok = AutoTokenizer.from_pretrained(model)  # as `rlvr serve` would load it
    messages = [{"role": "user", "content": "What is 2+2?"}]
    with Server(hf_engine, tok, "micro-chat", limits=Limits(context=context_length(str(model)), max_tokens=32)) as s:
        c = openai.OpenAI(base_url=s.session_url("chat"), api_key=s.api_key, max_retries=0)
        r = c.chat.completions.create(model="micro-chat", messages=messages, max_tokens=16, seed=5)
        (call,) = s.records.calls("chat")
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "user: What is 2+2?\nassistant:"
    assert call.prompt_ids == tok(rendered, add_special_tokens=False)["input_ids"]
    assert r.choices[0].message.content == call.samples[0].text and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(call.prompt_ids) and r.usage.completion_tokens == len(call.samples[0].token_ids)


@pytest.mark.parametrize("http", [[], ["--http-process"]], ids=["thread", "process"])
def test_rlvr_serve_command(micro_model, tmp_path, http):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RLVR_API_KEY", None)
    cmd = [sys.executable, "-m", "rlvr.cli", "serve", micro_model, "--engine", "hf", "--served-model-name", "micro",
           "--max-tokens", "32", *http]
    # stderr to a file: a pipe nobody reads fills up with the libraries' warnings and blocks the server's exit
    err = (tmp_path / "serve.err").open("w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    try:
        seen = {}
        for line in proc.stdout:
            key, _, value = line.partition(": ")
            seen[key] = value.split()[0] if value.strip() else ""
            if key == "api_key":
                break
        assert seen.get("base_url", "").startswith("http://127.0.0.1:"), (seen, (tmp_path / "serve.err").read_text())
        assert len(seen["api_key"]) >= 24  # generated and printed
        c = openai.OpenAI(base_url=seen["base_url"], api_key=seen["api_key"], max_retries=0)
        assert [m.id for m in c.models.list().data] == ["micro"]
        r = c.completions.create(model="micro", prompt="Q: What is 1+1?\nA:", max_tokens=8)
        assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 8 and r.choices[0].finish_reason
        with pytest.raises(openai.BadRequestError, match="limit of 32 tokens"):
            c.completions.create(model="micro", prompt="x", max_tokens=33)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=seen["base_url"], api_key="guess", max_retries=0).models.list()
        c.close()  # no kept-alive connection for the server's graceful shutdown to wait on
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=60) == 0, (tmp_path / "serve.err").read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
            err.close()


def test_rlvr_serve_refuses_bad_arguments(tmp_path, capsys):
    from rlvr.cli import main

    for args, message in ((["--engine", "nope"], "--engine: unknown engine 'nope'"),
                          (["--port", "70000"], "--port: 70000 is not a port"),
                          (["--api-key", " "], "--api-key: an empty token")):
        assert main(["serve", str(tmp_path), *args]) == 2
        err = capsys.readouterr().err
        assert message in err, err
    assert main(["serve", str(tmp_path / "none")]) == 2
    assert "MODEL: no such directory" in capsys.readouterr().err

