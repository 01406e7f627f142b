"""The HTTP side: routes, the bearer-token check, and how a request reaches the engine thread.

Every route is served twice, at ``/v1/...`` and at ``/s/<session>/v1/...``: a client whose base
URL carries a session id (or that sends an ``X-Session-Id`` header) has its calls recorded under
that session (rlvr.serve.records). ``BearerAuth`` wraps the whole application, so no route (an
unknown one included) answers without the token.

A session's text prompt that continues one of its earlier calls, i.e. starts with that call's prompt
text followed by the text of the ids it sampled, is not re-tokenised whole: its ids are that call's
prompt ids, the sampled ids as they were, then the rest of the text encoded (``Backend.encode``).
The engine then continues from exactly the tokens it sampled (``tok(a + b) != tok(a) + tok(b)``),
and the session's calls chain into one exact training sequence (rlvr.agents.sequences). A sampled
end token (EOS, a template's end of turn) counts as part of the text when the template writes it,
and is left out when the text goes on without it (a completion that stopped, continued by the agent).

Streaming (``stream: true``) is served in OpenAI's server-sent-events format, but the engine
samples a completion whole, so each choice arrives as one chunk once it is sampled (then its
finish chunk, the usage chunk when ``stream_options.include_usage``, then ``[DONE]``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlvr.serve import protocol as P
from rlvr.serve.batcher import Batcher, Settings
from rlvr.serve.records import Call, Sample, SessionClosed, SessionRecords
from rollouts.types import Completion, prompt_seeds

SESSION_HEADER = "x-session-id"
SESSION_HEADER_BYTES = SESSION_HEADER.encode()
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


def text_encoder(tokenizer) -> Callable[[str], list[int]]:
    """``text -> tokenizer(text, add_special_tokens=False)["input_ids"]``, through the fast tokenizer's Rust
    backend where it has one: transformers' ``__call__`` spends ~0.1 ms of Python a call (argument checks,
    ``BatchEncoding``) on the GIL the engine shares. ``__call__`` first sets the backend's truncation,
    padding and special-token splitting for a plain call; once it has (one call here), encoding with the
    backend gives the same ids, as long as nothing sets them otherwise (the HTTP side owns its tokenizer and
    only ever calls it plainly). A tokenizer without a Rust backend, or whose backend still truncates or pads
    after a plain call, keeps ``__call__``."""

    def plain(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not callable(getattr(backend, "encode", None)):
        return plain
    plain("")
    if backend.truncation is not None or backend.padding is not None:
        return plain

    def fast(text: str) -> list[int]:
        return backend.encode(text, add_special_tokens=False).ids

    return fast


@dataclass
class Backend:
    """What the routes use: the served model's name, a tokenizer of the HTTP side (never the engine
    thread's: fast tokenizers are not safe to share across threads), the batcher, the records, the limits."""

    model_name: str
    tokenizer: Any
    batcher: Batcher
    records: SessionRecords
    limits: P.Limits

    def __post_init__(self) -> None:
        self._tokenize = text_encoder(self.tokenizer)
        self._special = frozenset(getattr(self.tokenizer, "all_special_ids", ()) or ())

    def encode(self, text: str, session: str | None = None) -> list[int]:
        """``text``'s ids; in a session, an earlier call's prompt and sampled ids reused where ``text``
        continues them (the module doc)."""
        if session is not None:
            spliced = self._continue(session, text)
            if spliced is not None:
                return spliced
        return self._tokenize(text)

    def _continue(self, session: str, text: str) -> list[int] | None:
        special = self._special
        best: tuple[int, list[int]] | None = None  # (characters covered, ids)
        for call in self.records.calls(session):
            if call.prompt_text is None or not text.startswith(call.prompt_text):
                continue
            for sample in call.samples:
                ids = list(sample.token_ids)
                for kept in ([ids, ids[:-1]] if ids and ids[-1] in special else [ids]):
                    head = call.prompt_text + self.tokenizer.decode(kept, skip_special_tokens=False)
                    if text.startswith(head) and (best is None or len(head) > best[0]):
                        best = (len(head), list(call.prompt_ids) + kept)
                        break
        if best is None:
            return None
        rest = text[best[0]:]
        return best[1] + (self._tokenize(rest) if rest else [])

    def submit(self, prompts: list[list[int]], settings: Settings, seed: int | None, session: str | None,
               endpoint: str, body: dict[str, Any], texts: list[str | None] | None = None) -> list[asyncio.Future]:
        """Queue every prompt; each finished one is recorded under ``session`` (from the engine thread,
        so a call is recorded even when its client has gone). ``texts``: the text each prompt's ids stand for.
        Without a seed, a prompt of a session opened with one gets the session's next seed."""
        if seed is not None:
            seeds: list[int | None] = list(prompt_seeds(seed, len(prompts)))
        else:
            seeds = [self.records.next_seed(session) for _ in prompts]
        waits = []
        for ids, prompt_seed, text in zip(prompts, seeds, texts or [None] * len(prompts)):
            future, used_seed = self.batcher.submit(ids, settings, prompt_seed, session)
            if session is not None:
                future.add_done_callback(self._recorder(session, endpoint, ids, used_seed, body, text))
            waits.append(asyncio.wrap_future(future))
        return waits

    def _recorder(self, session: str, endpoint: str, ids: list[int], seed: int, body: dict[str, Any],
                  text: str | None):
        def record(future) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            samples = [Sample(c.token_ids, c.logprobs, c.finish_reason, c.text) for c in future.result()]
            self.records.add(Call(session, endpoint, ids, samples, seed, body, prompt_text=text))
        return record


