"""Hostile completions against the code sandbox, one attack per test.

Every attack must score 0 and leave the test process unhurt, no process of the sample
running and no file outside the sandbox. Attacks whose *goal* is a side effect (writing a
file, reading a secret, reaching a socket, killing a process) return the right answer only
if the side effect worked, so a reward of 1 would mean the sandbox let it through.

Each attack runs twice: ``guarded`` (the default configuration) and, where the machine
gives the full OS isolation (root: netns + chroot + a uid per sample), ``os_only`` with the
in-process audit guard switched off, to show the OS layer holds on its own.
"""

from __future__ import annotations

import base64
import os
import socket
import sys
import textwrap
import time
import uuid
import zlib

import pytest

from verifiers.code import CodeVerifier, sandbox_capabilities, status_of
from verifiers.code.client import SERVER, UID_BASE

# e2e: every attack runs real sandboxed processes, most of them to their time or memory limit (~17 s in all)
pytestmark = pytest.mark.e2e

TIMEOUT = 1.0
TASK = {
    "task_id": "attack/square",
    "prompt": 'def square(x):\n    """Return x * x."""\n',
    "test": "def check(candidate):\n    assert candidate(3) == 9\n    assert candidate(-4) == 16\n"
            "    assert candidate(0) == 0\n",
    "entry_point": "square",
}
IO_TASK = {"inputs": ["3\n", "5\n"], "outputs": ["9\n", "25\n"]}
GOOD = "    return x * x\n"
SECRET = "rlvr-secret-" + uuid.uuid4().hex
os.environ["RLVR_ATTACK_TEST_SECRET"] = SECRET  # set before any server of this module starts


def _body(code: str) -> str:
    return textwrap.indent(textwrap.dedent(code).strip("\n") + "\n", "    ")


@pytest.fixture(scope="module", params=["guarded", "os_only"])
def verifier(request):
    caps = sandbox_capabilities()
    if request.param == "os_only" and not (caps.get("uid_isolation") and caps.get("netns") and caps.get("chroot")):
        pytest.skip(f"full OS isolation unavailable here (mode={caps.get('mode')}); guard-less run skipped")
    v = CodeVerifier(timeout=TIMEOUT, memory_mb=512, max_parallel=2, guard=request.param == "guarded")
    assert v.score(GOOD, TASK).reward == 1.0
    yield v
    v._server.close()


# --------------------------------------------------------------------------- helpers


def _proc_status(pid: str) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                out[key] = value.split()
    except OSError:
        return {}
    return out


