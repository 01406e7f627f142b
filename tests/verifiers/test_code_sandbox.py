"""Code verifier behaviour: task formats, completion formats, statuses, rewards, isolation
facts and parallel scoring. Hostile inputs live in test_code_attacks.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import verifiers
from verifiers.code import STATUSES, CodeVerifier, sandbox_capabilities, status_of
from verifiers.code.program import build_program, defines, extract_code

ADD = {
    "task_id": "t/add",
    "prompt": 'def add(a, b):\n    """Return a + b."""\n',
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"
            "    assert candidate(a=2, b=5) == 7\n",
    "entry_point": "add",
}


@pytest.fixture(scope="module")
def v():
    return CodeVerifier(timeout=2.0)


def status(v, completion, task, **kw):
    score = (CodeVerifier(timeout=2.0, **kw) if kw else v).score(completion, task)
    return score, status_of(score)


# --------------------------------------------------------------------------- completions


def test_extract_code_last_fence_wins_and_plain_text_passes_through():
    text = "First try:\n```python\ndef f(): return 1\n```\nBetter:\n```python\ndef f(): return 2\n```\nDone."
    assert extract_code(text) == "def f(): return 2\n"
    assert extract_code("    return 1\n") == "    return 1\n"
    assert extract_code("```py\nx = 1\n") == "x = 1\n"  # an unterminated (truncated) fence
    assert extract_code("```bash\nls\n```\n```python\ny = 2\n```") == "y = 2\n"


def test_prompt_prepended_only_without_entry_point():
    assert build_program("    return a + b\n", ADD) == ADD["prompt"] + "    return a + b\n"
    whole = "def add(a, b):\n    return a + b\n"
    assert build_program(whole, ADD) == whole
    assert defines("async def add(x): pass", "add") and defines("add = lambda a, b: a + b", "add")
    assert not defines("    def add(a, b): pass", "add") and not defines("adder = 1", "add")


def test_body_whole_program_and_fenced_completions_pass(v):
    assert v.score("    return a + b\n", ADD).reward == 1.0
    assert v.score("import operator\n\ndef add(a, b):\n    return operator.add(a, b)\n", ADD).reward == 1.0
    fenced = "Here you go:\n```python\ndef add(a, b):\n    return a - b\n```\nOops, fixed:\n" \
             "```python\ndef add(a, b):\n    return a + b\n```\n"
    assert v.score(fenced, ADD).reward == 1.0


def test_prompt_helpers_are_available_to_the_test(v):
    task = {
        "prompt": "def helper(x):\n    return 2 * x\n\ndef double_all(xs):\n",
        "test": "def check(candidate):\n    assert candidate([1, 2]) == [helper(1), helper(2)]\n",
        "entry_point": "double_all",
    }
    assert v.score("    return [helper(x) for x in xs]\n", task).reward == 1.0


# --------------------------------------------------------------------------- statuses


@pytest.mark.e2e  # waits out a sandboxed candidate's time limit (the unit tier stays under a minute)
def test_every_status_is_reported(v):
    assert status(v, "    return a + b\n", ADD)[1] == "passed"
    assert status(v, "    return a * b\n", ADD)[1] == "failed"
    assert status(v, "    while True:\n        pass\n", ADD)[1] == "timeout"
    assert status(v, "    return [0] * (10 ** 11)\n", ADD)[1] == "memory"
    assert status(v, "    return a / 0\n", ADD)[1] == "runtime_error"
    assert status(v, "    return a +\n", ADD)[1] == "syntax_error"
    score, st = status(v, "    return a + b\n", {"prompt": "x"})
    assert st == "sandbox_error" and score.error and score.reward == 0.0 and score.correct is None
    assert set(STATUSES) == {"passed", "failed", "timeout", "memory", "runtime_error", "syntax_error",
                             "sandbox_error"}


def test_unencodable_test_argument_is_a_sandbox_error_not_a_failure(v):
    task = {"prompt": "def apply(f, x):\n", "entry_point": "apply",
            "test": "def check(candidate):\n    assert candidate(lambda y: y + 1, 1) == 2\n"}
    score = v.score("    return f(x)\n", task)
    assert status_of(score) == "sandbox_error" and "plain value" in score.error


def test_fraction_reward_counts_asserts(v):
    task = dict(ADD, test="def check(candidate):\n    assert candidate(1, 1) == 2\n    assert candidate(0, 0) == 0\n"
                          "    assert candidate(2, 2) == 5\n")
    frac = CodeVerifier(timeout=2.0, reward="fraction").score("    return a + b\n", task)
    assert frac.reward == pytest.approx(2 / 3) and frac.correct is False
    assert v.score("    return a + b\n", task).reward == 0.0  # binary by default
    assert v.score("    return a + b\n", dict(task, reward="fraction")).reward == pytest.approx(2 / 3)


def test_exceptions_the_test_expects_are_passed_through(v):
    task = {"prompt": "def parse(s):\n", "entry_point": "parse",
            "test": "def check(candidate):\n    try:\n        candidate('x')\n    except ValueError:\n        pass\n"
                    "    else:\n        raise AssertionError('no ValueError')\n    assert candidate('7') == 7\n"}
    assert v.score("    return int(s)\n", task).reward == 1.0
    assert v.score("    return 7\n", task).reward == 0.0


def test_return_types_keep_their_builtin_identity(v):
    task = {"prompt": "def pair():\n", "entry_point": "pair",
            "test": "def check(candidate):\n    assert candidate() == (1, 2)\n    assert type(candidate()) is tuple\n"}
    assert v.score("    return (1, 2)\n", task).reward == 1.0
    assert v.score("    return [1, 2]\n", task).reward == 0.0  # [1, 2] != (1, 2), as in plain Python
    assert v.score("    import collections\n    P = collections.namedtuple('P', 'a b')\n    return P(1, 2)\n",
                   task).reward == 1.0


def test_mbpp_style_test_list_without_entry_point(v):
    task = {"prompt": "Write a function to remove all occurrences of a character from a string.",
            "test_list": ["assert remove_char('hello', 'l') == 'heo'", "assert remove_char('abc', 'z') == 'abc'"]}
    good = "```python\ndef remove_char(s, c):\n    return s.replace(c, '')\n```"
    assert v.score(good, task).reward == 1.0
    assert v.score("def remove_char(s, c):\n    return s\n", task).reward == 0.0


# --------------------------------------------------------------------------- stdin / stdout


def test_stdin_stdout_cases_and_comparisons(v):
    task = {"inputs": ["1 2\n", "10 20\n"], "outputs": ["3\n", "30\n"]}
    assert v.score("a, b = map(int, input().split())\nprint(a + b)\n", task).reward == 1.0
    assert v.score("import sys\nprint(sum(map(int, sys.stdin.read().split())), end='   \\n\\n')\n",
                   task).reward == 1.0  # whitespace-tolerant by default
    assert v.score("print(3)\n", task).reward == 0.0
    frac = CodeVerifier(timeout=2.0, reward="fraction").score("print(3)\n", task)
    assert frac.reward == 0.5
    exact = dict(task, compare="exact")
    assert v.score("a, b = map(int, input().split())\nprint(a + b, end=' \\n')\n", exact).reward == 0.0
    floats = {"inputs": ["2\n"], "outputs": ["0.3333333\n"], "compare": "float", "float_tol": 1e-6}
    assert v.score("print(1 / 3)\n", floats).reward == 1.0
    assert v.score("print(0.334)\n", floats).reward == 0.0
    assert v.score("print(1 / 3)\n", dict(floats, compare="whitespace")).reward == 0.0


@pytest.mark.e2e  # waits out a sandboxed candidate's time limit (the unit tier stays under a minute)
def test_stdin_stdout_statuses(v):
    task = {"inputs": ["5\n"], "outputs": ["5\n"]}
    assert status(v, "x = input(\nprint(x)\n", task)[1] == "syntax_error"
    assert status(v, "raise SystemExit(3)\n", task)[1] == "runtime_error"
    assert status(v, "print(input())\nimport sys\nsys.exit(0)\n", task)[1] == "passed"  # a clean exit is fine
    assert status(v, "x = [0] * 10 ** 11\n", task)[1] == "memory"
    assert status(v, "while True:\n    pass\n", task)[1] == "timeout"


def test_apps_input_output_field(v):
    task = {"input_output": json.dumps({"inputs": ["4\n"], "outputs": ["16\n"]})}
    assert v.score("n = int(input())\nprint(n * n)\n", task).reward == 1.0


# --------------------------------------------------------------------------- isolation facts


def test_capabilities_are_reported():
    caps = sandbox_capabilities()
    assert caps["mode"] in ("root", "userns", "none")
    for key in ("netns", "mountns", "chroot", "uid_isolation", "rlimits", "audit_guard", "attempts"):
        assert key in caps
    if caps["mode"] == "root":
        assert caps["netns"] and caps["chroot"] and caps["uid_isolation"]


def test_each_sample_is_a_fresh_process_with_a_fresh_directory(v):
    task = {"prompt": "def probe():\n", "entry_point": "probe",
            "test": "def check(candidate):\n    assert candidate() == 'first'\n"}
    body = ("    import os, builtins\n"
            "    seen = os.path.exists('marker') or hasattr(builtins, 'rlvr_marker')\n"
            "    open('marker', 'w').write('x')\n"
            "    builtins.rlvr_marker = 1\n"
            "    return 'again' if seen else 'first'\n")
    assert [s.reward for s in v.score_many([body] * 6, [task] * 6, workers=3)] == [1.0] * 6


def test_candidate_sees_a_scrubbed_environment_and_its_own_directory(v):
    task = {"prompt": "def env():\n", "entry_point": "env",
            "test": "def check(candidate):\n    e = candidate()\n    assert set(e['env']) <= {'PATH', 'HOME', 'LANG', "
                    "'TMPDIR', 'PYTHONIOENCODING', 'LC_CTYPE'}, e\n    assert e['cwd'] == e['env']['HOME'], e\n"}
    body = "    import os\n    return {'env': dict(os.environ), 'cwd': os.getcwd()}\n"
    assert v.score(body, task).reward == 1.0


@pytest.mark.e2e  # waits out a sandboxed candidate's time limit (the unit tier stays under a minute)
def test_score_many_keeps_order_and_mixes_outcomes(v):
    bodies = ["    return a + b\n", "    return a - b\n", "    while True: pass\n", "    return a +\n"] * 3
    scores = v.score_many(bodies, [ADD] * len(bodies), workers=4)
    assert [status_of(s) for s in scores] == ["passed", "failed", "timeout", "syntax_error"] * 3


def test_registry_and_verify_path(v):
    verifier = verifiers.get("code")
    assert verifier.name == "code" and isinstance(verifier, CodeVerifier)
    assert verifier.score("    return a + b\n", ADD).reward == 1.0


def test_verifiers_code_never_imports_torch():
    code = "import sys, verifiers.code, verifiers.code.humaneval\nassert 'torch' not in sys.modules\n" \
           "assert 'rlvr' not in sys.modules and 'rollouts' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- scheduling


NICE = {"prompt": "def nice(wait):\n", "entry_point": "nice",
        "test": "def check(candidate):\n    assert candidate(0.0) == 0\n    assert candidate(0.6) == 19\n"}
NICE_BODY = "    import os, time\n    t = time.monotonic()\n    while time.monotonic() - t < wait:\n        pass\n" \
            "    return os.getpriority(os.PRIO_PROCESS, 0)\n"


@pytest.mark.e2e  # waits out a sandboxed candidate's time limit (the unit tier stays under a minute)
def test_a_sample_past_its_demotion_age_runs_at_nice_19():
    """Old samples give their CPU slot back and are reniced, so that a batch's infinite
    loops wait out their timeouts together without slowing fresh samples (the wall time
    is measured by benchmarks/code_sandbox.py, not asserted here)."""
    v = CodeVerifier(timeout=3.0, max_parallel=4, cpu_slots=1)
    assert v.score(NICE_BODY, NICE).reward == 1.0
    strict = CodeVerifier(timeout=3.0, max_parallel=1)  # as many slots as samples: nothing to demote
    assert strict.score(NICE_BODY, NICE).reward == 0.0


@pytest.mark.e2e  # waits out a sandboxed candidate's time limit (the unit tier stays under a minute)
def test_concurrent_score_calls_from_many_threads(v):
    """The training loop's scoring pool calls score() from many threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = ["    return a + b\n", "    while True: pass\n", "    return a - b\n"] * 6
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        statuses = [status_of(s) for s in pool.map(lambda b: v.score(b, ADD), bodies)]
    assert statuses == ["passed", "timeout", "failed"] * 6


@pytest.mark.e2e  # waits out a sandboxed candidate's time limit (the unit tier stays under a minute)
def test_cpu_time_tells_a_starved_timeout_from_a_spinning_one(v):
    sleeper = v.score("    import time\n    time.sleep(10)\n", ADD)
    assert status_of(sleeper) == "timeout" and 0.0 <= sleeper.metrics["cpu_s"] < 0.5
    assert "cpu_s" in v.score("    return a + b\n", ADD).metrics
