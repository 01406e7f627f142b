"""Trainer-side handle on the fork server: start it isolated, send samples, get verdicts.

The server is a fresh ``python -I`` process (never a fork of the trainer, whose memory
holds datasets and other samples), started inside the strongest isolation this machine
allows, tried in order:

* ``root``:   real root: ``unshare --net --mount``; a read-only chroot holding only the
              standard library; one uid per sample. Full isolation.
* ``userns``: unprivileged: ``unshare --user --map-root-user --net --mount``; same netns
              and chroot, but the candidate keeps the (namespaced) caller's uid.
* ``none``:   plain process: rlimits, own session, scrubbed env, temp dir and the audit
              guard only. Best effort; ``sandbox_capabilities()`` says so.
"""

from __future__ import annotations

import atexit
import glob
import json
import os
import select
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import time

from verifiers.code import _wire

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_server.py")
MODES = ("root", "userns", "none")
UID_BASE = 1_500_000_000  # + runner pid: a uid nobody else uses, one per live sample
# The server's private tmpfs is mounted on a directory of its own (not over /tmp, which would
# hide a checkout or virtual environment living under /tmp, the server's own code included).
MOUNT_POINT = os.path.join("/tmp", f"rlvr-sandbox-mnt-{os.getpid()}")
CHROOT = MOUNT_POINT + "/root"  # inside that tmpfs, seen only in the server's mount namespace
_ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}


def _host_ns() -> dict:
    out = {}
    for kind in ("net", "mnt", "user"):
        try:
            out[kind] = os.readlink(f"/proc/self/ns/{kind}")
        except OSError:
            out[kind] = "?"
    return out