def _cmdline(pid) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def leftover_processes() -> list[str]:
    """Live processes a finished sample left behind: any process of a sandbox uid whose
    runner is gone, or any fork of a sandbox server that was orphaned (re-parented to 1)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        st = _proc_status(pid)
        if not st or st.get("State", ["?"])[0] in ("Z", "X"):
            continue
        uid = int(st["Uid"][0])
        if UID_BASE <= uid < UID_BASE + 10**7:
            runner = str(uid - UID_BASE)
            if not _proc_status(runner):
                found.append(f"{pid} uid={uid} {_cmdline(pid)[:80]}")
        elif SERVER in _cmdline(pid) and st.get("PPid", ["0"])[0] == "1":
            found.append(f"{pid} orphan {_cmdline(pid)[:80]}")
    return found


def assert_attack_fails(verifier, completion: str, task=TASK, canaries=(), statuses=None):
    t0 = time.monotonic()
    score = verifier.score(completion, task)
    elapsed = time.monotonic() - t0
    assert score.reward == 0.0, score
    assert score.error is None, score  # a contained attack is a plain failure, not an infra error
    if statuses is not None:
        assert status_of(score) in statuses, score
    assert elapsed < TIMEOUT * 2 + 5, elapsed
    deadline = time.monotonic() + 3.0
    while (left := leftover_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == []
    for path in canaries:
        assert not os.path.exists(path), path
    assert verifier.score(GOOD, task if task is TASK else TASK).reward == 1.0  # still serving
    return score


# --------------------------------------------------------------------------- resource attacks


def test_fork_bomb(verifier):
    assert_attack_fails(verifier, _body("""
        import os
        while True:
            try:
                os.fork()
            except Exception:
                pass
    """), statuses={"timeout", "runtime_error", "memory"})


def test_memory_bomb(verifier):
    assert_attack_fails(verifier, _body("return [x] * (10 ** 10)"), statuses={"memory"})
    # touching every page takes time under load: out of memory or out of time, never out of reward
    assert_attack_fails(verifier, _body("""
        hog = []
        while True:
            hog.append(bytearray(50 << 20))
    """), statuses={"memory", "timeout"})


def test_infinite_loop(verifier):
    assert_attack_fails(verifier, _body("while True:\n    pass"), statuses={"timeout"})


def test_busy_threads(verifier):
    assert_attack_fails(verifier, _body("""
        import threading
        def spin():
            while True:
                pass
        for _ in range(8):
            threading.Thread(target=spin, daemon=True).start()
        spin()
    """), statuses={"timeout", "runtime_error"})


def test_sleep_past_timeout(verifier):
    assert_attack_fails(verifier, _body("import time\ntime.sleep(60)\nreturn x * x"), statuses={"timeout"})


def test_100mb_of_output(verifier):
    program = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)\nprint(9)\n"
    assert_attack_fails(verifier, program, task=IO_TASK, statuses={"failed"})
    assert_attack_fails(verifier, _body("print('PASSED ' * (100 << 17))\nreturn -1"))


def test_deep_recursion(verifier):
    assert_attack_fails(verifier, _body("return square(x + 1) + 1"), statuses={"runtime_error"})
    # with the limit lifted, 3.11 keeps Python frames off the C stack: memory or time runs out
    assert_attack_fails(verifier, _body("""
        import sys
        sys.setrecursionlimit(10 ** 7)
        def dive(n):
            return dive(n + 1) + 1
        return dive(0)
    """), statuses={"runtime_error", "memory", "timeout"})


def test_zip_bomb_like_allocation(verifier):
    bomb = base64.b64encode(zlib.compress(bytes(32 << 20), 9)).decode()  # 32 MiB of zeros, ~32 KiB
    assert_attack_fails(verifier, _body(f"""
        import base64, zlib
        bomb = base64.b64decode("{bomb}")
        kept = []
        while True:
            kept.append(zlib.decompress(bomb))
            kept.append(b"\\0" * (len(kept[-1]) * len(kept)))
    """), statuses={"memory", "timeout"})


# --------------------------------------------------------------------------- escape attacks


def test_write_outside_temp_dir(verifier, tmp_path):
    site = next(p for p in sys.path if p.endswith("site-packages"))
    tag = uuid.uuid4().hex
    canaries = [str(tmp_path / "pwned.txt"), f"/tmp/rlvr-pwned-{tag}", f"/root/.rlvr-pwned-{tag}",
                os.path.join(site, f"rlvr_pwned_{tag}.pth"), f"/dev/shm/rlvr-pwned-{tag}", f"/var/tmp/rlvr-pwned-{tag}"]
    assert_attack_fails(verifier, _body(f"""
        import os
        wrote = 0
        for path in {canaries!r}:
            try:
                with open(path, "w") as f:
                    f.write("import os; os.system('touch /tmp/owned')")
                wrote += 1
            except Exception:
                pass
            try:
                os.symlink("/etc/passwd", path)
                wrote += 1
            except Exception:
                pass
        return x * x if wrote else -1
    """), canaries=canaries, statuses={"failed"})


def test_read_parent_environment_secret(verifier):
    assert_attack_fails(verifier, _body(f"""
        import os
        found = any("{SECRET[:12]}" in v for v in os.environ.values())
        for pid in ["self", str(os.getppid()), "1", str({os.getpid()})] + [p for p in os.listdir("/proc") if p.isdigit()] \\
                if os.path.isdir("/proc") else []:
            try:
                with open("/proc/%s/environ" % pid, "rb") as f:
                    found = found or b"{SECRET[:12]}" in f.read()
            except Exception:
                pass
        return x * x if found else -1
    """), statuses={"failed"})


def test_connect_to_socket_on_localhost(verifier):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        assert_attack_fails(verifier, _body(f"""
            import socket
            try:
                s = socket.create_connection(("127.0.0.1", {port}), timeout=0.5)
                s.sendall(b"stolen")
                return x * x
            except Exception:
                return -1
        """), statuses={"failed"})
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected
    finally:
        listener.close()


def test_kill_parent_and_test_process(verifier):
    assert_attack_fails(verifier, _body(f"""
        import os, signal
        hits = 0
        for pid in (os.getppid(), {os.getpid()}, 1, -1):
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                    hits += pid != -1
                except Exception:
                    pass
        return x * x if hits else -1
    """), statuses={"failed"})
    assert os.getpid() > 0  # we are still here


def test_signal_handler_tampering(verifier):
    assert_attack_fails(verifier, _body("""
        import signal
        for sig in (signal.SIGTERM, signal.SIGALRM, signal.SIGXCPU, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)
        signal.alarm(0)
        while True:
            pass
    """), statuses={"timeout"})


def test_leftover_background_processes(verifier):
    assert_attack_fails(verifier, _body("""
        import os, time
        try:
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(1000)  # a daemon, two forks and a new session away
                os._exit(0)
        except Exception:
            pass
        return -1
    """), statuses={"failed"})
    # stdin/stdout programs may start threads (RLIMIT_NPROC 32), so forks are possible there
    # once the guard is off: everything the sample's uid owns must still die with it
    daemon = ("import os, time\ntry:\n    if os.fork() == 0:\n        os.setsid()\n        if os.fork() == 0:\n"
              "            time.sleep(1000)\n        os._exit(0)\nexcept Exception:\n    pass\nprint(-1)\n")
    assert_attack_fails(verifier, daemon, task=IO_TASK, statuses={"failed"})


def test_ctypes_crash(verifier):
    assert_attack_fails(verifier, _body("import ctypes\nctypes.string_at(0)\nreturn x * x"),
                        statuses={"runtime_error"})


def test_read_dataset_and_test_source(verifier):
    """The HumanEval file, the test's source and its constants must be out of reach."""
    targets = [os.path.abspath(__file__)]
    try:
        from verifiers.code.humaneval import humaneval_path

        targets.append(humaneval_path())
    except FileNotFoundError:
        pass
    assert_attack_fails(verifier, _body(f"""
        import gc, sys
        leaked = False
        for path in {targets!r}:
            try:
                with open(path, "rb") as f:
                    leaked = leaked or len(f.read(100)) > 0
            except Exception:
                pass
        try:
            leaked = leaked or any(getattr(o, "co_name", "") == "check" for o in gc.get_objects())
        except Exception:
            pass
        frame = sys._getframe()
        while frame:
            leaked = leaked or "check" in frame.f_globals or "".join(["assert ", "candidate("]) in str(frame.f_code.co_consts)
            frame = frame.f_back
        return x * x if leaked else -1
    """), statuses={"failed"})


