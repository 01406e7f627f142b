"""Fork server: started from a clean interpreter (``python -I``), never from the trainer.

It imports the harness once, says hello with its capabilities, and keeps a pool of idle
runners, each of which has already forked its sandboxed candidate process.
A sample arrives as a socket passed over the control socket (SCM_RIGHTS) and is taken by
one idle runner, which tells the server to fork a replacement. The server never reads a
sample, so no sample's data ever enters its memory (or that of the processes it forks).
It exits when the control socket closes (the client process is gone).

Usage (by ``verifiers.code.client`` only): ``python -I _server.py CTRL_FD CONFIG_JSON``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gc  # noqa: E402
import json  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402

import _candidate  # noqa: E402,F401  (pre-imported: every sample starts with it loaded)
import _sandbox  # noqa: E402
import _wire  # noqa: E402


def capabilities(cfg: dict) -> dict:
    def ns(kind: str) -> str:
        try:
            return os.readlink(f"/proc/self/ns/{kind}")
        except OSError:
            return "?"

    in_userns = ns("user") != cfg["host_ns"]["user"]
    root = cfg.get("chroot") or ""
    return {
        "mode": cfg["mode"],
        "netns": ns("net") != cfg["host_ns"]["net"] and ns("net") != "?",
        "mountns": ns("mnt") != cfg["host_ns"]["mnt"] and ns("mnt") != "?",
        "userns": in_userns,
        "chroot": bool(root) and os.path.isdir(root + "/tmp"),
        # "none" is the plain fallback: even as root it keeps the caller's uid, since
        # without the chroot the stdlib may live where another uid cannot read it
        "uid_isolation": os.geteuid() == 0 and not in_userns and cfg["mode"] != "none",
        "rlimits": True,
        "audit_guard": True,
        "python": sys.version.split()[0],
    }


def main() -> None:
    ctrl = socket.socket(fileno=int(sys.argv[1]))  # SOCK_SEQPACKET: one record per sample
    cfg = json.loads(sys.argv[2])
    caps = capabilities(cfg)
    cfg["uid_isolation"] = caps["uid_isolation"]
    if not caps["chroot"]:
        cfg["chroot"] = ""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # runners are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the trainer is the trainer's
    ctrl.send(_wire.pack({"hello": caps}))
    # Everything imported so far is shared, copy-on-write, with every fork: keep the
    # collector from walking (and so copying) it in each runner and candidate.
    gc.collect()
    gc.freeze()
    taken_r, taken_w = os.pipe()

    def fork_runner() -> None:
        if os.fork() == 0:
            try:
                os.close(taken_r)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _sandbox.runner_main(ctrl, taken_w, cfg)
            finally:
                os._exit(0)

    # Idle runners wait on the control socket, each with a sandboxed candidate process
    # already forked; the kernel hands every sample to exactly one of them.
    for _ in range(max(1, int(cfg.get("pool", 2)))):
        fork_runner()
    poller = select.poll()
    poller.register(ctrl.fileno(), 0)  # POLLHUP only: the client closed its end
    poller.register(taken_r, select.POLLIN)
    while True:
        for fd, ev in poller.poll():
            if fd == ctrl.fileno() and ev & (select.POLLHUP | select.POLLERR):
                return
            if fd == taken_r:
                for _ in os.read(taken_r, 256):
                    fork_runner()


if __name__ == "__main__":
    main()