def _session(request: Request) -> str | None:
    return request.path_params.get("session") or request.headers.get(SESSION_HEADER)


def _open_session(backend: Backend, session: str | None) -> str | None:
    """``session`` checked: a valid id, and not closed."""
    if session is not None and not 0 < len(session) <= MAX_SESSION_CHARS:
        raise P.ApiError(400, f"a session id must have 1 to {MAX_SESSION_CHARS} characters")
    try:
        backend.records.check_open(session)
    except SessionClosed:
        raise P.ApiError(409, f"session {session!r} is closed: its sample is over (the agent overran its deadline, "
                         "or called the model after it returned)", kind="invalid_request_error") from None
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


async def _reply(req, waits: list[asyncio.Future], rid: str, objects: tuple[str, str], choices, usage,
                 parts) -> Response:
    """A sampling endpoint's answer once ``waits`` are sampled: one JSON body (``objects[0]``) of
    ``choices(results)`` and ``usage(results)``, or with ``stream: true`` the chunks (``objects[1]``) of
    ``parts(choice)`` for each choice, then the usage when ``stream_options.include_usage`` asks for it."""
    if req.stream:
        def chunks(results):
            for choice in choices(results):
                for part in parts(choice):
                    yield P.envelope(objects[1], rid, req.model, [part], None)
            if (req.stream_options or {}).get("include_usage"):
                yield P.envelope(objects[1], rid, req.model, [], usage(results))
        return _stream(waits, chunks)
    results = await _results(waits)
    # a JSONResponse as it is: FastAPI would otherwise walk the body through jsonable_encoder, a
    # per-request cost (on the GIL the engine and the agents share) for a body of plain JSON types
    return JSONResponse(P.envelope(objects[0], rid, req.model, choices(results), usage(results)))


async def completions(backend: Backend, session: str | None, raw: bytes) -> Response:
    """``/v1/completions`` (``session``: the checked session id of the request, if any; ``raw``: its body)."""
    req = P.parse_request(P.CompletionRequest, raw)
    _check_model(backend, req.model)
    P.check_neutral(req)
    prompts, texts = _completion_prompts(backend, req, session)
    settings = P.settings(req, [len(p) for p in prompts], backend.limits, default_max_tokens=16,
                          default_temperature=backend.records.temperature(session))
    waits = backend.submit(prompts, settings, req.seed, session, "completions", req.model_dump(exclude_none=True),
                           texts)
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

    return await _reply(req, waits, rid, ("text_completion", "text_completion"), choices, usage, lambda c: [c])


