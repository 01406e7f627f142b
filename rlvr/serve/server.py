"""The server as an object: uvicorn on a thread of this process, in front of one engine.

``Server(engine, tokenizer, model_name)`` listens on 127.0.0.1 on a free port unless told
otherwise, always behind a bearer token (the given ``api_key``, else a random one, ``.api_key``),
and answers until ``close()``. The engine is the caller's: the server samples with it from its own
thread (rlvr.serve.batcher) and never closes it.

At start, the server moves the objects alive then (the model, torch, transformers: ~450,000 here) out
of the cyclic garbage collector's reach (``gc.collect()`` then ``gc.freeze()``; ``freeze_gc=False``
leaves the collector alone). The HTTP side and the agents' clients allocate enough to trigger a full
collection every few hundred calls, and a full collection walked all of them with the GIL held: 0.5-0.7 s
on the 2-core machine of docs/results.md, during which neither the engine nor any request moves. After
the freeze it walks only what came later (0.1 s there). Objects frozen are not collected as cycles
until ``close()`` gives them back to the collector.
"""

from __future__ import annotations

import gc
import ipaddress
import secrets
import threading
import time

from rlvr.serve.app import Backend, build_app
from rlvr.serve.batcher import Batcher
from rlvr.serve.http_process import bind, uvicorn_server
from rlvr.serve.protocol import Limits
from rlvr.serve.records import SessionRecords

LOCAL_HOST = "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


HTTP_MODES = ("thread", "process")


class Server:
    """An OpenAI-compatible server of ``engine`` (see rlvr.serve). ``tokenizer``: the model's, a copy the
    HTTP side owns (not the engine's object); ``port=0``: a free port; ``limits``: what a request may
    ask; ``max_batch`` / ``window_s`` / ``max_wait_s``: how the engine thread batches (rlvr.serve.batcher.Batcher); ``freeze_gc``: see the module doc.
    ``http``: "thread" (uvicorn on a thread of this process) or "process" (the HTTP side, the records
    and a copy of the tokenizer in a child process, rlvr.serve.http_process: its Python no longer takes
    the engine thread's GIL; ``records`` is then the child's, reached through ``.records``: open, close,
    pop, calls, sessions)."""

    def __init__(self, engine, tokenizer, model_name: str, *, api_key: str | None = None, host: str = LOCAL_HOST,
                 port: int = 0, limits: Limits | None = None, max_batch: int = 64, window_s: float = 0.05,
                 max_wait_s: float = 0.5, records: SessionRecords | None = None, startup_timeout_s: float = 30.0,
                 freeze_gc: bool = True, http: str = "thread"):
        if api_key is not None and not api_key:
            raise ValueError("api_key: an empty token would let anyone in; leave it out to generate one")
        if http not in HTTP_MODES:
            raise ValueError(f"http: {http!r}; choose one of {', '.join(HTTP_MODES)}")
        if http == "process" and records is not None:
            raise ValueError("records: with http='process' the HTTP process keeps the records (use .records)")
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.model_name, self.host, self.http = model_name, host, http
        self._froze_gc = False
        self._child = None
        # waiting_on: the sessions a trainer opened, from the records (the child's with http="process")
        self.batcher = Batcher(engine, max_batch=max_batch, window_s=window_s, max_wait_s=max_wait_s)
        if http == "process":
            from rlvr.serve.http_process import HttpProcess

            try:
                self._child = HttpProcess(self.batcher, tokenizer, model_name, self.api_key, host, port,
                                          limits or Limits(), freeze_gc, startup_timeout_s)
            except BaseException:
                self.batcher.close()
                raise
            self.records = self._child.records
            self.batcher.waiting_on = self.records.open_sessions
            self.port = self._child.port
            return
        self.records = records if records is not None else SessionRecords()
        self.batcher.waiting_on = self.records.open_sessions
        backend = Backend(model_name, tokenizer, self.batcher, self.records, limits or Limits())
        try:
            sock = bind(host, port)
        except OSError:
            self.batcher.close()
            raise
        self.port = sock.getsockname()[1]
        self._uvicorn = uvicorn_server(build_app(backend, self.api_key))
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [sock]},
                                        name="rlvr-serve-http", daemon=True)
        self._sock = sock
        self._thread.start()
        deadline = time.monotonic() + startup_timeout_s
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the HTTP server did not start on {host}:{self.port}")
            time.sleep(0.01)
        if freeze_gc:
            gc.collect()
            gc.freeze()
            self._froze_gc = True

    @property
    def root_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an ``openai`` client takes as ``base_url`` (calls not recorded)."""
        return f"{self.root_url}/v1"

    def session_url(self, session: str) -> str:
        """A ``base_url`` whose calls are recorded under ``session`` (``self.records``)."""
        return f"{self.root_url}/s/{session}/v1"

    def close(self) -> None:
        """Stop answering (requests in flight get up to 5 s), then stop the engine thread."""
        if self._child is not None:
            self._child.close()
            self.batcher.close()
            return
        self._uvicorn.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()
        self.batcher.close()
        if self._froze_gc:  # back in the collector's reach (at exit, extensions check their objects were freed)
            gc.unfreeze()
            self._froze_gc = False

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
