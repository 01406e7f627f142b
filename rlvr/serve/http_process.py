"""The HTTP side in a process of its own (``Server(..., http="process")``).

With ``http="thread"`` (the default) uvicorn, the routes, the tokenizer and the records run on a thread of
the engine's process, and every request's Python (parsing, validation, tokenizing, the reply's JSON)
takes the GIL the engine thread needs between two of its kernels: with 64 agents calling, a decode step
of the tools base took ~12 ms instead of ~8.5 ms, and that did not change with the HTTP thread on a
core of its own (docs/results.md). With ``http="process"`` all of it runs in a child process; the two
talk over one pipe:

* child -> parent: ``submit`` (a prompt's ids, its settings, its seed): the parent hands it to its
  ``Batcher``; the completions (or the exception) go back as ``done`` when the prompt's group finishes;
* parent -> child: ``open`` and ``close`` of a session, and ``ask`` for its calls (``pop``, ``calls``,
  ``sessions``; ``RemoteRecords``: the child keeps the records, since every request reads its session's
  history), and ``exit``.

The child is a fresh interpreter (``child_main(FD)``: a fork of a process with
OpenMP and engine threads is unsafe, and multiprocessing's spawn would import the caller's main
script again), given one end of a socket pair; its first message is what it serves (the tokenizer,
the model's name, the token, where to listen, the limits). It answers ``ready`` with its port once it
listens, or ``failed`` with the reason. Closing the parent's end (or the parent dying) stops it.
"""

from __future__ import annotations

import itertools
import secrets
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

