"""A killable, time-bounded pool of worker processes for verifier checks.

Why not ``concurrent.futures.ProcessPoolExecutor`` or ``signal.alarm``: an alarm only works in
the main thread and cannot interrupt a long C call (a big-integer power inside sympy), and an
executor cannot kill one stuck task without breaking the whole pool. Here every worker is a
process of its own that the parent kills (SIGKILL) the moment a check passes its deadline; a
replacement is started in the background, so the caller gets its answer within
``timeout`` plus a few milliseconds, from any thread, and the pool keeps serving.

Each worker is a fresh interpreter (``python -m verifiers.pool``, like multiprocessing's
``spawn``), never a ``fork`` of the caller: a trainer may hold torch threads and locks that a
forked child would inherit, and a worker must not inherit the trainer's memory. Unlike
multiprocessing's spawn/forkserver it does not re-run the caller's ``__main__``, so a plain
script without a main guard can use it. Modules named in ``preload`` are imported (and warmed
up) before a worker reports ready, so start-up time never counts against a check's timeout.
Each worker runs in its own session with an address-space limit (``memory_mb``); killing it
kills its process group.

Checks are named as ``"module:function"`` strings and their arguments and results must be
picklable plain data. The worker never unpickles anything but the parent's requests.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from verifiers.base import Score

DEFAULT_TIMEOUT = 5.0
DEFAULT_MEMORY_MB = 4096
_STARTUP_TIMEOUT = 120.0


class CheckTimeout(TimeoutError):
    """The check ran past its deadline; its worker was killed."""


class WorkerDied(RuntimeError):
    """The worker process exited during a check (segfault, out of memory, os._exit)."""


class CheckFailed(RuntimeError):
    """The check function raised inside the worker; ``remote_type`` names the exception."""

    def __init__(self, remote_type: str, message: str, remote_traceback: str = ""):
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback


def _resolve(target: str) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _worker_main(conn: Any, preload: Sequence[str], memory_mb: int | None) -> None:
    """Worker loop: import ``preload``, say ready, then answer requests until told to stop."""
    # Anything a check prints must not reach the parent's terminal as noise.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    if memory_mb:
        try:
            import resource

            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass  # not every platform lets us cap memory; the timeout still applies
    for module in preload:
        importlib.import_module(module)
    conn.send(("ready", os.getpid()))
    cache: dict[str, Callable[..., Any]] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        target, args = msg
        try:
            fn = cache.get(target) or cache.setdefault(target, _resolve(target))
            reply = ("ok", fn(*args))
        except MemoryError:
            conn.send(("error", ("MemoryError", "check ran out of memory", "")))
            os._exit(3)  # the heap may be in a bad state; let the parent replace us
        except BaseException as exc:  # reported to the parent, never swallowed
            reply = ("error", (type(exc).__name__, str(exc)[:2000], traceback.format_exc(limit=8)[-4000:]))
        try:
            conn.send(reply)
        except Exception as exc:  # an unpicklable result is the check's bug, not ours
            conn.send(("error", (type(exc).__name__, f"could not send result: {exc}", "")))


def _child_path() -> str:
    """The parent's import path, so a worker imports the same modules (and plugins)."""
    return os.pathsep.join(os.path.abspath(p) if p else os.getcwd() for p in sys.path)


