"""Hostile inputs, one property at a time: each returns within timeout + 0.5 s with an
error, from any thread, and the next normal check still succeeds. Also the pool itself:
kill-and-replace on timeout, worker death, exceptions, memory cap."""

from __future__ import annotations

import threading
import time

import pytest

import verifiers
from verifiers.pool import CheckFailed, CheckTimeout, WorkerDied, WorkerPool

pytestmark = pytest.mark.e2e  # worker processes killed and replaced, timeouts waited out (a second each)

TIMEOUT = 1.0
SLACK = 0.5

PATHOLOGICAL = {
    "power_tower": "\\boxed{9^{9^{9^9}}}",
    "deep_nesting_10000": "\\boxed{" + "(" * 10_000 + "1" + ")" * 10_000 + "}",
    "one_megabyte": "\\boxed{" + "1" * 1_000_000 + "}",
    "one_megabyte_bare": "7" * 1_000_000,
    "deep_nesting_50": "\\boxed{" + "(" * 50 + "1" + ")" * 50 + "}",  # short, but too deep
    "frac_chain_nested": "\\boxed{" + "\\frac{1}{" * 5_000 + "2" + "}" * 5_000 + "}",
    "frac_chain_flat": "\\boxed{" + "+".join(["\\frac{1}{\\frac{1}{\\frac{1}{3}}}"] * 200) + "}",
    "huge_factorial": "\\boxed{(10^{10})!}",
    "factorial_100000": "\\boxed{100000!}",
    "sqrt_of_factorial": "\\boxed{\\sqrt{10000!+1}}",  # sympy tries to factor it: only the kill stops it
    "big_exponent_sci": "\\boxed{1e999999999}",
}


@pytest.fixture(scope="module")
def math_verifier():
    v = verifiers.get("math", timeout=TIMEOUT)
    assert v.score("\\boxed{1}", {"answer": "1"}).correct  # start the workers outside the timings
    return v


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_prediction_is_a_bounded_error(math_verifier, name):
    start = time.monotonic()
    s = math_verifier.score(PATHOLOGICAL[name], {"answer": "1"})
    elapsed = time.monotonic() - start
    assert elapsed < TIMEOUT + SLACK, f"{name} took {elapsed:.2f}s"
    assert s.error is not None, f"{name} gave {s} without an error"
    assert s.reward == 0.0
    nxt = math_verifier.score("so \\boxed{\\frac{6}{4}}", {"answer": "1.5"})
    assert nxt.error is None and nxt.correct is True


@pytest.mark.parametrize("name", ["power_tower", "huge_factorial", "sqrt_of_factorial", "deep_nesting_10000"])
def test_pathological_reference_is_a_bounded_error(math_verifier, name):
    reference = PATHOLOGICAL[name][len("\\boxed{") : -1]
    start = time.monotonic()
    s = math_verifier.score("\\boxed{1}", {"answer": reference})
    assert time.monotonic() - start < TIMEOUT + SLACK
    assert s.error is not None and s.reward == 0.0
    assert math_verifier.score("\\boxed{2}", {"answer": "2"}).correct is True


def test_timeout_is_reported_as_timeout(math_verifier):
    s = math_verifier.score(PATHOLOGICAL["sqrt_of_factorial"], {"answer": "1"})
    assert s.error == "timeout" and s.correct is None


def _wait_idle(pool, n: int) -> None:
    deadline = time.monotonic() + 10
    while pool.idle() < n and time.monotonic() < deadline:
        time.sleep(0.01)


def test_timeouts_from_several_threads_at_once(math_verifier):
    from verifiers.math import shared_pool

    pool = shared_pool(2)
    _wait_idle(pool, 2)  # the bound is on the check, not on queueing for a busy pool
    zygotes = pool.zygote_starts
    results: dict[int, tuple[float, object]] = {}

    def worker(i: int) -> None:
        start = time.monotonic()
        s = math_verifier.score(PATHOLOGICAL["sqrt_of_factorial"], {"answer": str(i)})
        results[i] = (time.monotonic() - start, s)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]  # one per worker
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for elapsed, s in results.values():
        assert s.error == "timeout"
        assert elapsed < TIMEOUT + SLACK, (elapsed, pool.zygote_starts - zygotes, pool.idle())
    # The pool replaced both workers and keeps serving.
    assert math_verifier.score("x = 3", {"answer": "3"}).correct is True


def test_oversized_bare_completion_is_no_answer_not_a_parse(math_verifier):
    # A long completion with no answer marker has no answer (an ordinary 0, counted as an
    # extraction failure); it is never handed to the parser.
    s = math_verifier.score("(" * 3000 + ")" * 3000, {"answer": "1"})
    assert s.error is None and s.correct is False and s.metrics["extracted"] == 0.0


# ---- the pool on its own (real worker processes running stdlib functions) --------------------


@pytest.fixture()
def pool():
    p = WorkerPool(size=2, timeout=TIMEOUT, memory_mb=512)
    yield p
    p.close()


def test_pool_kills_a_stuck_check_and_keeps_serving(pool):
    start = time.monotonic()
    with pytest.raises(CheckTimeout):
        pool.call("time:sleep", 60)
    assert time.monotonic() - start < TIMEOUT + SLACK
    assert pool.call("math:factorial", 5) == 120
    assert pool.replaced == 1


def test_pool_score_turns_timeout_into_error(pool):
    s = pool.score("time:sleep", 60, timeout=0.3)
    assert s.error == "timeout" and s.reward == 0.0


def test_pool_worker_death_is_reported(pool):
    with pytest.raises(WorkerDied):
        pool.call("os:_exit", 3)
    assert pool.call("operator:add", 2, 3) == 5


def test_pool_exception_in_check_is_reported_and_worker_kept(pool):
    with pytest.raises(CheckFailed) as info:
        pool.call("json:loads", "{not json")
    assert info.value.remote_type == "JSONDecodeError"
    assert pool.replaced == 0
    assert pool.call("json:loads", "[1]") == [1]


def test_pool_memory_cap(pool):
    s = pool.score("builtins:bytearray", 4 * 1024**3)
    assert s.error == "memory"
    assert pool.call("operator:mul", 6, 7) == 42


def test_pool_stuck_checks_in_many_threads(pool):
    errors, durations = [], []

    def one() -> None:
        start = time.monotonic()
        try:
            pool.call("time:sleep", 60, timeout=0.5)
        except CheckTimeout as exc:
            errors.append(exc)
        durations.append(time.monotonic() - start)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 2 and max(durations) < 0.5 + SLACK
    assert pool.call("operator:add", 1, 1) == 2
