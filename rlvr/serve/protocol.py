"""The OpenAI request bodies this server takes, the limits it checks, and the replies it builds.

Request fields are checked strictly: a field the OpenAI API does not define is an HTTP 400 naming
it (a typo such as ``max_token`` must not silently sample 16 tokens). Fields the API defines but
this server does not implement (``echo``, ``best_of``, penalties, ``logit_bias``, forced
``tool_choice``, top log-probs) are accepted at their neutral value and a 400 otherwise; ``user``,
``metadata`` and ``parallel_tool_calls`` are accepted and ignored. ``ApiError`` is what a handler
raises for any of these: its status and one-line message become OpenAI's ``{"error": {...}}`` body.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rlvr.serve.batcher import Settings


class ApiError(Exception):
    """An error answered to the client: HTTP ``status`` with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask. ``context``: the model's context length (prompt + max_tokens; None:
    unchecked); ``max_tokens``: the most tokens one choice may sample (also a chat request's default);
    ``max_n``: the most choices per prompt; ``max_prompts``: the most prompts in one completions request;
    ``vocab_size``: token-id prompts must be below it (None: unchecked)."""

    context: int | None = None
    max_tokens: int = 1024
    max_n: int = 64
    max_prompts: int = 64
    vocab_size: int | None = None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Sampling(_Strict):
    """Fields shared by both endpoints (None: the default)."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    # defined by OpenAI, accepted at their neutral value only
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # defined by OpenAI, accepted and ignored
    user: str | None = None
    metadata: dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0)  # 0: the sampled tokens' log-probs; >0 (top alternatives) is refused
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None


class _TextPart(_Strict):
    type: Literal["text"]
    text: str


class _Function(_Strict):
    name: str
    arguments: str


class _ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: _Function


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None = None
    name: str | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None
    # what the openai client sends back when an agent appends a reply message as it came
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: Any = None
    function_call: Any = None


class _FunctionDef(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: _FunctionDef


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0)
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None


def parse_request(model: type[BaseModel], raw: bytes) -> Any:
    """``raw`` as ``model``, or an ApiError 400 saying what is wrong (bad JSON, an unknown field, a value)."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems: dict[str, str] = {}
        for err in exc.errors():
            # a union reports one error per member type ("prompt.list[int].0"): one line for the field
            loc = [str(p) for p in err["loc"]]
            tag = next((i for i, p in enumerate(loc) if _UNION_TAG.match(p)), None)
            where = ".".join(loc if tag is None else loc[:tag])
            if err["type"] == "extra_forbidden" and tag is None:
                problems.setdefault(where, f"unknown field {where!r}")
            elif tag is not None:
                hint = UNION_HINTS.get(loc[tag - 1] if tag else "", "none of the accepted types")
                problems.setdefault(where, f"{where}: {hint}")
            else:
                problems.setdefault(where, f"{where}: {err['msg']}")
        first = exc.errors()[0]["loc"]
        raise ApiError(400, "; ".join(list(problems.values())[:5]), param=str(first[0]) if first else None) from None


_UNION_TAG = re.compile(r"^(str|int|float|bool|dict\[.*\]|list\[.*\]|function-.*|literal\[.*\]|.*Part|_\w+)$")
UNION_HINTS = {
    "prompt": "a string, a list of strings, a list of token ids, or a list of token-id lists",
    "stop": "a string or a list of strings",
    "content": "a string or a list of text parts ({'type': 'text', 'text': ...})",
    "tool_choice": "'auto', 'none', or a tool choice object",
}


def _refuse_unless(condition: bool, field: str, what: str) -> None:
    if not condition:
        raise ApiError(400, f"{field}: {what} is not supported by this server", param=field)


def check_neutral(req: _Sampling) -> None:
    """Refuse the OpenAI fields this server does not implement unless they are at their neutral value."""
    _refuse_unless(not req.presence_penalty, "presence_penalty", "a non-zero penalty")
    _refuse_unless(not req.frequency_penalty, "frequency_penalty", "a non-zero penalty")
    _refuse_unless(not req.logit_bias, "logit_bias", "a logit bias")
    if isinstance(req, CompletionRequest):
        _refuse_unless(not req.echo, "echo", "echoing the prompt")
        _refuse_unless(req.best_of in (None, 1), "best_of", "best_of > 1")
        _refuse_unless(not req.suffix, "suffix", "a suffix (insertion)")
        _refuse_unless(not req.logprobs, "logprobs", "top alternatives (logprobs > 0; the engine reports the "
                       "sampled token's log-prob only, with logprobs=0)")
    if isinstance(req, ChatRequest):
        _refuse_unless(not req.top_logprobs, "top_logprobs", "top alternatives (top_logprobs > 0; the engine "
                       "reports the sampled token's log-prob only)")
        _refuse_unless(req.tool_choice in (None, "auto", "none"), "tool_choice", "a forced tool choice")
        _refuse_unless(req.response_format in (None, {"type": "text"}), "response_format", "a structured format")


def settings(req: _Sampling, prompt_lens: list[int], limits: Limits, default_max_tokens: int | None,
             default_temperature: float | None = None) -> Settings:
    """The request's sampling settings, checked against ``limits`` for every prompt (``prompt_lens``).
    ``default_max_tokens``: without ``max_tokens``; None: what the context leaves (at most the limit).
    ``default_temperature``: without ``temperature`` (None: OpenAI's default, 1)."""
    n = req.n or 1
    if n > limits.max_n:
        raise ApiError(400, f"n: {n} choices per prompt is over this server's limit of {limits.max_n}", "n")
    max_tokens = req.max_tokens or getattr(req, "max_completion_tokens", None)
    field = "max_tokens"
    if max_tokens is None:
        longest = max(prompt_lens)
        room = limits.max_tokens if limits.context is None else min(limits.max_tokens, limits.context - longest)
        max_tokens = room if default_max_tokens is None else min(default_max_tokens, room)
        if max_tokens < 1:
            raise ApiError(400, f"the prompt has {longest} tokens: it fills this model's context of "
                           f"{limits.context} tokens (no room for a completion)", "messages")
    if max_tokens > limits.max_tokens:
        raise ApiError(400, f"{field}: {max_tokens} is over this server's limit of {limits.max_tokens} tokens per "
                       "completion (rlvr serve --max-tokens)", field)
    if limits.context is not None:
        for length in prompt_lens:
            if length + max_tokens > limits.context:
                raise ApiError(400, f"this model's context is {limits.context} tokens; the prompt has {length} and "
                               f"max_tokens is {max_tokens} ({length + max_tokens} in all): shorten the prompt or "
                               "lower max_tokens", field)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or ())
    if any(not s for s in stop):
        raise ApiError(400, "stop: an empty stop string", "stop")
    if req.temperature is not None:
        temperature = req.temperature
    else:
        temperature = 1.0 if default_temperature is None else default_temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    return Settings(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=tuple(stop))


