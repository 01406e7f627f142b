"""What runs inside the candidate process: sandbox entry, the audit-hook guard, and the two
ways of running a program (serving calls to its functions, or running it as a script).

Everything here is trusted code that runs *before* the candidate's code in the same
process; after that point nothing this process says is trusted by the grader. Its only
outputs are plain-value replies (function mode) or raw stdout (stdin/stdout mode), both
judged in another process that the candidate cannot reach.

Stdlib-only: imported by the fork server as a top-level module.
"""

from __future__ import annotations

import builtins
import fcntl
import io
import os
import resource
import select
import signal
import sys
import time

import _wire

SYNTAX_EXIT = 121  # exit codes the harness uses in stdin/stdout mode
MEMORY_EXIT = 122
SETUP_FAILED_EXIT = 120
READY = b"R"

STATUS_FD, RPC_IN_FD, RPC_OUT_FD = 3, 4, 5

# Audit events that a solution to a programming puzzle has no business raising.
_BLOCKED_EVENTS = frozenset(
    {
        "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system",
        "os.startfile", "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg",
        "signal.pthread_kill", "os.chdir", "os.chroot", "resource.setrlimit", "resource.prlimit",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.remote_exec",
        "os.symlink", "os.link", "os.chown", "os.chflags", "os.lchflags", "os.mknod", "os.mkfifo",
        "socket.sethostname", "mmap.__new__", "winreg", "webbrowser.open",
    }
)
_BLOCKED_PREFIXES = ("socket.", "ctypes.", "_ctypes.", "cffi.", "urllib.", "ftplib.", "http.", "smtplib.")
_BLOCKED_IMPORTS = frozenset(
    {"ctypes", "_ctypes", "_posixsubprocess", "subprocess", "multiprocessing", "_multiprocessing",
     "cffi", "_cffi_backend", "pty", "mmap", "faulthandler", "_xxsubinterpreters"}
)
_PATH_EVENTS = frozenset({"os.remove", "os.rmdir", "os.rename", "os.truncate", "os.chmod", "os.utime",
                          "os.mkdir", "shutil.rmtree", "shutil.copyfile", "shutil.move"})


def enter_sandbox(job: dict, fd_map: dict[int, int]) -> None:
    """Called in the freshly forked candidate child, before any candidate code: own
    session, only the fds in ``fd_map``, chroot, working directory, uid, clean environment.

    fd_map: {fd number the child should have: fd it currently has}. Everything else is closed.
    """
    os.setsid()  # own session and process group; a group leader cannot setsid() again
    high = {target: fcntl.fcntl(src, fcntl.F_DUPFD, 256) for target, src in fd_map.items()}
    for target, src in high.items():
        os.dup2(src, target, inheritable=False)
    os.closerange(max(fd_map) + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    if job.get("chroot"):
        os.chroot(job["chroot"])
    os.chdir(job["workdir"])
    uid = job.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    os.umask(0o077)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": job["workdir"], "LANG": "C.UTF-8",
                       "TMPDIR": job["workdir"], "PYTHONIOENCODING": "utf-8"})
    sys.argv[:] = ["solution.py"]
    sys.path[:] = [p for p in sys.path if "site-packages" not in p and "dist-packages" not in p]


def apply_limits(limits: dict) -> None:
    """rlimits of a candidate process (lowering limits needs no privilege).

    RLIMIT_NPROC counts every process *and thread* of the real uid: at 1 (the default for
    function tests) the candidate can start neither, so killing it is a complete cleanup."""
    cpu = int(limits["cpu_s"])
    mem = int(limits["memory_mb"]) << 20
    fsize = int(limits["file_mb"]) << 20
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["nofile"], limits["nofile"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["nproc"], limits["nproc"]))


