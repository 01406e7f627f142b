"""The per-sample processes of the fork server.

    fork server ──fork──> runner R ──fork──> zygote Z ──fork──> candidate C (one per run)

R is forked when a sample arrives but *before* it reads the sample, and forks Z at once,
so Z (and every C it forks) never holds the tests, the expected outputs or any other
sample. R then reads the sample, sends Z the program (and stdin inputs), and judges:

* function tests: R executes the task's prompt and test code itself, in its own process;
  the entry point in R's namespace is a proxy that sends plain arguments to C and gets
  a plain value back (``_wire``). Every comparison runs in R on fresh builtins.
* stdin/stdout tests: Z runs C once per case and hands R the captured output; R compares.

C is the only process that runs candidate code. It is confined by ``_candidate.enter_sandbox``
(own session, chroot, a uid of its own, rlimits, scrubbed env) plus the guard hook. R kills
everything the sample started (every process of its uid, and its process group), removes
its directory and only then sends the verdict.

Stdlib-only: imported by the fork server as a top-level module.
"""

from __future__ import annotations

import ast
import builtins
import os
import select
import shutil
import signal
import socket
import tempfile
import time

import _candidate
import _wire

STATUSES = ("passed", "failed", "timeout", "memory", "runtime_error", "syntax_error", "sandbox_error")
SETUP_S = 10.0  # generous bound for fork + sandbox entry under load


# --------------------------------------------------------------------------- process control


def kill_sandbox(uid: int | None, pgid: int | None) -> None:
    """SIGKILL everything the sample started. With a uid of its own, ``kill(-1)`` issued
    *as that uid* reaches every process it owns: double forks and new sessions included."""
    if uid is not None:
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                # Zombies count as signalled, so this cannot loop until ESRCH; a fork racing
                # the first round is refused by the kernel (fatal signal pending) or caught
                # by the next rounds.
                for _ in range(3):
                    os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    if pgid:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


def _exit_info(status: int) -> dict:
    if os.WIFSIGNALED(status):
        return {"exit": None, "signal": os.WTERMSIG(status)}
    return {"exit": os.WEXITSTATUS(status), "signal": None}


def _spawn(job: dict, fd_map: dict[int, int]) -> tuple[int, bool]:
    """Fork one candidate process; return (pid, whether its sandbox setup succeeded)."""
    st_r, st_w = os.pipe()
    fd_map = dict(fd_map)
    fd_map[_candidate.STATUS_FD] = st_w
    pid = os.fork()
    if pid == 0:
        exit_now = os._exit  # bound before candidate code can patch os
        code = _candidate.SETUP_FAILED_EXIT
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _candidate.enter_sandbox(job, fd_map)
            code = 1  # from here on, a failure is the candidate's
            if job["mode"] == "function":
                _candidate.function_main(job)
                code = 0
            else:
                code = _candidate.io_main(job)
        except BaseException:
            pass
        while True:
            exit_now(code)
    os.close(st_w)
    try:
        ok = _wire._read_exact(st_r, 1, time.monotonic() + SETUP_S) == _candidate.READY
    except _wire.WireError:
        ok = False
    os.close(st_r)
    return pid, ok


# --------------------------------------------------------------------------- zygote


def zygote_main(setup: dict, ctl_in: int, ctl_out: int, rpc_in: int, rpc_out: int) -> None:
    """Z: fork a function-mode candidate at once (it waits, sandboxed, for its program),
    then follow R's decision. Z runs no candidate code and never sees the tests."""
    devnull = os.open(os.devnull, os.O_RDWR)
    pid, ok = _spawn(dict(setup, mode="function"), {0: devnull, 1: devnull, 2: devnull,
                                                    _candidate.RPC_IN_FD: rpc_in, _candidate.RPC_OUT_FD: rpc_out})
    os.close(rpc_in)
    os.close(rpc_out)
    _wire.send(ctl_out, {"spawned": pid, "setup_ok": ok})
    try:
        job = _wire.recv(ctl_in)
    except _wire.WireError:
        job = {"mode": "abort"}
    try:
        if job["mode"] != "function":
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)  # function mode: R kills the candidate when done
        if job["mode"] == "function":
            _wire.send(ctl_out, _exit_info(status))
        elif job["mode"] == "io":
            job = dict(setup, **job)
            while True:
                msg = _wire.recv(ctl_in)
                if msg.get("stop"):
                    break
                _wire.send(ctl_out, _run_case(job, msg["input"], ctl_out))
    except _wire.WireError:
        pass  # R is done with us
    finally:
        final_kill(setup.get("uid"), pid)