def _mount_script() -> str:
    """Shell run by ``unshare`` before exec'ing the server: a private tmpfs on MOUNT_POINT
    and, inside it, a read-only root holding /usr, the stdlib and a few device nodes, with every
    site-packages hidden (so no installed dataset such as HumanEval is readable)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    binds = ["/usr"]
    if not stdlib.startswith("/usr/"):
        binds.append(stdlib)
    hide = set(glob.glob(os.path.join(stdlib, "*-packages")))
    hide.update(glob.glob("/usr/lib/python3*/*-packages"), glob.glob("/usr/local/lib/python3*/*-packages"))
    hide.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and any(
        p.startswith(b + "/") for b in binds) and os.path.isdir(p))
    q = shlex.quote
    lines = [
        "set -e",
        f"mount -t tmpfs -o mode=0755,size=256m rlvr-sandbox {q(MOUNT_POINT)}",
        f"R={q(CHROOT)}",
        'mkdir -p "$R/tmp" "$R/dev" && chmod 0711 "$R/tmp"',
        'ro() { mkdir -p "$R$1"; mount --bind "$1" "$R$1"; mount -o remount,bind,ro,nosuid,nodev "$R$1"; }',
    ]
    lines += [f"ro {q(d)}" for d in binds]
    for link in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(link):
            lines.append(f'ln -s {q(os.readlink(link))} "$R"{q(link)}')
        elif os.path.isdir(link):
            lines.append(f"ro {q(link)}")
    for d in sorted(hide):
        lines.append(f'mount -t tmpfs -o ro,size=4k,mode=0755 rlvr-hidden "$R"{q(d)}')
    for dev in ("null", "zero", "urandom", "random"):
        lines.append(f'touch "$R/dev/{dev}" && mount --bind /dev/{dev} "$R/dev/{dev}"')
    lines.append('exec "$@"')
    return "\n".join(lines)


def _remove_mount_point() -> None:
    try:  # empty on the host: the tmpfs was mounted only in the server's namespace
        os.rmdir(MOUNT_POINT)
    except OSError:
        pass


def _command(mode: str, ctrl_fd: int, pool: int) -> list[str]:
    if mode != "none":
        os.makedirs(MOUNT_POINT, mode=0o700, exist_ok=True)
        atexit.register(_remove_mount_point)
    cfg = {"mode": mode, "host_ns": _host_ns(), "uid_base": UID_BASE, "chroot": CHROOT if mode != "none" else "",
           "pool": pool}
    server = [sys.executable, "-I", SERVER, str(ctrl_fd), json.dumps(cfg)]
    if mode == "none":
        return server
    unshare = shutil.which("unshare") or "unshare"
    ns = ["--net", "--mount", "--propagation", "private"]
    if mode == "userns":
        ns = ["--user", "--map-root-user", *ns]
    return [unshare, *ns, "sh", "-c", _mount_script(), "rlvr-sandbox", *server]


class SandboxUnavailable(RuntimeError):
    pass


DEMOTE_AFTER_S = 0.1  # a sample older than this stops holding a CPU slot and runs at nice 19
DEMOTED_NICE = 19
MAX_IN_FLIGHT = 64
# after a sample's connection to the sandbox broke: how long to wait for a dying fork server to exit
# (SandboxClient._settle), so that a retry starts a fresh one
SETTLE_S = 0.2


def default_in_flight(cpu_slots: int, memory_mb: int = 1024) -> int:
    """Samples in flight by default: enough that a batch's infinite loops (and sleepers)
    all wait out their timeouts *together*, bounded by what the machine's memory could hold
    if every one of them filled its address-space limit."""
    try:
        ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20
    except (ValueError, OSError):
        ram_mb = 16 << 10
    return max(2 * cpu_slots, min(MAX_IN_FLIGHT, ram_mb // max(64, memory_mb)))


class ForkServer:
    """One fork server process and the admission of samples to it.

    The per-sample timeout is wall-clock, so concurrency must neither serialise samples that
    only wait (an infinite loop among 16 gets a time slice, a ``sleep`` none at all) nor
    oversubscribe the CPU so that honest samples miss their deadline. Two gates do both:

    * ``cpu_slots`` (default: CPU count): samples younger than ``demote_after`` seconds
      (a job field; ``DEMOTE_AFTER_S`` at most). A fresh sample waits for one of these.
    * ``max_parallel`` (default: `default_in_flight`): samples in flight at all. A sample
      that outlives ``demote_after`` gives its CPU slot back and its processes are reniced
      to 19 by its runner, so it keeps running until its own deadline without slowing the
      fresh samples (CFS gives nice 19 about 1.5% of a nice-0 share).

    So a batch with 16 infinite loops costs about one timeout, not 16 / CPUs of them. The
    price: an honest sample that needs more than ``demote_after`` CPU-seconds gets only
    the CPU left over by fresh samples, and can time out under load where it would pass on
    an idle machine. For batches of heavy programs pass ``max_parallel`` = CPU count (every
    sample then keeps a full share until its deadline).
    """

    def __init__(self, isolation: str = "auto", max_parallel: int | None = None, cpu_slots: int | None = None):
        if isolation not in ("auto", *MODES):
            raise ValueError(f"isolation must be 'auto' or one of {MODES}, got {isolation!r}")
        self.isolation = isolation
        cpus = os.cpu_count() or 1
        self.cpu_slots = int(cpu_slots or (min(cpus, max_parallel) if max_parallel else cpus))
        self.max_parallel = int(max_parallel or default_in_flight(self.cpu_slots))
        if self.cpu_slots < 1 or self.max_parallel < self.cpu_slots:
            raise ValueError(f"need 1 <= cpu_slots <= max_parallel, got {self.cpu_slots} and {self.max_parallel}")
        self._slots = threading.BoundedSemaphore(self.max_parallel)
        self._cpu = threading.BoundedSemaphore(self.cpu_slots)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._ctrl: socket.socket | None = None
        self.capabilities: dict = {}
        self.attempts: dict[str, str] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def _candidates(self) -> list[str]:
        if self.isolation != "auto":
            return [self.isolation]
        return ["root", "userns", "none"] if os.geteuid() == 0 else ["userns", "none"]

    def _try_start(self, mode: str) -> bool:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(_command(mode, theirs.fileno(), self.cpu_slots + 2), pass_fds=(theirs.fileno(),), env=dict(_ENV),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    cwd="/", start_new_session=True)
        except OSError as exc:
            self.attempts[mode] = f"could not start: {exc}"
            ours.close()
            theirs.close()
            return False
        theirs.close()
        try:
            ours.settimeout(30.0)
            hello = _wire.unpack(ours.recv(1 << 20))["hello"]
            ours.settimeout(None)
        except (OSError, _wire.WireError, ValueError, KeyError, TypeError) as exc:
            proc.kill()
            err = proc.communicate()[1].decode(errors="replace").strip().splitlines()
            self.attempts[mode] = f"failed: {err[-1] if err else exc}"
            ours.close()
            return False
        # the server's stderr stays readable for diagnostics without ever blocking it
        threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
        self._proc, self._ctrl, self.capabilities = proc, ours, hello
        self.attempts[mode] = "ok"
        return True

    def start(self) -> None:
        with self._lock:
            if self._alive():
                return
            self._close_locked()
            for mode in self._candidates():
                if self._try_start(mode):
                    return
            raise SandboxUnavailable(f"no sandbox mode could start: {self.attempts}")

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _settle(self, wait_s: float = SETTLE_S) -> None:
        """After a sample lost its connection: if the fork server is dying with it (one SIGKILL for its
        whole group: the runners' sockets reset first, the server exits a moment later on a loaded
        machine), wait until it has, so that the next ``start`` (a retry's) sees it dead and starts a
        fresh one instead of sending the retry to it. A healthy server (only a runner died) costs the wait."""
        proc = self._proc
        deadline = time.monotonic() + wait_s
        while proc is not None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)

    def _close_locked(self) -> None:
        if self._ctrl is not None:
            self._ctrl.close()
            self._ctrl = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    # -- samples ---------------------------------------------------------------------------
    def run(self, job: dict, budget_s: float) -> dict:
        """Send one job; return the runner's verdict dict (status, passed, total, detail).
        Safe to call from many threads at once: the gates above decide who runs."""
        demote_after = float(job.get("demote_after") or 0.0)
        with self._slots:
            cpu = _Slot(self._cpu)
            try:
                return self._run(job, budget_s, demote_after, cpu)
            finally:
                cpu.release()

    def _run(self, job: dict, budget_s: float, demote_after: float, cpu: _Slot) -> dict:
        for attempt in range(2):
            self.start()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with self._lock:
                    socket.send_fds(self._ctrl, [b"s"], [theirs.fileno()])
            except OSError as exc:
                ours.close()
                theirs.close()
                if attempt == 0:
                    continue
                return _sandbox_error(f"fork server unreachable: {exc}")
            theirs.close()
            try:
                _wire.send(ours.fileno(), job, time.monotonic() + 30.0)
                if demote_after > 0 and not _readable(ours, demote_after):
                    cpu.release()  # the runner demotes the sample at the same age
                return _wire.recv(ours.fileno(), time.monotonic() + budget_s + 30.0)
            except _wire.WireError as exc:
                self._settle()
                return _sandbox_error(f"no verdict from the sandbox: {exc}")
            finally:
                ours.close()
        return _sandbox_error("unreachable")


def _readable(sock: socket.socket, timeout_s: float) -> bool:
    poller = select.poll()  # not select(): a trainer may hold more than FD_SETSIZE fds
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(max(1, int(timeout_s * 1000))))


class _Slot:
    """A CPU slot held by one sample, released at most once (early, at demotion)."""

    def __init__(self, sem: threading.BoundedSemaphore):
        sem.acquire()
        self._sem: threading.BoundedSemaphore | None = sem

    def release(self) -> None:
        sem, self._sem = self._sem, None
        if sem is not None:
            sem.release()


def _sandbox_error(detail: str) -> dict:
    return {"status": "sandbox_error", "passed": 0, "total": 0, "detail": detail}


def _drain(stream) -> None:
    try:
        for line in stream:
            sys.stderr.write("[rlvr sandbox] " + line.decode(errors="replace"))
    except (OSError, ValueError):
        pass


_SERVERS: dict[tuple[int, str], ForkServer] = {}
_SERVERS_LOCK = threading.Lock()


def shared_server(isolation: str = "auto") -> ForkServer:
    """One server per (process, isolation): a forked trainer worker starts its own."""
    key = (os.getpid(), isolation)
    with _SERVERS_LOCK:
        server = _SERVERS.get(key)
        if server is None:
            server = _SERVERS[key] = ForkServer(isolation)
        return server