def install_guard(workdir: str) -> None:
    """Defence in depth: refuse process creation, signals, sockets, ctypes, gc walks and
    writes outside ``workdir``. The OS layer (uid, chroot, netns, rlimits) is the real
    boundary where available; this hook is what remains where it is not."""
    root = os.path.realpath(workdir).rstrip("/") + "/"
    realpath = os.path.realpath

    def inside(path, _root=root, _realpath=realpath):
        if type(path) is bytes:
            path = path.decode("utf-8", "surrogateescape")
        if type(path) is int:
            return True  # an already-open fd
        if type(path) is not str:
            return False  # never run candidate code (__fspath__) inside the hook
        full = _realpath(path)
        return full == _root[:-1] or full.startswith(_root)

    def hook(event, args, _blocked=_BLOCKED_EVENTS, _prefixes=_BLOCKED_PREFIXES,
             _imports=_BLOCKED_IMPORTS, _paths=_PATH_EVENTS, _inside=inside, _err=PermissionError):
        if event in _blocked or event.startswith(_prefixes):
            raise _err(f"sandbox: {event} is not allowed")
        if event == "import":
            if args and type(args[0]) is str and args[0].partition(".")[0] in _imports:
                raise _err(f"sandbox: importing {args[0]} is not allowed")
        elif event == "open":
            path, mode, flags = (list(args) + [None, None, None])[:3]
            writing = (type(mode) is str and any(c in mode for c in "wax+")) or (
                type(flags) is int and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
            if type(path) is str and path.startswith("/proc/") and not path.startswith("/proc/self/"):
                raise _err("sandbox: /proc of other processes is not readable")
            if writing and not _inside(path):
                raise _err("sandbox: writing outside the working directory is not allowed")
        elif event in _paths:
            if not all(_inside(a) for a in args[:2] if type(a) in (str, bytes)):
                raise _err(f"sandbox: {event} outside the working directory is not allowed")
        elif event == "object.__setattr__" and args and args[0] is hook:
            raise _err("sandbox: the guard is read-only")

    sys.addaudithook(hook)


def _signal_ready() -> None:
    os.write(STATUS_FD, READY)
    os.close(STATUS_FD)


def _describe(exc: BaseException) -> tuple[str, str]:
    try:
        name = type(exc).__name__
        name = name if type(name) is str else "Exception"
    except BaseException:
        name = "Exception"
    try:
        msg = str(exc)[:300]
        msg = msg if type(msg) is str else ""
    except BaseException:
        msg = ""
    return name, msg


def candidate_main(setup: dict) -> int:
    """The pre-forked candidate process: sandboxed before any sample exists, it gets its
    job (program, limits) as the first message and returns its exit code."""
    _signal_ready()
    job = _wire.recv(RPC_IN_FD)
    if job.get("mode") == "io":
        io_launcher(setup, job)
    else:
        function_main(setup, job)
    return 0


def function_main(setup: dict, job: dict) -> None:
    """Serve calls to the program's functions over the RPC pipes, plain values only."""
    send, recv, encode, decode = _wire.send, _wire.recv, _wire.encode, _wire.decode
    apply_limits(job["limits"])
    try:
        code = compile(job["program"], "solution.py", "exec")
    except MemoryError:
        send(RPC_OUT_FD, ["load_error", "MemoryError", "while compiling"])
        return
    except (SyntaxError, ValueError, OverflowError, RecursionError) as exc:
        send(RPC_OUT_FD, ["syntax_error", "%s: %s" % _describe(exc)])
        return
    if job.get("guard", True):
        install_guard(setup["workdir"])
    ns = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(code, ns)
    except BaseException as exc:
        send(RPC_OUT_FD, ["load_error", *_describe(exc)])
        return
    def call(name, args, kwargs):
        try:
            fn = ns.get(name) if type(ns) is dict else None
            args = [decode(a) for a in args]
            kwargs = {k: decode(v) for k, v in kwargs}
        except BaseException as exc:
            return ["exc", *_describe(exc)]
        if not callable(fn):
            return ["exc", "NameError", f"name {name!r} is not defined by the program"]
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            return ["exc", *_describe(exc)]
        try:
            return ["ok", encode(result)]
        except BaseException as exc:
            return ["bad_return", "%s: %s" % _describe(exc)]

    # calls whose arguments are literals in the test, answered with the "ready" message
    reply = ["ready", [call(*c) for c in job.get("batch") or ()]]
    while True:
        try:
            send(RPC_OUT_FD, reply)
        except _wire.WireError:
            send(RPC_OUT_FD, ["bad_return", "reply too large"])
        msg = recv(RPC_IN_FD)
        reply = call(*msg[1:])


def io_launcher(setup: dict, job: dict) -> None:
    """stdin/stdout tests: run one fresh child per case and report what it printed.

    This process runs no candidate code itself; it holds the program and the inputs, never
    the expected outputs, and the grader trusts nothing it says beyond "this was printed"."""
    while True:
        msg = _wire.recv(RPC_IN_FD)
        if msg.get("stop"):
            return
        _wire.send(RPC_OUT_FD, run_case(setup, job, msg["input"]))


def _kill_case(setup: dict, pid: int) -> None:
    try:
        if setup.get("uid") is not None:
            os.kill(-1, signal.SIGKILL)  # as the sample's uid: all its processes but this one
        else:
            os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def run_case(setup: dict, job: dict, stdin_text: str) -> dict:
    limits = job["limits"]
    stdin = os.memfd_create("stdin")
    _wire.write_all(stdin, stdin_text.encode("utf-8", "surrogateescape"))
    os.lseek(stdin, 0, os.SEEK_SET)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        exit_now = os._exit  # bound before candidate code can patch os
        code = 1
        try:
            # own process group (killed as one), but C's session: a session of its own
            # would also be a scheduler autogroup of its own, out of reach of demotion
            os.setpgid(0, 0)
            for target, src in ((0, stdin), (1, out_w), (2, err_w)):
                os.dup2(src, target)
            os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            code = io_main(job)
        except BaseException:
            pass
        while True:
            exit_now(code)
    for fd in (stdin, out_w, err_w):
        os.close(fd)
    out, err, cap = bytearray(), bytearray(), int(limits["max_output_bytes"])
    timed_out = overflow = False
    reaped = None
    deadline = time.monotonic() + float(job["timeout"])
    poller = select.poll()
    open_fds = {out_r, err_r}
    for fd in open_fds:
        os.set_blocking(fd, False)
        poller.register(fd)
    child_nice = os.getpriority(os.PRIO_PROCESS, 0)
    while open_fds:
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        if nice != child_nice:  # the runner demoted this sample: the running case follows
            child_nice = nice
            try:
                os.setpriority(os.PRIO_PGRP, pid, nice)
            except OSError:
                pass
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for fd, _ev in poller.poll(max(1, int(min(left, 0.1) * 1000))):
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                poller.unregister(fd)
                open_fds.discard(fd)
            elif fd == out_r:
                out += chunk
                overflow = len(out) > cap
            else:
                err = (err + chunk)[-2000:]
        if overflow:
            break
        if reaped is None:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                reaped = status
                _kill_case(setup, pid)  # leftovers may hold the pipes open
    _kill_case(setup, pid)
    if reaped is None:
        _, reaped = os.waitpid(pid, 0)
    for fd in (out_r, err_r):
        os.close(fd)
    if os.WIFSIGNALED(reaped):
        info = {"exit": None, "signal": os.WTERMSIG(reaped)}
    else:
        info = {"exit": os.WEXITSTATUS(reaped), "signal": None}
    info.update(timed_out=timed_out, overflow=overflow,
                stdout=bytes(out[:cap]).decode("utf-8", "replace"), stderr=bytes(err).decode("utf-8", "replace"))
    return info


def io_main(job: dict) -> int:
    """Run the program as a script on stdin/stdout (in a per-case child); the exit code."""
    apply_limits(job["limits"])
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8", errors="replace")
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8", errors="replace")
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)), encoding="utf-8",
                                  errors="replace", line_buffering=True)
    try:
        code = compile(job["program"], "solution.py", "exec")
    except MemoryError:
        return MEMORY_EXIT
    except (SyntaxError, ValueError, OverflowError, RecursionError) as exc:
        print("%s: %s" % _describe(exc), file=sys.stderr)
        return SYNTAX_EXIT
    if job.get("guard", True):
        install_guard(os.getcwd())
    ns = {"__name__": "__main__", "__builtins__": builtins}
    status = 0
    try:
        exec(code, ns)
    except SystemExit as exc:
        status = exc.code if type(exc.code) is int else (0 if exc.code is None else 1)
    except MemoryError:
        status = MEMORY_EXIT
    except BaseException as exc:
        print("%s: %s" % _describe(exc), file=sys.stderr)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    return status & 0xFF