def final_kill(uid: int | None, pgid: int) -> None:
    """Z's last act: become the sample's uid and kill everything it owns (no extra fork)."""
    if uid is None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
        return
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    for _ in range(3):
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            break


def _run_case(job: dict, stdin_text: str, ctl_out: int) -> dict:
    limits = job["limits"]
    stdin = os.memfd_create("stdin")
    _wire.write_all(stdin, stdin_text.encode("utf-8", "surrogateescape"))
    os.lseek(stdin, 0, os.SEEK_SET)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid, ok = _spawn(job, {0: stdin, 1: out_w, 2: err_w})
    for fd in (stdin, out_w, err_w):
        os.close(fd)
    _wire.send(ctl_out, {"spawned": pid, "setup_ok": ok})
    out, err, cap = bytearray(), bytearray(), int(limits["max_output_bytes"])
    timed_out = overflow = False
    reaped = None
    deadline = time.monotonic() + float(job["timeout"])
    poller = select.poll()
    open_fds = {out_r, err_r}
    for fd in open_fds:
        os.set_blocking(fd, False)
        poller.register(fd)
    while open_fds:
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
                kill_sandbox(job.get("uid"), pid)  # leftovers may hold the pipes open
    kill_sandbox(job.get("uid"), pid)
    if reaped is None:
        _, reaped = os.waitpid(pid, 0)
    for fd in (out_r, err_r):
        os.close(fd)
    info = _exit_info(reaped)
    info.update(setup_ok=ok, timed_out=timed_out, overflow=overflow,
                stdout=bytes(out[:cap]).decode("utf-8", "replace"), stderr=bytes(err).decode("utf-8", "replace"))
    return info


# --------------------------------------------------------------------------- runner / judge


class _Gone(BaseException):
    """The candidate can no longer answer (died, timed out, broke the protocol). A
    BaseException so that a test's ``except Exception`` cannot swallow it."""


class _BadTest(BaseException):
    """The task itself cannot be run (unencodable argument, broken test code)."""


class CandidateError(Exception):
    """Stands in for an exception raised by candidate code that is not a builtin one."""


class _Candidate:
    """Callable stand-in for a candidate function: plain values in, plain values out."""

    def __init__(self, sample: "Sample", name: str):
        self._sample, self._name = sample, name

    def __call__(self, *args, **kwargs):
        return self._sample.call(self._name, args, kwargs)


def _rebuild_exception(name: str, msg: str) -> BaseException:
    cls = getattr(builtins, name, None) if type(name) is str else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            exc = cls(msg)
        except Exception:
            exc = CandidateError(f"{name}: {msg}")
    else:
        exc = CandidateError(f"{name}: {msg}")
    exc._rlvr_from_candidate = name  # builtin exceptions accept attributes
    return exc


