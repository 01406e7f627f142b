"""``rlvr verify`` end to end: real verifiers, real worker processes, a real JSONL file."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from helpers import ROOT

# e2e: each test runs `rlvr verify` in a subprocess with real worker processes (~17 s in all)
pytestmark = pytest.mark.e2e

# Runs the verify subcommand exactly as rlvr.cli does (configure + run_subcommand), so
# this test does not depend on the other subcommand modules being importable.
LAUNCH = (
    "import argparse, importlib, sys\n"
    "from rlvr.cli import SUBCOMMANDS, run_subcommand\n"
    "m = importlib.import_module(SUBCOMMANDS['verify'][0])\n"
    "p = argparse.ArgumentParser(prog='rlvr verify'); m.configure(p)\n"
    "sys.exit(run_subcommand(m, p.parse_args(sys.argv[1:])))\n"
)


def run_verify(*args: str, env_path: str | None = None) -> subprocess.CompletedProcess:
    env = None
    if env_path:
        import os

        env = dict(os.environ, PYTHONPATH=os.pathsep.join([env_path, str(ROOT)]))
    return subprocess.run([sys.executable, "-c", LAUNCH, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture()
def data(tmp_path):
    rows = [
        {"completion": "so \\boxed{\\frac{1}{2}}", "answer": "0.5", "expected": True},
        {"prediction": "x = 3", "reference": "3", "expected": True},
        {"completion": "The answer is 4.", "answer": "5", "expected": False},
        {"completion": "I could not solve it. " * 80, "answer": "7", "expected": False},
        {"completion": "\\boxed{9^{9^{9^9}}}", "answer": "1"},
        {"completion": "\\boxed{2=2}", "answer": "3=3", "expected": False},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_help_documents_row_format():
    out = run_verify("--help")
    assert out.returncode == 0
    for word in ("completion", "answer", "expected", "--compare", "--out", "math_verify"):
        assert word in out.stdout


def test_rlvr_cli_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "rlvr.cli", "verify", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if out.returncode != 0 and "No module named 'rlvr.commands." in out.stderr:
        pytest.skip("another rlvr subcommand module is not in this checkout yet")
    assert out.returncode == 0 and "--verifier" in out.stdout


def test_verify_math_report_and_out(data, tmp_path):
    out_path = tmp_path / "results.jsonl"
    out = run_verify("--verifier", "math", str(data), "--out", str(out_path), "--no-progress")
    assert out.returncode == 0, out.stderr
    report = out.stdout
    assert "rows               6" in report
    assert "correct                 2" in report
    assert "extraction fails        1" in report
    assert "other errors            1" in report and "too_large: 1" in report
    assert "agrees with labels      5/5" in report
    results = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert len(results) == 6
    assert results[0]["scores"]["math"]["correct"] is True
    assert results[4]["scores"]["math"]["error"] == "too_large"
    assert results[4]["scores"]["math"]["outcome"] == "unparsed"  # the policy's answer, refused unread
    assert "outcomes           correct: 2," in report and "unparsed: 2" in report


def test_verify_compare_math_verify(data):
    if importlib.util.find_spec("math_verify") is None:  # not imported here: this process never loads sympy
        pytest.skip("math_verify is not installed")
    out = run_verify("--verifier", "math", str(data), "--compare", "math_verify", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "agreement math vs math_verify:" in out.stdout
    assert "math_verify=1" in out.stdout
    # math-verify reads 2=2 and 3=3 as the same truth value; we do not.
    assert "disagreeing rows" in out.stdout and "2=2" in out.stdout


def test_verify_is_generic_over_verifiers(tmp_path):
    rows = [{"completion": "<think>a</think><answer>1</answer>"}, {"completion": "1"}]
    path = tmp_path / "fmt.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = run_verify("--verifier", "r1_format", str(path), "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "correct                 1" in out.stdout


def test_bad_input_exits_2(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"answer": "1"}\n')
    out = run_verify(str(path))
    assert out.returncode == 2 and "no 'completion'" in out.stderr
    out = run_verify("--verifier", "no-such-verifier", str(path))
    assert out.returncode == 2 and "unknown verifier" in out.stderr
