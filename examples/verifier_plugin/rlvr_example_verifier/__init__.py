"""Example rlvr verifier plugin.

Installing this package (``pip install examples/verifier_plugin``) makes
``verifiers.get("example-keyword")`` work with no change to rlvr: the names come from the
``rlvr.verifiers`` entry points in this package's pyproject.toml.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from verifiers import Score


class KeywordVerifier:
    """Reward 1 when the completion contains ``task["keyword"]`` (case-insensitive)."""

    name = "example-keyword"

    def __init__(self, key: str = "keyword"):
        self.key = key

    def score(self, completion: str, task: Mapping[str, Any]) -> Score:
        keyword = str(task[self.key]).lower()
        ok = keyword in completion.lower()
        return Score(1.0 if ok else 0.0, ok, {"length": float(len(completion))})


class CrashingVerifier:
    """A broken plugin: every check raises. rlvr must count this as an error, not a 0 reward."""

    name = "example-crash"

    def score(self, completion: str, task: Mapping[str, Any]) -> Score:
        raise RuntimeError("example plugin bug")