class Sample:
    """The runner's view of one sample: its directory, uid, zygote and candidate."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.uid = cfg["uid_base"] + os.getpid() if cfg.get("uid_isolation") else None
        if cfg.get("chroot"):
            self.inner_dir = f"/tmp/s{os.getpid()}"
            self.host_dir = cfg["chroot"] + self.inner_dir
            os.mkdir(self.host_dir, 0o700)
        else:
            self.host_dir = self.inner_dir = tempfile.mkdtemp(prefix="rlvr-sandbox-")
        if self.uid is not None:
            os.chown(self.host_dir, self.uid, self.uid)
        self.cand_pid: int | None = None
        self.cand_pidfd: int | None = None
        self.zpid: int | None = None
        self.r2z: int | None = None
        self.dead = self.timed_out = False
        self.death: dict | None = None
        self.deadline = 0.0
        self.alarm_armed = False
        self.cache: dict[str, list] = {}
        self.detail = ""  # first failure, for humans (never shown to the candidate)

    # -- process plumbing ---------------------------------------------------------------
    def start_zygote(self, close_in_child: tuple[int, ...]) -> None:
        """Fork Z (which forks the function-mode candidate) and wait until it is ready.
        Runs before any sample is read."""
        r2z_r, self.r2z = os.pipe()
        self.z2r, z2r_w = os.pipe()
        r2c_r, self.r2c = os.pipe()
        self.c2r, c2r_w = os.pipe()
        setup = {"uid": self.uid, "chroot": self.cfg.get("chroot") or None, "workdir": self.inner_dir}
        pid = os.fork()
        if pid == 0:
            try:
                for fd in (*close_in_child, self.r2z, self.z2r, self.r2c, self.c2r):
                    os.close(fd)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                zygote_main(setup, r2z_r, z2r_w, r2c_r, c2r_w)
            finally:
                os._exit(0)
        self.zpid = pid
        for fd in (r2z_r, z2r_w, r2c_r, c2r_w):
            os.close(fd)
        self._zygote_msg(time.monotonic() + SETUP_S, skip_spawned=False)

    def cleanup(self) -> None:
        """Kill the candidate, let Z kill everything of the sample's uid and exit, remove
        the directory. Runs before the verdict is sent."""
        signal.setitimer(signal.ITIMER_REAL, 0)
        if self.cand_pidfd is not None:  # a pidfd cannot hit a recycled pid
            try:
                signal.pidfd_send_signal(self.cand_pidfd, signal.SIGKILL)
            except OSError:
                pass
        if self.r2z is not None:
            os.close(self.r2z)  # Z sees EOF if it still waits for a decision
            self.r2z = None
        if self.zpid is not None:
            zfd = os.pidfd_open(self.zpid)
            exited = select.select([zfd], [], [], SETUP_S)[0]
            os.close(zfd)
            if not exited:  # Z is stuck: kill it and do its work from here
                os.kill(self.zpid, signal.SIGKILL)
                kill_sandbox(self.uid, self.cand_pid if self.uid is None else None)
            os.waitpid(self.zpid, 0)
            self.zpid = None
        shutil.rmtree(self.host_dir, onerror=_force_remove)

    def _zygote_msg(self, deadline: float, skip_spawned: bool = True) -> dict:
        """Next message from Z; "spawned" notices are recorded (and skipped unless asked)."""
        while True:
            msg = _wire.recv(self.z2r, deadline)
            if "spawned" in msg:
                self.cand_pid = msg["spawned"]
                if not msg["setup_ok"]:
                    raise RuntimeError("the candidate process could not enter the sandbox")
                if skip_spawned:
                    continue
            return msg

    # -- function tests --------------------------------------------------------------------
    def _rpc(self, payload):
        """One request/reply with the candidate. Inside test units the SIGALRM armed for
        the sample's deadline interrupts a blocking read; outside, poll with the deadline."""
        if self.dead or self.timed_out:
            raise _Gone()
        deadline = None if self.alarm_armed else self.deadline
        try:
            _wire.send(self.r2c, payload, deadline)
            return _wire.recv(self.c2r, deadline)
        except _wire.Deadline:
            self.timed_out = True
            raise _Gone() from None
        except _wire.WireError:
            self.dead = True
            raise _Gone() from None

    def prefetch(self, calls: list) -> None:
        """Evaluate, in one round trip, the calls whose arguments are literals in the test
        (most HumanEval asserts); the test then finds their replies here. Same values as
        calling one by one for any candidate that is a function of its arguments, and a
        candidate gains nothing from seeing the arguments early: expected values stay here."""
        encoded = []
        for name, args, kwargs in calls:
            try:
                encoded.append([name, [_wire.encode(a) for a in args], [[k, _wire.encode(v)] for k, v in kwargs]])
            except (TypeError, ValueError):
                continue
        if not encoded:
            return
        reply = self._rpc(["batch", encoded])
        if type(reply) is not list or len(reply) != 2 or reply[0] != "batch" or type(reply[1]) is not list \
                or len(reply[1]) != len(encoded):
            self.dead = True
            raise _Gone()
        for (name, args, kwargs), answer in zip(encoded, reply[1]):
            self.cache[_call_key(name, args, kwargs)] = answer

    def call(self, name: str, args: tuple, kwargs: dict):
        try:
            enc_args = [_wire.encode(a) for a in args]
            enc_kwargs = [[k, _wire.encode(v)] for k, v in kwargs.items()]
        except (TypeError, ValueError) as exc:
            raise _BadTest(f"the test passes an argument that is not a plain value: {exc}") from None
        if self.dead or self.timed_out:
            raise _Gone()
        reply = self.cache.get(_call_key(name, enc_args, enc_kwargs))
        if reply is None:
            reply = self._rpc(["call", name, enc_args, enc_kwargs])
        kind = reply[0] if type(reply) is list and reply else None
        if kind == "ok" and len(reply) == 2:
            try:
                return _wire.decode(reply[1])
            except (ValueError, TypeError, RecursionError, OverflowError):
                self.dead = True
                raise _Gone() from None
        if kind == "exc" and len(reply) == 3 and type(reply[1]) is str and type(reply[2]) is str:
            raise _rebuild_exception(reply[1], reply[2])
        if kind == "bad_return" and len(reply) == 2 and type(reply[1]) is str:
            exc = CandidateError(reply[1])
            exc._rlvr_from_candidate = "bad_return"
            raise exc
        self.dead = True
        raise _Gone()

    def run_function(self, job: dict) -> dict:
        # the candidate already waits, sandboxed; Z and it were forked before this sample
        self.cand_pidfd = os.pidfd_open(self.cand_pid)
        _wire.send(self.r2z, {"mode": "function"}, time.monotonic() + SETUP_S)
        self.deadline = time.monotonic() + float(job["timeout"])
        try:
            _wire.send(self.r2c, {"program": job["program"], "limits": job["limits"], "guard": job["guard"]},
                       self.deadline)
            first = _wire.recv(self.c2r, self.deadline)
        except _wire.Deadline:
            return self._verdict("timeout", 0, 1, "timed out while loading the program")
        except _wire.WireError:
            return self._verdict(self._death_status(), 0, 1, "the program died while loading")
        if first == ["ready"]:
            pass
        elif type(first) is list and first and first[0] == "syntax_error":
            return self._verdict("syntax_error", 0, 1, str(first[1:])[:300])
        elif type(first) is list and first and first[0] == "load_error":
            status = "memory" if first[1:2] == ["MemoryError"] else "runtime_error"
            return self._verdict(status, 0, 1, str(first[1:])[:300])
        else:
            return self._verdict("runtime_error", 0, 1, "protocol violation while loading")

        units, ns, literal_calls = self._test_units(job)
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.setitimer(signal.ITIMER_REAL, max(0.001, self.deadline - time.monotonic()))
        self.alarm_armed = True
        passed, first_bad = 0, None
        try:
            self.prefetch(literal_calls)
        except _Gone:
            pass  # every unit will now report the lost candidate
        for code, unit_ns in units:
            status = self._run_unit(code, unit_ns)
            if status == "passed":
                passed += 1
            elif first_bad is None:
                first_bad = status
                if job["reward"] == "binary":
                    break
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.alarm_armed = False
        if self.dead or self.timed_out:  # whatever the test made of it, a lost candidate fails
            passed = min(passed, len(units) - 1)
            first_bad = first_bad or ("timeout" if self.timed_out else self._death_status())
        return self._verdict(first_bad or "passed", passed, len(units), self.detail)

    def _on_alarm(self, signum, frame):
        self.timed_out = True
        raise _Gone()

    def _run_unit(self, code, ns: dict) -> str:
        try:
            exec(code, ns)
            return "passed"
        except _Gone:
            return "timeout" if self.timed_out else self._death_status()
        except _BadTest:
            raise
        except BaseException as exc:
            if not self.detail:
                self.detail = f"{type(exc).__name__}: {exc}"[:500]
            origin = getattr(exc, "_rlvr_from_candidate", None)
            if origin == "MemoryError":
                return "memory"
            if origin == "RecursionError" or (origin and origin != "bad_return"):
                return "runtime_error"
            return "failed"

    def _test_units(self, job: dict) -> tuple[list, dict, list]:
        """The task's test as a list of (code, namespace) units, plus the candidate calls
        with literal arguments found in it. Binary reward: one unit (the whole check);
        fraction: one unit per top-level statement of ``check``'s body (or of the test
        module when there is no ``check``)."""
        ns = {"__name__": "__rlvr_test__", "__builtins__": builtins}
        prompt = job.get("prompt") or ""
        try:
            prompt_code = compile(prompt, "<prompt>", "exec") if prompt.strip() else None
        except (SyntaxError, ValueError):
            prompt_code = None  # a natural-language prompt
        try:
            if prompt_code is not None:
                exec(prompt_code, ns)  # helpers the tests use (e.g. poly, encode_cyclic)
            for name in job["names"]:
                ns[name] = _Candidate(self, name)
            tree = ast.parse(job["test"], "<test>")
        except Exception as exc:
            raise _BadTest(f"the task's prompt or test does not run: {type(exc).__name__}: {exc}") from None
        entry = job.get("entry_point")
        check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
        if check is not None and entry:
            try:
                exec(compile(tree, "<test>", "exec"), ns)
            except Exception as exc:
                raise _BadTest(f"the task's test does not run: {type(exc).__name__}: {exc}") from None
            ns[entry] = _Candidate(self, entry)
            arg = check.args.args[0].arg if check.args.args else "candidate"
            calls = _literal_calls(check, {arg: entry, **{n: n for n in job["names"]}})
            if job["reward"] == "binary":
                return [(compile(f"check({entry})", "<test>", "exec"), ns)], ns, calls
            local = dict(ns)
            local[arg] = ns[entry]
            return _statement_units(check.body, local), ns, calls
        calls = _literal_calls(tree, {n: n for n in job["names"]})
        if job["reward"] == "binary":
            return [(compile(tree, "<test>", "exec"), ns)], ns, calls
        return _statement_units(tree.body, ns), ns, calls

    def _death_status(self) -> str:
        if self.timed_out:
            return "timeout"
        if self.death is None:
            try:
                self.death = self._zygote_msg(time.monotonic() + 1.0)
            except (_wire.WireError, RuntimeError):
                self.death = {}
        # SIGXCPU at the soft CPU limit, SIGKILL at the hard one (if SIGXCPU was ignored)
        if self.death.get("signal") in (signal.SIGXCPU, signal.SIGKILL):
            return "timeout"
        return "runtime_error"

    # -- stdin/stdout tests -----------------------------------------------------------------
    def run_io(self, job: dict) -> dict:
        _wire.send(self.r2z, {"mode": "io", "program": job["program"], "limits": job["limits"],
                              "timeout": job["timeout"], "guard": job["guard"]}, time.monotonic() + SETUP_S)
        passed, first_bad, total = 0, None, len(job["inputs"])
        for stdin_text, expected in zip(job["inputs"], job["outputs"]):
            _wire.send(self.r2z, {"input": stdin_text}, time.monotonic() + SETUP_S)
            res = self._zygote_msg(time.monotonic() + SETUP_S + float(job["timeout"]) + 2.0)
            if not res.get("setup_ok"):
                raise RuntimeError("the candidate process could not enter the sandbox")
            status = _io_status(res, expected, job)
            if status != "passed" and not self.detail:
                self.detail = f"case {passed}: {status}; stderr: {res['stderr'][-300:]}"
            if status == "passed":
                passed += 1
            elif first_bad is None:
                first_bad = status
                if job["reward"] == "binary":
                    break
        try:
            _wire.send(self.r2z, {"stop": True}, time.monotonic() + 1.0)
        except _wire.WireError:
            pass
        return self._verdict(first_bad or "passed", passed, total, self.detail)

    def _verdict(self, status: str, passed: int, total: int, detail: str) -> dict:
        return {"status": status, "passed": passed, "total": total, "detail": detail}


