"""A killable, time-bounded pool of worker processes for verifier checks.

Why not ``concurrent.futures.ProcessPoolExecutor`` or ``signal.alarm``: an alarm only works in
the main thread and cannot interrupt a long C call (a big-integer power inside sympy), and an
executor cannot kill one stuck task without breaking the whole pool. Here every worker is a
process of its own that the parent kills (SIGKILL) the moment a check passes its deadline; a
replacement is started in the background, so the caller gets its answer within
``timeout`` plus a few milliseconds, from any thread, and the pool keeps serving.

Workers are never forked from the caller: a trainer may hold torch threads and locks that a
forked child would inherit, and a worker must not inherit the trainer's memory. Instead the
pool starts one *zygote*, a fresh interpreter (``python -m verifiers.pool``) that imports the
``preload`` modules (sympy, the parser) once, warms them up, and then forks a worker whenever
the pool asks, so a killed worker is replaced in milliseconds, not in the second it takes to
import sympy. This is multiprocessing's forkserver idea, done by hand because multiprocessing's
spawn/forkserver re-run the caller's ``__main__`` in each child, which breaks any script
without a main guard. Each worker runs in its own session under an address-space limit
(``memory_mb``); killing it kills its process group.

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
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

from verifiers.base import InfraError, Score

DEFAULT_TIMEOUT = 5.0
DEFAULT_MEMORY_MB = 4096
_STARTUP_TIMEOUT = 120.0


class CheckTimeout(TimeoutError):
    """The check ran past its deadline; its worker was killed."""


class WorkerDied(InfraError):
    """The worker process exited during a check (segfault, out of memory, os._exit)."""


class PoolUnavailable(InfraError):
    """The pool could not start a worker (its zygote or a fork failed)."""


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
    """The parent's import path, so workers import the same modules (and plugins)."""
    return os.pathsep.join(os.path.abspath(p) if p else os.getcwd() for p in sys.path)


def _zygote_main(conn: Any, preload: Sequence[str], memory_mb: int | None) -> None:
    """Import ``preload`` once, then fork one worker per request (runs in its own interpreter)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    for module in preload:
        importlib.import_module(module)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped automatically
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        if msg != "spawn":
            os._exit(0)
        fd = reduction.recv_handle(conn)
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                os.setsid()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                conn.close()
                _worker_main(Connection(fd), (), memory_mb)
            finally:
                os._exit(0)
        os.close(fd)
        conn.send(pid)


class _Zygote:
    def __init__(self, preload: Sequence[str], memory_mb: int | None):
        parent, child = mp.Pipe(duplex=True)
        env = dict(os.environ, PYTHONPATH=_child_path())
        cmd = [sys.executable, "-m", "verifiers.pool", str(child.fileno()), ",".join(preload), str(memory_mb or 0)]
        self.proc = subprocess.Popen(cmd, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        child.close()
        self.conn = parent
        self.lock = threading.Lock()
        if not self.conn.poll(_STARTUP_TIMEOUT):
            self.close()
            raise PoolUnavailable(f"verifier zygote did not start within {_STARTUP_TIMEOUT:.0f}s")
        try:
            self.conn.recv()
        except (EOFError, OSError) as exc:
            code = self.proc.wait()
            raise PoolUnavailable(f"verifier zygote failed to start (exit code {code}; preload {list(preload)})") from exc

    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(self) -> _Worker:
        parent, child = mp.Pipe(duplex=True)
        with self.lock:
            self.conn.send("spawn")
            reduction.send_handle(self.conn, child.fileno(), self.proc.pid)
            pid = self.conn.recv()
        child.close()
        return _Worker(parent, pid)

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.conn.close()


class _Worker:
    """A forked worker: its pid (= its process group) and our end of its socket."""

    def __init__(self, conn: Any, pid: int):
        self.conn = conn
        self.pid = pid

    def wait_ready(self, timeout: float) -> None:
        if not self.conn.poll(timeout):
            self.kill()
            raise PoolUnavailable(f"verifier worker did not start within {timeout:.0f}s")
        try:
            tag, _ = self.conn.recv()
        except (EOFError, OSError) as exc:
            self.kill()
            raise PoolUnavailable("verifier worker died while starting") from exc
        if tag != "ready":
            self.kill()
            raise PoolUnavailable(f"verifier worker sent {tag!r} instead of ready")

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True

    def kill(self) -> None:
        for kill in (os.killpg, os.kill):  # its group (anything it started), then itself
            try:
                kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.conn.close()

    def reap(self) -> None:  # the zygote reaps its children (SIGCHLD ignored)
        pass

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except Exception:
            pass
        self.kill()


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
        self._zygote_lock = threading.Lock()
        self._zygote: _Zygote | None = None
        self._size = 0
        self._closed = False
        self._starting_error: BaseException | None = None
        self.replaced = 0  # workers killed and replaced so far (timeouts and deaths)
        self.zygote_starts = 0
        self.grow(size)

    @property
    def size(self) -> int:
        return self._size

    def idle(self) -> int:
        """Workers ready for a check right now."""
        return self._idle.qsize()

    def grow(self, size: int) -> None:
        """Make sure at least ``size`` workers exist (starts the missing ones, in parallel)."""
        with self._lock:
            missing = size - self._size
            self._size = max(self._size, size)
        if missing <= 0:
            return
        for _ in range(missing):
            self._idle.put(self._new_worker())

    def _new_worker(self) -> _Worker:
        with self._zygote_lock:
            if self._zygote is None or not self._zygote.alive():
                self._zygote = _Zygote(self.preload, self.memory_mb)
                self.zygote_starts += 1
            zygote = self._zygote
        w = zygote.spawn()
        w.wait_ready(_STARTUP_TIMEOUT)
        return w

    def _replace(self, dead: _Worker) -> None:
        """Start a fresh worker in the background so the caller is not delayed."""
        self.replaced += 1

        def start() -> None:
            dead.reap()
            if self._closed:
                return
            try:
                w = self._new_worker()
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
                    raise PoolUnavailable(f"verifier pool cannot start workers: {self._starting_error}") from None

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
            raise WorkerDied("worker exited during the check") from exc
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
        """Like `call` for a target that returns a `Score`; failures become ``Score.error``: a worker that
        died is ``infra_error``; a check that timed out, ran out of memory or raised is ``verifier_error``
        (the checker's own limit, not the policy's answer: it is retried, then kept out of training)."""
        try:
            return self.call(target, *args, timeout=timeout)
        except CheckTimeout:
            return Score(0.0, None, {}, "timeout")
        except WorkerDied as exc:
            return Score(0.0, None, {}, f"worker_died: {exc}", "infra_error")
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
        with self._zygote_lock:
            if self._zygote is not None:
                self._zygote.close()
                self._zygote = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; workers are daemons and die with us anyway
        try:
            self.close()
        except Exception:
            pass


if __name__ == "__main__":  # python -m verifiers.pool FD PRELOAD MEMORY_MB (started by _Zygote)
    _fd, _preload, _memory = sys.argv[1], sys.argv[2], int(sys.argv[3])
    _zygote_main(Connection(int(_fd)), [m for m in _preload.split(",") if m], _memory or None)