class _Worker:
    """One worker: a fresh interpreter (``python -m verifiers.pool``), talking over a socket.

    A fresh interpreter rather than ``multiprocessing``'s spawn/forkserver: those re-run the
    caller's ``__main__`` in every child, which breaks any script without a main guard.
    """

    def __init__(self, preload: Sequence[str], memory_mb: int | None):
        parent, child = mp.Pipe(duplex=True)
        env = dict(os.environ, PYTHONPATH=_child_path())
        cmd = [sys.executable, "-m", "verifiers.pool", str(child.fileno()), ",".join(preload), str(memory_mb or 0)]
        self.proc = subprocess.Popen(
            cmd, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        child.close()
        self.conn = parent

    def wait_ready(self, timeout: float) -> None:
        if not self.conn.poll(timeout):
            self.kill()
            raise RuntimeError(f"verifier worker did not start within {timeout:.0f}s")
        try:
            tag, _ = self.conn.recv()
        except (EOFError, OSError) as exc:
            self.kill()
            raise RuntimeError(f"verifier worker died while starting (exit code {self.proc.poll()})") from exc
        if tag != "ready":
            self.kill()
            raise RuntimeError(f"verifier worker sent {tag!r} instead of ready")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and anything it started
        except (ProcessLookupError, PermissionError):
            pass
        self.conn.close()

    def reap(self) -> None:
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        try:
            self.conn.send(None)
            self.proc.wait(timeout=1)
        except Exception:
            pass
        if self.proc.poll() is None:
            self.kill()
            self.reap()
        self.conn.close()


class WorkerPool:
    """``size`` worker processes; ``call(target, *args, timeout=...)`` runs one check.

    Thread-safe: each call borrows one idle worker (waiting if all are busy), so up to
    ``size`` checks run at once. A check that passes its timeout raises `CheckTimeout`
    (its worker is killed and replaced); a worker that dies raises `WorkerDied`; an
    exception inside the check raises `CheckFailed`. `score` turns those into a `Score`
    with ``error`` set.
    """

    def __init__(
        self,
        size: int = 2,
        timeout: float = DEFAULT_TIMEOUT,
        preload: Sequence[str] = (),
        memory_mb: int | None = DEFAULT_MEMORY_MB,
    ):
        if size < 1:
            raise ValueError(f"WorkerPool size must be >= 1, got {size}")
        self.timeout = float(timeout)
        self.preload = tuple(preload)
        self.memory_mb = memory_mb
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._size = 0
        self._closed = False
        self._starting_error: BaseException | None = None
        self.replaced = 0  # workers killed and replaced so far (timeouts and deaths)
        self.grow(size)

    @property
    def size(self) -> int:
        return self._size

    def grow(self, size: int) -> None:
        """Make sure at least ``size`` workers exist (starts the missing ones, in parallel)."""
        with self._lock:
            missing = size - self._size
            self._size = max(self._size, size)
        if missing <= 0:
            return
        workers = [_Worker(self.preload, self.memory_mb) for _ in range(missing)]
        for w in workers:
            w.wait_ready(_STARTUP_TIMEOUT)
            self._idle.put(w)

    def _replace(self, dead: _Worker) -> None:
        """Start a fresh worker in the background so the caller is not delayed."""
        self.replaced += 1

        def start() -> None:
            dead.reap()
            if self._closed:
                return
            try:
                w = _Worker(self.preload, self.memory_mb)
                w.wait_ready(_STARTUP_TIMEOUT)
            except BaseException as exc:
                self._starting_error = exc
                return
            if self._closed:
                w.stop()
            else:
                self._idle.put(w)

        threading.Thread(target=start, name="verifier-pool-replace", daemon=True).start()

    def _borrow(self) -> _Worker:
        while True:
            if self._closed:
                raise RuntimeError("WorkerPool is closed")
            try:
                return self._idle.get(timeout=1.0)
            except queue.Empty:
                if self._starting_error is not None:
                    raise RuntimeError(f"verifier pool cannot start workers: {self._starting_error}")

    def call(self, target: str, *args: Any, timeout: float | None = None) -> Any:
        """Run ``target(*args)`` (``"module:function"``) in a worker; see class doc for errors."""
        limit = self.timeout if timeout is None else float(timeout)
        worker = self._borrow()
        try:
            worker.conn.send((target, args))
        except (OSError, EOFError, BrokenPipeError) as exc:
            worker.kill()
            self._replace(worker)
            raise WorkerDied(f"worker pipe broken before the check: {exc}") from exc
        deadline = time.monotonic() + limit
        try:
            ready = worker.conn.poll(max(0.0, deadline - time.monotonic()))
            if not ready:
                raise CheckTimeout(f"check exceeded {limit:g}s")
            tag, payload = worker.conn.recv()
        except CheckTimeout:
            worker.kill()
            self._replace(worker)
            raise
        except (EOFError, OSError) as exc:
            worker.kill()
            self._replace(worker)
            raise WorkerDied(f"worker exited during the check (exit code {worker.proc.poll()})") from exc
        if tag == "ok":
            self._idle.put(worker)
            return payload
        remote_type, message, tb = payload
        if remote_type == "MemoryError" or not worker.alive():
            worker.kill()
            self._replace(worker)
        else:
            self._idle.put(worker)
        raise CheckFailed(remote_type, message, tb)

    def score(self, target: str, *args: Any, timeout: float | None = None) -> Score:
        """Like `call` for a target that returns a `Score`; failures become ``Score.error``."""
        try:
            return self.call(target, *args, timeout=timeout)
        except CheckTimeout:
            return Score(0.0, None, {}, "timeout")
        except WorkerDied as exc:
            return Score(0.0, None, {}, f"worker died: {exc}")
        except CheckFailed as exc:
            if exc.remote_type == "MemoryError":
                return Score(0.0, None, {}, "memory")
            return Score(0.0, None, {}, f"crash: {exc}")

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().stop()
            except queue.Empty:
                break

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; workers are daemons and die with us anyway
        try:
            self.close()
        except Exception:
            pass


if __name__ == "__main__":  # python -m verifiers.pool FD PRELOAD MEMORY_MB (started by _Worker)
    from multiprocessing.connection import Connection

    _fd, _preload, _memory = sys.argv[1], sys.argv[2], int(sys.argv[3])
    _worker_main(Connection(int(_fd)), [m for m in _preload.split(",") if m], _memory or None)
