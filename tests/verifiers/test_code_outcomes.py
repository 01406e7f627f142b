"""The code sandbox's outcomes: the candidate's own loops and memory blow-ups are the policy's doing
(``policy_timeout``); a sandbox whose workers die under it is not (``infra_error``), and such a sample
is scored again (``retries``) rather than trained as a 0. The workers are killed for real, mid-batch."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from verifiers import score_batch
from verifiers.code import CodeVerifier, status_of

ADD = {
    "prompt": 'def add(a, b):\n    """Return a + b."""\n',
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n",
    "entry_point": "add",
}
SLOW_RIGHT = "    import time\n    time.sleep(2.0)\n    return a + b\n"  # right, after a while: in flight when killed
RIGHT = "    return a + b\n"


@pytest.mark.e2e  # waits out a sandboxed candidate's time limit (the unit tier stays under a minute)
def test_each_status_has_its_outcome():
    v = CodeVerifier(timeout=2.0)
    cases = {"    return a + b\n": ("passed", "correct"), "    return a * b\n": ("failed", "wrong"),
             "    return a / 0\n": ("runtime_error", "wrong"), "    return a +\n": ("syntax_error", "unparsed"),
             "    while True:\n        pass\n": ("timeout", "policy_timeout"),
             "    return [0] * (10 ** 11)\n": ("memory", "policy_timeout")}
    for completion, (status, outcome) in cases.items():
        score = v.score(completion, ADD)
        assert (status_of(score), score.outcome) == (status, outcome), completion
        assert score.trainable  # the candidate's own doing: trained on as the reward it earned
    bad_task = v.score("    return a + b\n", {"prompt": "x"})  # neither tests nor cases: the task's fault
    assert status_of(bad_task) == "sandbox_error" and bad_task.outcome == "verifier_error"
    unencodable = v.score("    return f(x)\n", {"prompt": "def apply(f, x):\n", "entry_point": "apply",
                                                  "test": "def check(candidate):\n    assert candidate(lambda y: y, 1) == 1\n"})
    assert status_of(unencodable) == "sandbox_error" and unencodable.outcome == "verifier_error"


def _kill_sandbox_while_busy(v: CodeVerifier, after_s: float) -> list[int]:
    """SIGKILL the fork server and every runner (its process group) once ``after_s`` seconds of samples are
    in flight; returns the pids killed. The candidates live in sessions of their own and finish alone."""
    server = v._server
    deadline = time.monotonic() + 30
    while (server._proc is None or server._proc.poll() is not None) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(after_s)
    pgid = os.getpgid(server._proc.pid)
    assert pgid != os.getpgid(0)  # its own group, never this test's
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid]
    os.killpg(pgid, signal.SIGKILL)
    return pids


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _score_while_killing(retries: int, n: int = 8) -> tuple[list, list[int]]:
    """Score ``n`` right completions, every other one slow, killing the sandbox while the slow ones run."""
    v = CodeVerifier(timeout=5.0, max_parallel=n, cpu_slots=2)  # a fork server of its own
    out: dict = {}
    texts = [SLOW_RIGHT if i % 2 else RIGHT for i in range(n)]
    worker = threading.Thread(target=lambda: out.setdefault(
        "scores", score_batch(v, texts, [ADD] * n, workers=n, retries=retries)))
    worker.start()
    killed = _kill_sandbox_while_busy(v, after_s=1.0)
    worker.join(120)
    assert not worker.is_alive()
    v._server.close()
    return out["scores"], killed


@pytest.mark.e2e  # a fork server started, killed and started again: seconds
def test_sandbox_workers_killed_mid_batch_are_infra_errors_never_zeros():
    scores, killed = _score_while_killing(retries=0)
    assert len(killed) >= 2  # the server and at least one runner
    outcomes = [s.outcome for s in scores]
    assert outcomes[1::2] == ["infra_error"] * (len(scores) // 2), outcomes  # every slow one was in flight
    for s in scores:  # every sample is right, or labelled as the machinery's failure: no plain 0
        assert s.outcome in ("correct", "infra_error"), s
        if s.outcome == "infra_error":
            assert s.reward == 0.0 and not s.trainable and status_of(s) == "sandbox_error"
            assert "no verdict from the sandbox" in s.error


@pytest.mark.e2e  # a fork server started, killed and started again: seconds
def test_sandbox_workers_killed_mid_batch_are_retried_on_a_fresh_sandbox():
    scores, _ = _score_while_killing(retries=1)
    assert [s.outcome for s in scores] == ["correct"] * len(scores), [(s.outcome, s.error) for s in scores]
    assert all(s.metrics.get("retries") == 1.0 for s in scores[1::2])  # the killed ones were scored again
