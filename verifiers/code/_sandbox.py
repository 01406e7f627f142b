"""The per-sample processes of the fork server.

    fork server ──fork──> runner R ──fork──> candidate process C

R is forked, and forks C, *before* any sample exists, so C never holds the tests, the
expected outputs or any other sample. C enters the sandbox at once (``_candidate``: own
session, chroot, a uid of its own, scrubbed env) and waits. When R gets its one sample, it
sends C the program and judges:

* function tests: R executes the task's prompt and test code itself; the entry point in
  R's namespace is a proxy that sends plain arguments to C and gets a plain value back
  (``_wire``). Every comparison runs in R on fresh builtins. C may start no thread or
  process (RLIMIT_NPROC = 1), so killing C ends the sample.
* stdin/stdout tests: C, still running no candidate code, forks one child per case and
  reports what it printed; R compares with the expected output, which C never sees.

R kills everything the sample started and removes its directory before it sends the
verdict.

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
DEMOTED_NICE = 19  # a sample past its ``demote_after`` age (see client.ForkServer)


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

    def __init__(self, sample: Sample, name: str):
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
    """The runner's view of one sample: its directory, uid and candidate process."""

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
        self.exit_status: int | None = None
        self.cpu_s: float | None = None
        self.spawned_extra = False  # whether C may have started processes of its own
        self.dead = self.timed_out = False
        self.death: dict | None = None
        self.deadline = 0.0
        self.alarm_armed = False
        self.demoted = False
        self.cache: dict[str, list] = {}
        self.detail = ""  # first failure, for humans (never shown to the candidate)

    # -- process plumbing ---------------------------------------------------------------
    def start_candidate(self, close_in_child: tuple[int, ...]) -> None:
        """Fork C and wait until it is inside the sandbox. Runs before any sample is read."""
        r2c_r, self.r2c = os.pipe()
        self.c2r, c2r_w = os.pipe()
        st_r, st_w = os.pipe()
        setup = {"uid": self.uid, "chroot": self.cfg.get("chroot") or None, "workdir": self.inner_dir}
        pid = os.fork()
        if pid == 0:
            exit_now = os._exit  # bound before candidate code can patch os
            code = _candidate.SETUP_FAILED_EXIT
            try:
                for fd in (*close_in_child, self.r2c, self.c2r, st_r):
                    os.close(fd)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                devnull = os.open(os.devnull, os.O_RDWR)
                _candidate.enter_sandbox(setup, {0: devnull, 1: devnull, 2: devnull, _candidate.STATUS_FD: st_w,
                                                 _candidate.RPC_IN_FD: r2c_r, _candidate.RPC_OUT_FD: c2r_w})
                code = 1  # from here on, a failure is the candidate's
                code = _candidate.candidate_main(setup)
            except BaseException:
                pass
            while True:
                exit_now(code)
        self.cand_pid = pid
        for fd in (r2c_r, c2r_w, st_w):
            os.close(fd)
        try:
            ready = _wire._read_exact(st_r, 1, time.monotonic() + SETUP_S) == _candidate.READY
        except _wire.WireError:
            ready = False
        os.close(st_r)
        if not ready:
            raise RuntimeError("the candidate process could not enter the sandbox")

    def demote(self) -> None:
        """Renice everything the sample runs to 19: it keeps running until its wall-clock
        deadline, but no longer takes CPU from younger samples. The client gives its CPU
        slot back at the same age. Lowering a priority needs no privilege, and the
        candidate, without CAP_SYS_NICE, cannot raise it again."""
        if self.demoted or self.cand_pid is None or self.exit_status is not None:
            return  # once C is reaped its pid (and group id) may belong to someone else
        self.demoted = True
        targets = [(os.PRIO_PGRP, self.cand_pid)]  # C leads its own process group
        if self.uid is not None:
            targets.append((os.PRIO_USER, self.uid))  # every process of the sample's uid
        for which, who in targets:
            try:
                os.setpriority(which, who, DEMOTED_NICE)
            except OSError:
                pass
        # With scheduler autogroups (a desktop-kernel default) nice only ranks processes
        # within one session, and C leads a session of its own: renice the session's group.
        try:
            with open(f"/proc/{self.cand_pid}/autogroup", "w") as f:
                f.write(str(DEMOTED_NICE))
        except OSError:
            pass

    def _arm(self, job: dict, deadline_too: bool) -> None:
        """SIGALRM at the demotion age, then (function tests) at the deadline."""
        timeout, demote_after = float(job["timeout"]), float(job.get("demote_after") or 0.0)
        signal.signal(signal.SIGALRM, self._on_alarm)
        self.alarm_armed = deadline_too
        if 0 < demote_after < timeout:
            signal.setitimer(signal.ITIMER_REAL, demote_after)
        elif deadline_too:
            signal.setitimer(signal.ITIMER_REAL, timeout)

    def _on_alarm(self, signum, frame):
        if self.alarm_armed:
            left = self.deadline - time.monotonic()
            if left <= 0.002:
                self.timed_out = True
                raise _Gone()
            signal.setitimer(signal.ITIMER_REAL, left)  # the deadline comes next
        self.demote()

    def cleanup(self) -> None:
        """Kill everything the sample started, then remove its directory. Runs before the
        verdict is sent."""
        self.alarm_armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        if self.cand_pid is not None:
            if self.exit_status is None:  # C is our child and unreaped: its pid cannot be recycled
                try:
                    os.kill(self.cand_pid, signal.SIGKILL)
                except OSError:
                    pass
                self._wait4()
            if self.spawned_extra or self.uid is None:
                kill_sandbox(self.uid, self.cand_pid)
        shutil.rmtree(self.host_dir, onerror=_force_remove)

    def _wait4(self) -> None:
        """Reap C; keep its CPU time (its reaped children's included), so that a timeout
        can be read as spun (CPU time near the timeout) or starved (far below it)."""
        _, self.exit_status, usage = os.wait4(self.cand_pid, 0)
        self.cpu_s = round(usage.ru_utime + usage.ru_stime, 3)

    def _reap(self, timeout: float) -> int | None:
        """C's wait status, waiting up to ``timeout`` for it to exit."""
        if self.exit_status is None:
            fd = os.pidfd_open(self.cand_pid)
            try:
                if select.select([fd], [], [], timeout)[0]:
                    self._wait4()
            finally:
                os.close(fd)
        return self.exit_status

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

    @staticmethod
    def _encode_batch(calls: list) -> list:
        """The calls whose arguments are literals in the test (most HumanEval asserts),
        evaluated by the candidate right after loading, in one round trip; the test then
        finds their replies in the cache. Same values as calling one by one for any
        candidate that is a function of its arguments, and a candidate gains nothing from
        seeing the arguments early: expected values never leave this process."""
        encoded = []
        for name, args, kwargs in calls:
            try:
                encoded.append([name, [_wire.encode(a) for a in args], [[k, _wire.encode(v)] for k, v in kwargs]])
            except (TypeError, ValueError):
                continue
        return encoded

    def _store_batch(self, batch: list, replies) -> None:
        if type(replies) is not list or len(replies) != len(batch):
            self.dead = True  # protocol violation: every call will report a lost candidate
            return
        for (name, args, kwargs), answer in zip(batch, replies):
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
        try:
            return self._run_function(job)
        finally:
            self.alarm_armed = False  # first: a late alarm is then ignored
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _run_function(self, job: dict) -> dict:
        # The tests are prepared first (trusted code, no candidate involved), so that the
        # program and the literal calls travel to the candidate in a single message.
        units, ns, literal_calls = self._test_units(job)
        batch = self._encode_batch(literal_calls)
        # the candidate already waits, sandboxed, forked before this sample existed
        self.spawned_extra = int(job["limits"]["nproc"]) > 1
        self.deadline = time.monotonic() + float(job["timeout"])
        self._arm(job, deadline_too=True)
        try:
            first = self._rpc({"mode": "function", "program": job["program"], "limits": job["limits"],
                               "guard": job["guard"], "batch": batch})
        except _Gone:
            return self._verdict(self._death_status(), 0, len(units), "no answer to loading the program and its batched calls")
        if type(first) is list and len(first) == 2 and first[0] == "ready":
            self._store_batch(batch, first[1])
        elif type(first) is list and first and first[0] == "syntax_error":
            return self._verdict("syntax_error", 0, len(units), str(first[1:])[:300])
        elif type(first) is list and first and first[0] == "load_error":
            status = "memory" if first[1:2] == ["MemoryError"] else "runtime_error"
            return self._verdict(status, 0, len(units), str(first[1:])[:300])
        else:
            return self._verdict("runtime_error", 0, len(units), "protocol violation while loading")
        passed, first_bad = 0, None
        for code, unit_ns in units:
            status = self._run_unit(code, unit_ns)
            if status == "passed":
                passed += 1
            elif first_bad is None:
                first_bad = status
                if job["reward"] == "binary":
                    break
        self.alarm_armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        if self.dead or self.timed_out:  # whatever the test made of it, a lost candidate fails
            passed = min(passed, len(units) - 1)
            first_bad = first_bad or ("timeout" if self.timed_out else self._death_status())
        return self._verdict(first_bad or "passed", passed, len(units), self.detail)

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
        prompt_code = None
        if prompt.strip():  # a signature without a body gets one; prose does not compile
            for text in (prompt, prompt.rstrip() + "\n    ...\n"):
                try:
                    prompt_code = compile(text, "<prompt>", "exec")
                    break
                except (SyntaxError, ValueError):
                    pass
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
        status = self._reap(1.0)
        # SIGXCPU at the soft CPU limit, SIGKILL at the hard one (if SIGXCPU was ignored)
        if status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
            return "timeout"
        return "runtime_error"

    # -- stdin/stdout tests -----------------------------------------------------------------
    def run_io(self, job: dict) -> dict:
        self.spawned_extra = True  # C forks a child per case
        per_case = float(job["timeout"]) + SETUP_S
        self._arm(job, deadline_too=False)  # per-case deadlines are the launcher's
        _wire.send(self.r2c, {"mode": "io", "program": job["program"], "limits": job["limits"],
                              "timeout": job["timeout"], "guard": job["guard"]}, time.monotonic() + per_case)
        passed, first_bad, total = 0, None, len(job["inputs"])
        captured: list[dict] = []  # job["capture"]: what each case printed (a tool call's output)
        for stdin_text, expected in zip(job["inputs"], job["outputs"]):
            res: dict = {}
            try:
                _wire.send(self.r2c, {"input": stdin_text}, time.monotonic() + per_case)
                res = _wire.recv(self.c2r, time.monotonic() + per_case)
                status = _io_status(res, expected, job)
            except _wire.Deadline:
                status = "timeout"
            except (_wire.WireError, KeyError, TypeError, ValueError):
                status = "runtime_error"  # the launcher was killed or lied in a malformed way
            if status != "passed" and not self.detail:
                self.detail = f"case {passed}: {status}; stderr: {str(res.get('stderr', ''))[-300:]}" \
                    if status not in ("timeout", "runtime_error") else f"case {passed}: {status}"
            if job.get("capture"):
                captured.append({"status": status, "stdout": str(res.get("stdout", "")),
                                 "stderr": str(res.get("stderr", ""))[-2000:], "overflow": bool(res.get("overflow"))})
            if status == "passed":
                passed += 1
            elif first_bad is None:
                first_bad = status
                if job["reward"] == "binary" or status in ("timeout", "runtime_error"):
                    break
        try:
            _wire.send(self.r2c, {"stop": True}, time.monotonic() + 1.0)
        except _wire.WireError:
            pass
        verdict = self._verdict(first_bad or "passed", passed, total, self.detail)
        if job.get("capture"):
            verdict["cases"] = captured
        return verdict

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
        sample.start_candidate(close_in_child=(ctrl.fileno(), taken_w))
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
    except _BadTest as exc:  # the task's fault, not the machinery's (the client labels it verifier_error)
        verdict = {"status": "sandbox_error", "passed": 0, "total": 0, "detail": str(exc), "cause": "task"}
    except BaseException as exc:
        verdict = {"status": "sandbox_error", "passed": 0, "total": 0, "detail": f"{type(exc).__name__}: {exc}"}
    finally:
        if sample is not None:
            try:
                sample.cleanup()
            except BaseException as exc:
                verdict = {"status": "sandbox_error", "passed": 0, "total": 0, "detail": f"cleanup: {exc}"}
            if sample.cpu_s is not None and isinstance(verdict, dict):
                verdict["cpu_s"] = sample.cpu_s
    try:
        _wire.send(client_fd, verdict, time.monotonic() + 10.0)
    except _wire.WireError:
        pass