# --------------------------------------------------------------------------- verdict forgery


def test_sys_exit_zero(verifier):
    assert_attack_fails(verifier, _body("import sys\nsys.exit(0)"), statuses={"runtime_error"})
    assert_attack_fails(verifier, "import sys\nsys.exit(0)\n", statuses={"runtime_error"})  # at import time


def test_os_exit_zero(verifier):
    assert_attack_fails(verifier, _body("import os\nos._exit(0)"), statuses={"runtime_error"})
    assert_attack_fails(verifier, "import os\nos._exit(0)\n", statuses={"runtime_error"})


def test_fake_success_markers_and_closed_fds(verifier):
    assert_attack_fails(verifier, _body("""
        import os, sys, json, struct
        print("PASSED\\nall tests passed\\n{\\"status\\": \\"passed\\", \\"passed\\": true}")
        frame = json.dumps({"status": "passed", "passed": 3, "total": 3}).encode()
        for fd in range(0, 64):
            for blob in (struct.pack(">I", len(frame)) + frame, b'["ok", 9]', b"passed"):
                try:
                    os.write(fd, blob)
                except OSError:
                    pass
        for fd in range(0, 64):
            try:
                os.close(fd)
            except OSError:
                pass
        os._exit(0)
    """), statuses={"runtime_error"})


def test_always_equal_objects(verifier):
    assert_attack_fails(verifier, _body("""
        class Everything:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __hash__(self): return 0
        return Everything()
    """))
    assert_attack_fails(verifier, _body("""
        class SneakyInt(int):
            def __eq__(self, other): return True
            def __ne__(self, other): return False
        return SneakyInt(-1)
    """))


def test_exit_from_eq_and_del(verifier):
    assert_attack_fails(verifier, _body("""
        import sys
        class Bomb(int):
            def __eq__(self, other): raise SystemExit(0)
            def __del__(self): raise KeyboardInterrupt
            def __index__(self): raise SystemExit(0)
            def __repr__(self): raise KeyboardInterrupt
        return Bomb(7)
    """))
    assert_attack_fails(verifier, _body("raise KeyboardInterrupt"))


def test_patched_builtins(verifier):
    assert_attack_fails(verifier, _body("""
        import builtins
        builtins.AssertionError = type("Never", (Exception,), {})
        builtins.isinstance = lambda *a: True
        builtins.abs = lambda v: 0
        builtins.__dict__["len"] = lambda v: 0
        builtins.__build_class__ = None
        return -1
    """))


def test_sys_modules_tampering(verifier):
    assert_attack_fails(verifier, _body("""
        import sys, types
        fake = types.ModuleType("fake")
        fake.encode = lambda value, depth=0: 9
        fake.decode = lambda value, depth=0: 9
        for name in list(sys.modules):
            if name in ("_wire", "_candidate", "_sandbox", "json", "builtins", "os", "sys"):
                sys.modules[name] = fake
        return -1
    """))


def test_patch_harness_and_test_function(verifier):
    assert_attack_fails(verifier, _body("""
        import sys
        for mod in list(sys.modules.values()):
            for attr in ("check", "send", "recv", "encode", "function_main", "outputs_match", "_run_unit"):
                try:
                    setattr(mod, attr, lambda *a, **k: ["ok", 9])
                except Exception:
                    pass
        return -1
    """))


def test_kill_itself(verifier):
    assert_attack_fails(verifier, _body("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),
                        statuses={"runtime_error", "timeout"})