async def chat_completions(backend: Backend, session: str | None, raw: bytes) -> Response:
    """``/v1/chat/completions`` (as ``completions``)."""
    req = P.parse_request(P.ChatRequest, raw)
    _check_model(backend, req.model)
    P.check_neutral(req)
    text = P.render_chat(backend.tokenizer, req)
    ids = P.check_ids(backend.encode(text, session), backend.limits, "messages")
    settings = P.settings(req, [len(ids)], backend.limits, default_max_tokens=None,
                          default_temperature=backend.records.temperature(session))
    waits = backend.submit([ids], settings, req.seed, session, "chat.completions",
                           req.model_dump(exclude_none=True), [text])
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

    def parts(choice: dict[str, Any]) -> list[dict[str, Any]]:
        """A choice as stream chunks: its message as one delta, then its finish reason."""
        delta = dict(choice["message"])
        if "tool_calls" in delta:
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(delta["tool_calls"])]
        return [{"index": choice["index"], "delta": delta, "logprobs": choice["logprobs"], "finish_reason": None},
                {"index": choice["index"], "delta": {}, "logprobs": None, "finish_reason": choice["finish_reason"]}]

    return await _reply(req, waits, rid, ("chat.completion", "chat.completion.chunk"), choices, usage, parts)


HANDLERS = {"completions": completions, "chat/completions": chat_completions}


def build_app(backend: Backend, api_key: str) -> BearerAuth:
    """The ASGI application: the FastAPI routes, behind the direct way to the sampling endpoints
    (``SamplingRoutes``), inside the bearer-token check."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(P.ApiError)
    async def api_error(request: Request, exc: P.ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(P.ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        return _internal_error(exc)

    async def models(request: Request) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": backend.model_name, "object": "model", "created": 0,
                                            "owned_by": "rlvr"}]}

    def route(handler):
        async def endpoint(request: Request) -> Response:
            return await handler(backend, _open_session(backend, _session(request)), await request.body())
        return endpoint

    for prefix in ("/v1", "/s/{session}/v1"):
        app.add_api_route(f"{prefix}/models", models, methods=["GET"])
        for path, handler in HANDLERS.items():
            app.add_api_route(f"{prefix}/{path}", route(handler), methods=["POST"])
    return BearerAuth(SamplingRoutes(app, backend), api_key)


# a POST to one of these paths is served by SamplingRoutes; FastAPI's route for it is the same handler
_SAMPLING_PATH = re.compile(r"^(?:/s/([^/]+))?/v1/(completions|chat/completions)$")


class SamplingRoutes:
    """ASGI middleware: a POST to a sampling endpoint (``/v1/completions``, ``/v1/chat/completions``, with or
    without ``/s/<session>``) goes straight to its handler, the one FastAPI's route calls, with the same
    answers (an ``ApiError`` its JSON body, anything else a 500); everything else goes on to FastAPI. A
    request through FastAPI's layers (its middleware stack, routing, dependency solving, ``Request``)
    costs ~0.1 ms more Python, on the GIL the engine shares, and every agent call is such a request."""

    def __init__(self, app, backend: Backend):
        self.app, self.backend = app, backend

    async def __call__(self, scope, receive, send) -> None:
        match = _SAMPLING_PATH.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if match is None:
            return await self.app(scope, receive, send)
        session, endpoint = match.groups()
        try:
            if session is None:
                session = next((v.decode("latin-1") for k, v in scope["headers"] if k == SESSION_HEADER_BYTES), None)
            session = _open_session(self.backend, session)
            raw = await _body(receive)
            if raw is None:  # the client went away before sending its body: no one to answer
                return
            response = await HANDLERS[endpoint](self.backend, session, raw)
        except P.ApiError as exc:
            response = JSONResponse(exc.body(), status_code=exc.status)
        except Exception as exc:  # noqa: BLE001 - as FastAPI's handler of anything else: a 500, the server goes on
            response = _internal_error(exc)
        await response(scope, receive, send)


async def _body(receive) -> bytes | None:
    """The request's body (None: the client disconnected first)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _internal_error(exc: Exception) -> JSONResponse:
    err = P.ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")
    return JSONResponse(err.body(), status_code=500)


def _completion_prompts(backend: Backend, req: P.CompletionRequest,
                       session: str | None) -> tuple[list[list[int]], list[str | None]]:
    """Each prompt's ids (text tokenized without special tokens, continuing the session's calls where
    it can; token ids used as given) and its text (None for ids)."""
    prompt = req.prompt
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise P.ApiError(400, "prompt: an empty list", "prompt")
    if len(prompt) > backend.limits.max_prompts:
        raise P.ApiError(400, f"prompt: {len(prompt)} prompts is over this server's limit of "
                         f"{backend.limits.max_prompts} per request", "prompt")
    ids = [P.check_ids(backend.encode(p, session) if isinstance(p, str) else list(p), backend.limits) for p in prompt]
    return ids, [p if isinstance(p, str) else None for p in prompt]


