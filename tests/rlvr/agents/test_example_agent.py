"""The example agent stays plain openai code, and its calculator evaluates arithmetic only."""

from __future__ import annotations

import ast

from helpers import ROOT

from rlvr.agents.runner import _return_problem, load_entry

EXAMPLE = ROOT / "examples" / "agents" / "calculator_agent.py"


def test_the_example_imports_nothing_of_rlvr_and_computes_only_arithmetic():
    tree = ast.parse(EXAMPLE.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"rlvr", "rollouts", "verifiers"}
    rollout = load_entry(f"{EXAMPLE}:rollout")
    calculate = rollout.__globals__["calculate"]
    assert calculate("12+7-3") == "16" and calculate("(2+3)*4") == "20" and calculate("7/2") == "3.5"
    assert calculate("__import__('os').system('true')").startswith("error") and calculate("1/0").startswith("error")


def test_what_an_agent_may_return():
    assert _return_problem(None) == _return_problem(0.5) == _return_problem({"reward": 1, "completion": "x"}) == ""
    assert "unknown keys ['score']" in _return_problem({"score": 1.0})
    assert "not a number" in _return_problem({"reward": "1"})
    assert "str" in _return_problem("42") and "bool" in _return_problem(True)