STARTUP_TIMEOUT_S = 60.0
CHILD = "import sys; from rlvr.serve.http_process import child_main; child_main(int(sys.argv[1]))"
ASKED = ("pop", "calls", "sessions")  # what of the child's records the parent may ask for


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (0: a free port), not yet listening."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def uvicorn_server(app):
    """The uvicorn server both ways run (a thread's, rlvr.serve.server; the child's, here): quiet, no
    lifespan, 5 s for requests in flight at shutdown."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                         timeout_graceful_shutdown=5))


class _Pipe:
    """One end of the pipe with a lock: several threads send on it (the engine thread's callbacks, the reader,
    the caller's)."""

    def __init__(self, conn) -> None:
        self.conn, self._lock = conn, threading.Lock()

    def send(self, *msg: Any) -> None:
        with self._lock:
            self.conn.send(msg)


class RemoteRecords:
    """The parent's handle on the child's ``SessionRecords``: what a trainer needs of them (``open``,
    ``close``, ``pop``; ``calls`` and ``sessions`` to look) and, for the batcher, the sessions that may
    still call (kept here)."""

    def __init__(self, pipe: _Pipe, alive) -> None:
        self._pipe_, self._alive = pipe, alive
        self._open: set[str] = set()
        self._waiting: dict[int, list] = {}  # ask id -> [event, answer]
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def open(self, session: str, seed: int | None = None, temperature: float | None = None) -> None:
        with self._lock:
            self._open.add(session)
        self._send("open", session, seed, temperature)

    def close(self, session: str) -> None:
        with self._lock:
            self._open.discard(session)
        self._send("close", session)

    def open_sessions(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._open)

    def _send(self, *msg: Any) -> None:
        try:
            self._pipe_.send(*msg)
        except (OSError, ValueError):  # a broken or closed pipe
            raise RuntimeError(f"the server's HTTP process has stopped (records.{msg[0]} could not reach it)") from None

    def pop(self, session: str) -> list:
        """The session's calls, forgotten in the child (after every message sent before this one)."""
        return self._ask("pop", session)

    def calls(self, session: str) -> list:
        """The session's calls so far."""
        return self._ask("calls", session)

    def sessions(self) -> list[str]:
        """The sessions with calls recorded."""
        return self._ask("sessions")

    def _ask(self, method: str, *args: Any, timeout_s: float = 60.0) -> Any:
        i, event = next(self._ids), threading.Event()
        self._waiting[i] = [event, None]
        self._send("ask", i, method, args)
        deadline = time.monotonic() + timeout_s
        while not event.wait(0.1):
            if not self._alive() or time.monotonic() > deadline:
                self._waiting.pop(i, None)
                raise RuntimeError(f"the server's HTTP process did not answer records.{method}{args} "
                                   f"({'it has stopped' if not self._alive() else 'no answer in time'})")
        return self._waiting.pop(i)[1]

    def _answer(self, i: int, value: Any) -> None:
        slot = self._waiting.get(i)
        if slot is not None:
            slot[1] = value
            slot[0].set()


class HttpProcess:
    """The child process and the parent's side of the pipe: submitted prompts go to ``batcher``."""

    def __init__(self, batcher, tokenizer, model_name: str, api_key: str, host: str, port: int, limits,
                 freeze_gc: bool, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        ours, theirs = socket.socketpair()
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        mine = Connection(ours.detach())
        self.batcher, self._pipe = batcher, _Pipe(mine)
        self.records = RemoteRecords(self._pipe, self.alive)
        try:
            self._pipe.send(tokenizer, model_name, api_key, host, port, limits, freeze_gc)
        except OSError:
            pass  # the child has already gone: said below
        if not mine.poll(startup_timeout_s):
            self.close()
            raise RuntimeError(f"the HTTP process did not start on {host}:{port} within {startup_timeout_s:.0f} s")
        try:
            kind, value = mine.recv()
        except EOFError:
            self.close()
            raise RuntimeError(f"the HTTP process died while starting (exit {self.proc.poll()})") from None
        if kind != "ready":
            self.close()
            raise RuntimeError(f"the HTTP server did not start on {host}:{port}: {value}")
        self.port = value
        self._reader = threading.Thread(target=self._read, name="rlvr-serve-pipe", daemon=True)
        self._reader.start()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _read(self) -> None:
        while True:
            try:
                msg = self._pipe.conn.recv()
            except (EOFError, OSError):
                return
            if msg[0] == "submit":
                self._submit(*msg[1:])
            elif msg[0] == "answer":
                self.records._answer(*msg[1:])

    def _submit(self, i: int, ids: list[int], settings, seed: int, session: str | None) -> None:
        try:
            future, _ = self.batcher.submit(ids, settings, seed, session)
        except Exception as exc:  # noqa: BLE001 - the request answers with it
            self._done(i, exc, ok=False)
            return

        def done(f: Future) -> None:
            exc = f.exception()
            self._done(i, f.result() if exc is None else exc, ok=exc is None)

        future.add_done_callback(done)

    def _done(self, i: int, value: Any, ok: bool) -> None:
        try:
            self._pipe.send("done", i, ok, value)
        except (OSError, ValueError):  # the child has gone: no one to answer
            pass
        except Exception as exc:  # noqa: BLE001 - a value that does not pickle: its message instead
            self._pipe.send("done", i, False, RuntimeError(f"{type(value).__name__}: {value} ({exc})"))

    def close(self, timeout_s: float = 15.0) -> None:
        """Ask the child to stop (requests in flight get up to 5 s), then wait for it."""
        try:
            self._pipe.send("exit")
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._pipe.conn.close()


class _EngineLink:
    """In the child: what the routes call a batcher (``submit``), over the pipe."""

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe, self._pending = pipe, {}
        self._ids = itertools.count()

    def submit(self, prompt_ids: list[int], settings, seed: int | None = None,
               session: str | None = None) -> tuple[Future, int]:
        seed = secrets.randbelow(2**31) if seed is None else seed
        future: Future = Future()
        future.set_running_or_notify_cancel()  # as the batcher's: a client that leaves does not cancel it, and
        i = next(self._ids)  # what is sampled for it is still recorded
        self._pending[i] = future
        self._pipe.send("submit", i, list(prompt_ids), settings, seed, session)
        return future, seed

    def done(self, i: int, ok: bool, value: Any) -> None:
        future = self._pending.pop(i, None)
        if future is None:
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def fail_all(self, exc: BaseException) -> None:
        for i in list(self._pending):
            self.done(i, False, exc)


def _child(conn, tokenizer, model_name: str, api_key: str, host: str, port: int, limits, freeze_gc: bool) -> None:
    """The child's main: bind, say ``ready``, serve until ``exit`` or the parent's end closes."""
    import gc

    from rlvr.serve.app import Backend, build_app
    from rlvr.serve.records import SessionRecords

    pipe = _Pipe(conn)
    try:
        sock = bind(host, port)
        sock.listen(2048)  # connections wait in the backlog from "ready" until uvicorn accepts them
    except OSError as exc:
        pipe.send("failed", f"{type(exc).__name__}: {exc}")
        return
    records, link = SessionRecords(), _EngineLink(pipe)
    server = uvicorn_server(build_app(Backend(model_name, tokenizer, link, records, limits), api_key))

    def read() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            kind = msg[0]
            if kind == "done":
                link.done(*msg[1:])
            elif kind == "open":
                records.open(*msg[1:])
            elif kind == "close":
                records.close(msg[1])
            elif kind == "ask" and msg[2] in ASKED:
                pipe.send("answer", msg[1], getattr(records, msg[2])(*msg[3]))
            elif kind == "exit":  # stop taking requests; those in flight still get their answers (uvicorn
                server.should_exit = True  # gives them 5 s) until the parent closes its end
        link.fail_all(RuntimeError("the server is shutting down"))
        server.should_exit = True

    threading.Thread(target=read, name="rlvr-serve-pipe", daemon=True).start()
    pipe.send("ready", sock.getsockname()[1])
    if freeze_gc:  # as the thread server does (rlvr.serve.server)
        gc.collect()
        gc.freeze()
    server.run(sockets=[sock])


def child_main(fd: int) -> None:
    """The child process: ``fd`` is its end of the socket pair; the first message says what to serve."""
    conn = Connection(fd)
    try:
        args = conn.recv()
    except EOFError:  # the parent gave up before sending it
        return
    _child(conn, *args)