def _call_key(name: str, args: list, kwargs: list) -> str:
    return _wire.json.dumps([name, args, kwargs], separators=(",", ":"))


def _literal_calls(tree: ast.AST, names: dict[str, str]) -> list:
    """(function, args, kwargs) of calls to candidate functions whose arguments are all
    literals, in source order, without repeats."""
    seen, out = set(), []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names):
            continue
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            continue
        try:
            args = tuple(ast.literal_eval(a) for a in node.args)
            kwargs = tuple((k.arg, ast.literal_eval(k.value)) for k in node.keywords)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        key = repr((names[node.func.id], args, kwargs))
        if key not in seen:
            seen.add(key)
            out.append((names[node.func.id], args, kwargs))
    return out


def _statement_units(body: list, ns: dict) -> list:
    """One unit per statement that asserts something; other statements (setup) run with
    the following test so that a failing setup fails its tests, not the whole sample."""
    units, pending = [], []
    for stmt in body:
        pending.append(stmt)
        if any(isinstance(n, ast.Assert) for n in ast.walk(stmt)):
            units.append((compile(ast.Module(body=pending, type_ignores=[]), "<test>", "exec"), ns))
            pending = []
    if not units:  # no assert anywhere: the whole body is one test
        units.append((compile(ast.Module(body=pending, type_ignores=[]), "<test>", "exec"), ns))
    return units


