"""The HTTP side: routes, the bearer-token check, and how a request reaches the engine thread.

Every route is served twice, at ``/v1/...`` and at ``/s/<session>/v1/...``: a client whose base
URL carries a session id (or that sends an ``X-Session-Id`` header) has its calls recorded under
that session (rlvr.serve.records). ``BearerAuth`` wraps the whole application, so no route (an
unknown one included) answers without the token.

Streaming (``stream: true``) is served in OpenAI's server-sent-events format, but the engine
samples a completion whole, so each choice arrives as one chunk once it is sampled (then its
finish chunk, the usage chunk when ``stream_options.include_usage``, then ``[DONE]``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlvr.serve import protocol as P
from rlvr.serve.batcher import Batcher, Settings
from rlvr.serve.records import Call, Sample, SessionRecords
from rollouts.types import Completion, prompt_seeds

SESSION_HEADER = "x-session-id"
MAX_SESSION_CHARS = 200


class BearerAuth:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <token>`` (401 otherwise);
    any other connection (a websocket) is refused. The token cannot be empty."""

    def __init__(self, app, token: str):
        if not token:
            raise ValueError("the server needs a non-empty API token")
        self.app, self._expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # nothing here speaks websockets: close without accepting
            await send({"type": "websocket.close", "code": 1008})
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self._expected):
            return await self.app(scope, receive, send)
        message = "missing API key: send 'Authorization: Bearer <token>'" if not given else "invalid API key"
        body = json.dumps(P.ApiError(401, message, kind="authentication_error").body()).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})


@dataclass
class Backend:
    """What the routes use: the served model's name, a tokenizer of the HTTP side (never the engine
    thread's: fast tokenizers are not safe to share across threads), the batcher, the records, the limits."""

    model_name: str
    tokenizer: Any
    batcher: Batcher
    records: SessionRecords
    limits: P.Limits

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def submit(self, prompts: list[list[int]], settings: Settings, seed: int | None, session: str | None,
               endpoint: str, body: dict[str, Any]) -> list[asyncio.Future]:
        """Queue every prompt; each finished one is recorded under ``session`` (from the engine thread,
        so a call is recorded even when its client has gone)."""
        seeds = [None] * len(prompts) if seed is None else prompt_seeds(seed, len(prompts))
        waits = []
        for ids, prompt_seed in zip(prompts, seeds):
            future, used_seed = self.batcher.submit(ids, settings, prompt_seed)
            if session is not None:
                future.add_done_callback(self._recorder(session, endpoint, ids, used_seed, body))
            waits.append(asyncio.wrap_future(future))
        return waits

    def _recorder(self, session: str, endpoint: str, ids: list[int], seed: int, body: dict[str, Any]):
        def record(future) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            samples = [Sample(c.token_ids, c.logprobs, c.finish_reason, c.text) for c in future.result()]
            self.records.add(Call(session, endpoint, ids, samples, seed, body))
        return record


def _session(request: Request) -> str | None:
    session = request.path_params.get("session") or request.headers.get(SESSION_HEADER)
    if session is not None and not 0 < len(session) <= MAX_SESSION_CHARS:
        raise P.ApiError(400, f"a session id must have 1 to {MAX_SESSION_CHARS} characters")
    return session


def _check_model(backend: Backend, model: str) -> None:
    if model != backend.model_name:
        raise P.ApiError(404, f"model {model!r} not found; this server serves {backend.model_name!r}", "model",
                         kind="not_found_error")


