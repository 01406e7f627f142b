"""Two test-suite runs side by side, test by test: is the suite slower, or only bigger?

    .venv/bin/python benchmarks/suite_time.py OLD.xml NEW.xml [--top 15]

Each file is a JUnit report of one suite run (``pytest --junitxml=FILE``), e.g. the commit before a
change and the one after it, run one after the other on the same idle machine. A test is matched by
its file's name and its own name (tests that moved to another folder keep their id). Prints the
seconds of the tests both runs hold, of those only one holds, their ratio, and the tests whose time
changed most. (The pytest wall time also holds collection and session fixtures, which JUnit leaves
out; they are printed from the reports' totals.)
"""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from pathlib import Path


def read_report(path: str) -> tuple[dict[str, float], float, dict[str, str]]:
    """Seconds per test id (``file.py::name``), the report's total seconds, and each test's outcome."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    times, outcomes = {}, {}
    for case in root.iter("testcase"):
        file = case.get("file") or case.get("classname", "").replace(".", "/") + ".py"
        key = f"{Path(file).name}::{case.get('name')}"
        times[key] = times.get(key, 0.0) + float(case.get("time") or 0.0)
        kinds = {child.tag for child in case}
        outcomes[key] = ("failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed")
    total = sum(float(s.get("time") or 0.0) for s in suites)
    return times, total, outcomes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", help="JUnit XML of the earlier run")
    ap.add_argument("new", help="JUnit XML of the later run")
    ap.add_argument("--top", type=int, default=15, help="how many of the most changed tests to list")
    args = ap.parse_args()
    old, old_total, old_out = read_report(args.old)
    new, new_total, new_out = read_report(args.new)
    common = sorted(set(old) & set(new))
    only_old, only_new = sorted(set(old) - set(new)), sorted(set(new) - set(old))

    def secs(times: dict[str, float], keys: list[str]) -> float:
        return sum(times[k] for k in keys)

    c_old, c_new = secs(old, common), secs(new, common)
    print(f"{'':34s}{'tests':>7s}{'old s':>10s}{'new s':>10s}{'new / old':>11s}")
    print(f"{'in both':34s}{len(common):7d}{c_old:10.1f}{c_new:10.1f}{c_new / max(c_old, 1e-9):10.2f}x")
    print(f"{'only in the old run':34s}{len(only_old):7d}{secs(old, only_old):10.1f}{'':>10s}")
    print(f"{'only in the new run':34s}{len(only_new):7d}{'':>10s}{secs(new, only_new):10.1f}")
    print(f"{'report total (all tests)':34s}{'':7s}{old_total:10.1f}{new_total:10.1f}{new_total / max(old_total, 1e-9):10.2f}x")
    failed = [k for k in common if old_out[k] != new_out[k]]
    if failed:
        print(f"\n{len(failed)} tests in both with another outcome: "
              + ", ".join(f"{k} ({old_out[k]} -> {new_out[k]})" for k in failed[:10]))
    changes = sorted(common, key=lambda k: new[k] - old[k])
    print("\nfaster by most (old s -> new s):")
    for k in changes[: args.top]:
        print(f"  {old[k]:7.1f} -> {new[k]:7.1f}  {k}")
    print("slower by most:")
    for k in reversed(changes[-args.top:]):
        print(f"  {old[k]:7.1f} -> {new[k]:7.1f}  {k}")
    print("slowest tests only in the new run:")
    for k in sorted(only_new, key=lambda k: -new[k])[: args.top]:
        print(f"  {new[k]:7.1f}  {k}")


if __name__ == "__main__":
    main()
