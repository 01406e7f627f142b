"""Strict R1 format checker (`r1_format`).

Accepts exactly ``<think>…</think>`` followed by one non-empty ``<answer>…</answer>`` and
nothing after it (whitespace aside). R1-Zero prompts end with ``<think>``, so by default a
completion that does not start with ``<think>`` is checked as if the tag had been prefilled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from verifiers.base import Score

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_SHAPE = re.compile(r"<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
MAX_CHARS = 100_000


def format_ok(text: str, prefilled_think: bool = True) -> bool:
    """True iff ``text`` has the strict R1 shape."""
    if len(text) > MAX_CHARS:
        return False
    body = text.lstrip()
    if prefilled_think and not body.startswith("<think>"):
        body = "<think>" + body
    if any(body.count(tag) != 1 for tag in _TAGS):
        return False
    m = _SHAPE.fullmatch(body)
    return bool(m) and bool(m.group(2).strip())


def extract_answer(text: str) -> str | None:
    """Content of the single ``<answer>`` block, or None if there is not exactly one."""
    if len(text) > MAX_CHARS or text.count("<answer>") != 1 or text.count("</answer>") != 1:
        return None
    m = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    return m.group(1).strip() if m else None


class R1FormatVerifier:
    name = "r1_format"
    requires: tuple = ()  # judges the completion alone

    def __init__(self, prefilled_think: bool = True):
        self.prefilled_think = prefilled_think

    def score(self, completion: str, task: Mapping[str, Any]) -> Score:
        ok = format_ok(completion, self.prefilled_think)
        return Score(1.0 if ok else 0.0, None, {})