async def _results(waits: list[asyncio.Future]) -> list[list[Completion]]:
    try:
        return list(await asyncio.gather(*waits))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the engine raised: this request fails, the server goes on
        raise P.ApiError(500, f"the engine failed: {type(exc).__name__}: {exc}", kind="server_error") from None


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _stream(waits: list[asyncio.Future], chunks) -> StreamingResponse:
    """The reply of a ``stream: true`` request: ``chunks(results)`` once the engine has sampled them."""

    async def events() -> AsyncIterator[str]:
        try:
            results = await _results(waits)
        except P.ApiError as exc:
            yield _sse(exc.body())
        else:
            for chunk in chunks(results):
                yield _sse(chunk)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def build_app(backend: Backend, api_key: str) -> BearerAuth:
    """The ASGI application: the FastAPI routes inside the bearer-token check."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(P.ApiError)
    async def api_error(request: Request, exc: P.ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(P.ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        err = P.ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")
        return JSONResponse(err.body(), status_code=500)

    async def models(request: Request) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": backend.model_name, "object": "model", "created": 0,
                                            "owned_by": "rlvr"}]}

    async def completions(request: Request):
        session = _session(request)
        req = P.parse_request(P.CompletionRequest, await request.body())
        _check_model(backend, req.model)
        P.check_neutral(req)
        prompts = _completion_prompts(backend, req)
        settings = P.settings(req, [len(p) for p in prompts], backend.limits, default_max_tokens=16)
        waits = backend.submit(prompts, settings, req.seed, session, "completions", req.model_dump(exclude_none=True))
        want_logprobs = req.logprobs is not None
        rid = P.new_id("cmpl")

        def choices(results: list[list[Completion]]) -> list[dict[str, Any]]:
            out = []
            for completions in results:
                for c in completions:
                    lp = P.completion_logprobs(backend.tokenizer, c.token_ids, c.logprobs) if want_logprobs else None
                    out.append({"index": len(out), "text": c.text, "logprobs": lp, "finish_reason": c.finish_reason})
            return out

        def usage(results: list[list[Completion]]) -> dict[str, int]:
            return P.usage([len(p) for p in prompts], [len(c.token_ids) for cs in results for c in cs])

        if req.stream:
            def chunks(results):
                for choice in choices(results):
                    yield P.envelope("text_completion", rid, req.model, [choice], None)
                if (req.stream_options or {}).get("include_usage"):
                    yield P.envelope("text_completion", rid, req.model, [], usage(results))
            return _stream(waits, chunks)
        results = await _results(waits)
        return P.envelope("text_completion", rid, req.model, choices(results), usage(results))

    async def chat_completions(request: Request):
        session = _session(request)
        req = P.parse_request(P.ChatRequest, await request.body())
        _check_model(backend, req.model)
        P.check_neutral(req)
        ids = P.check_ids(backend.encode(P.render_chat(backend.tokenizer, req)), backend.limits, "messages")
        settings = P.settings(req, [len(ids)], backend.limits, default_max_tokens=None)
        waits = backend.submit([ids], settings, req.seed, session, "chat.completions",
                               req.model_dump(exclude_none=True))
        parse_tools = bool(req.tools) and req.tool_choice != "none"
        rid = P.new_id("chatcmpl")

        def choices(results: list[list[Completion]]) -> list[dict[str, Any]]:
            out = []
            for c in results[0]:
                content, calls = P.parse_tool_calls(c.text) if parse_tools else (c.text, [])
                message: dict[str, Any] = {"role": "assistant", "content": content}
                if calls:
                    message["tool_calls"] = calls
                lp = P.chat_logprobs(backend.tokenizer, c.token_ids, c.logprobs) if req.logprobs else None
                out.append({"index": len(out), "message": message, "logprobs": lp,
                            "finish_reason": "tool_calls" if calls else c.finish_reason})
            return out

        def usage(results: list[list[Completion]]) -> dict[str, int]:
            return P.usage([len(ids)], [len(c.token_ids) for c in results[0]])

        if req.stream:
            def chunks(results):
                for choice in choices(results):
                    delta = dict(choice["message"])
                    if "tool_calls" in delta:
                        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(delta["tool_calls"])]
                    for part in ({"index": choice["index"], "delta": delta, "logprobs": choice["logprobs"],
                                  "finish_reason": None},
                                 {"index": choice["index"], "delta": {}, "logprobs": None,
                                  "finish_reason": choice["finish_reason"]}):
                        yield P.envelope("chat.completion.chunk", rid, req.model, [part], None)
                if (req.stream_options or {}).get("include_usage"):
                    yield P.envelope("chat.completion.chunk", rid, req.model, [], usage(results))
            return _stream(waits, chunks)
        results = await _results(waits)
        return P.envelope("chat.completion", rid, req.model, choices(results), usage(results))

    for prefix in ("/v1", "/s/{session}/v1"):
        app.add_api_route(f"{prefix}/models", models, methods=["GET"])
        app.add_api_route(f"{prefix}/completions", completions, methods=["POST"])
        app.add_api_route(f"{prefix}/chat/completions", chat_completions, methods=["POST"])
    return BearerAuth(app, api_key)


def _completion_prompts(backend: Backend, req: P.CompletionRequest) -> list[list[int]]:
    """Each prompt's ids: text tokenized without special tokens, token ids used as given."""
    prompt = req.prompt
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise P.ApiError(400, "prompt: an empty list", "prompt")
    if len(prompt) > backend.limits.max_prompts:
        raise P.ApiError(400, f"prompt: {len(prompt)} prompts is over this server's limit of "
                         f"{backend.limits.max_prompts} per request", "prompt")
    return [P.check_ids(backend.encode(p) if isinstance(p, str) else list(p), backend.limits) for p in prompt]