def check_ids(ids: list[int], limits: Limits, what: str = "prompt") -> list[int]:
    if not ids:
        raise ApiError(400, f"{what}: an empty prompt (no tokens)", "prompt")
    if limits.vocab_size is not None and any(not 0 <= t < limits.vocab_size for t in ids):
        raise ApiError(400, f"{what}: token ids must be in [0, {limits.vocab_size})", "prompt")
    return ids


# -- chat ------------------------------------------------------------------------------

def template_takes_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template reads ``tools`` (a template that never mentions them would drop them)."""
    template = getattr(tokenizer, "chat_template", None)
    return "tools" in (json.dumps(template) if isinstance(template, dict) else str(template or ""))


def _message_dict(m: ChatMessage) -> dict[str, Any]:
    """A message as chat templates expect it: text content, a tool call's arguments as an object."""
    content = m.content if not isinstance(m.content, list) else "".join(p.text for p in m.content)
    out: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": content or ""}
    if m.name is not None:
        out["name"] = m.name
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                             for c in m.tool_calls]
    return out


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def render_chat(tokenizer, req: ChatRequest) -> str:
    """The prompt text of a chat request: its messages through the tokenizer's chat template, with the
    generation prompt, and its tools when it gives any (and ``tool_choice`` is not "none")."""
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(400, "this model's tokenizer has no chat template, so /v1/chat/completions cannot render "
                       "messages; use /v1/completions with a prompt, or a model whose tokenizer_config.json has a "
                       "chat_template", "messages")
    kwargs: dict[str, Any] = {}
    if req.tools and req.tool_choice != "none":
        if not template_takes_tools(tokenizer):
            raise ApiError(400, "tools: this model's chat template does not take tools", "tools")
        kwargs["tools"] = [t.model_dump(exclude_none=True) for t in req.tools]
    try:
        return tokenizer.apply_chat_template([_message_dict(m) for m in req.messages], tokenize=False,
                                             add_generation_prompt=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a template that raises (jinja's raise_exception) rejects the messages
        raise ApiError(400, f"the chat template rejected the messages: {type(exc).__name__}: {exc}", "messages") from None


_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """Hermes/Qwen tool calls: each ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` block of
    ``text`` becomes an OpenAI tool call and leaves the content. Text without blocks, or with a block
    that is not such JSON, is returned whole, with no tool calls (the model's text is never lost)."""
    calls = []
    for match in _TOOL_CALL.finditer(text):
        try:
            obj = json.loads(match.group(1))
        except json.JSONDecodeError:
            return text, []
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return text, []
        args = obj.get("arguments", {})
        calls.append({"id": f"call_{secrets.token_hex(12)}", "type": "function",
                      "function": {"name": obj["name"], "arguments": args if isinstance(args, str) else json.dumps(args)}})
    if not calls:
        return text, []
    return _TOOL_CALL.sub("", text).strip() or None, calls


# -- replies ---------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_lens: list[int], completion_lens: list[int]) -> dict[str, int]:
    p, c = sum(prompt_lens), sum(completion_lens)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def completion_logprobs(tokenizer, token_ids: list[int], logprobs: list[float]) -> dict[str, Any]:
    """OpenAI's legacy completions ``logprobs`` object for the sampled tokens (no top alternatives)."""
    tokens = [tokenizer.decode([t]) for t in token_ids]
    offsets, at = [], 0
    for tok in tokens:
        offsets.append(at)
        at += len(tok)
    return {"tokens": tokens, "token_logprobs": list(logprobs), "top_logprobs": None, "text_offset": offsets}


def chat_logprobs(tokenizer, token_ids: list[int], logprobs: list[float]) -> dict[str, Any]:
    """OpenAI's chat ``logprobs`` object for the sampled tokens (``top_logprobs`` empty)."""
    content = []
    for t, lp in zip(token_ids, logprobs):
        tok = tokenizer.decode([t])
        content.append({"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": []})
    return {"content": content, "refusal": None}


def envelope(kind: str, rid: str, model: str, choices: list[dict], usage_: dict | None) -> dict[str, Any]:
    body = {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": choices}
    if usage_ is not None:
        body["usage"] = usage_
    return body