def _io_status(res: dict, expected: str, job: dict) -> str:
    if res["overflow"]:
        return "failed"
    if res["timed_out"] or res["signal"] in (signal.SIGXCPU, signal.SIGKILL):
        return "timeout"
    if res["signal"] is not None:
        return "runtime_error"
    if res["exit"] == _candidate.SYNTAX_EXIT:
        return "syntax_error"
    if res["exit"] == _candidate.MEMORY_EXIT:
        return "memory"
    if res["exit"] != 0:
        return "runtime_error"
    return "passed" if outputs_match(res["stdout"], expected, job["compare"], job["float_tol"]) else "failed"


def outputs_match(got: str, expected: str, mode: str, tol: float) -> bool:
    """exact: byte-for-byte; whitespace: same whitespace-separated tokens; float: same
    tokens, where tokens that both parse as numbers may differ by ``tol`` (abs or rel)."""
    if mode == "exact":
        return got == expected
    a, b = got.split(), expected.split()
    if a == b:
        return True
    if mode != "float" or len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        try:
            fx, fy = float(x), float(y)
        except ValueError:
            return False
        if not abs(fx - fy) <= max(tol, tol * abs(fy)):
            return False
    return True


def _force_remove(func, path, exc_info) -> None:
    try:
        os.chmod(os.path.dirname(path), 0o700)
        os.chmod(path, 0o700)
        func(path)
    except OSError:
        pass


