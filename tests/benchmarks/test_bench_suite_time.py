"""benchmarks/suite_time.py: two JUnit reports matched test by test, moved files included."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "suite_time.py"


def _report(path, cases: list[tuple[str, str, float, str]]) -> None:
    rows = []
    for file, name, secs, outcome in cases:
        inner = {"failed": "<failure message='x'/>", "skipped": "<skipped/>", "passed": ""}[outcome]
        rows.append(f'<testcase classname="c" file="{file}" name="{name}" time="{secs}">{inner}</testcase>')
    total = sum(c[2] for c in cases)
    path.write_text(f'<testsuites><testsuite name="pytest" time="{total + 5}">{"".join(rows)}</testsuite></testsuites>')


def test_tests_are_matched_by_file_name_and_the_rest_counted_apart(tmp_path):
    spec = importlib.util.spec_from_file_location("suite_time", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    old, new = tmp_path / "old.xml", tmp_path / "new.xml"
    _report(old, [("tests/test_a.py", "test_one", 2.0, "passed"), ("tests/test_b.py", "test_two[x]", 3.0, "failed"),
                  ("tests/test_gone.py", "test_old", 1.5, "passed")])
    _report(new, [("tests/rlvr/test_a.py", "test_one", 1.0, "passed"), ("tests/test_b.py", "test_two[x]", 4.5, "passed"),
                  ("tests/test_new.py", "test_added", 7.0, "skipped")])
    times, total, outcomes = mod.read_report(str(new))
    assert times == {"test_a.py::test_one": 1.0, "test_b.py::test_two[x]": 4.5, "test_new.py::test_added": 7.0}
    assert total == 17.5 and outcomes["test_new.py::test_added"] == "skipped"
    out = subprocess.run([sys.executable, str(SCRIPT), str(old), str(new)], capture_output=True, text=True, check=True).stdout
    both = next(line for line in out.splitlines() if line.startswith("in both")).split()
    assert both[2:] == ["2", "5.0", "5.5", "1.10x"]  # test_one moved folders and still counts as the same test
    assert "only in the old run" in out and "1.5" in out and "7.0  test_new.py::test_added" in out
    assert "test_b.py::test_two[x] (failed -> passed)" in out