def runner_main(ctrl, taken_w: int, cfg: dict) -> None:
    """R: prepare a sandbox, *then* wait for a sample on the shared control socket."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sample, setup_error = None, None
    try:
        sample = Sample(cfg)
        sample.start_zygote(close_in_child=(ctrl.fileno(), taken_w))
    except BaseException as exc:
        setup_error = f"sandbox setup failed: {type(exc).__name__}: {exc}"
    try:
        msg, fds, _flags, _addr = socket.recv_fds(ctrl, 16, 4)
    except OSError:
        msg, fds = b"", []
    ctrl.close()
    if msg and fds:
        os.write(taken_w, b"x")  # the server forks a replacement runner
    os.close(taken_w)
    for fd in fds[1:]:
        os.close(fd)
    if not (msg and fds):  # the client went away
        if sample is not None:
            sample.cleanup()
        return
    client_fd = fds[0]
    verdict = None
    try:
        job = _wire.recv(client_fd, time.monotonic() + 60.0)
        if setup_error:
            verdict = {"status": "sandbox_error", "passed": 0, "total": 0, "detail": setup_error}
        elif job["mode"] == "function":
            verdict = sample.run_function(job)
        else:
            verdict = sample.run_io(job)
    except _BadTest as exc:
        verdict = {"status": "sandbox_error", "passed": 0, "total": 0, "detail": str(exc)}
    except BaseException as exc:
        verdict = {"status": "sandbox_error", "passed": 0, "total": 0, "detail": f"{type(exc).__name__}: {exc}"}
    finally:
        if sample is not None:
            try:
                sample.cleanup()
            except BaseException as exc:
                verdict = {"status": "sandbox_error", "passed": 0, "total": 0, "detail": f"cleanup: {exc}"}
    try:
        _wire.send(client_fd, verdict, time.monotonic() + 10.0)
    except _wire.WireError:
        pass
