"""Finding the final answer in a completion (pure Python, linear scans, no sympy).

Sources, tried in the order given by ``priority`` (the first that finds something wins):

- ``answer_tag``: the last ``<answer>…</answer>`` block (if it holds a ``\\boxed{}``, its
  content);
- ``boxed``: the last ``\\boxed{…}`` / ``\\fbox{…}`` with nested braces;
- ``answer_is``: the text after the last "the answer is" / "final answer:" up to the end
  of that sentence;
- ``hash``: the text after the last ``#### `` (GSM8K style), to the end of the line;
- ``bare``: the whole completion, when it is short (a bare answer such as ``\\frac{1}{2}``);
- ``last_number``: the last number in the text (off by default: it rewards lucky guesses).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PRIORITY = ("answer_tag", "boxed", "answer_is", "hash", "bare")
ALL_SOURCES = (*DEFAULT_PRIORITY, "last_number")
BARE_MAX_CHARS = 1000  # a longer completion with no marker has no answer, not a bare one


@dataclass(frozen=True)
class Extraction:
    answer: str
    source: str


def find_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` / ``\\fbox{…}`` (balanced braces), or None.

    ``\\boxed 5`` (no brace) yields the next token. An unclosed last box yields None rather
    than the rest of the text, so a truncated completion has no answer.
    """
    best = None
    for cmd in ("\\boxed", "\\fbox"):
        i = text.rfind(cmd)
        if i >= 0 and (best is None or i > best[0]):
            best = (i, cmd)
    if best is None:
        return None
    start = best[0] + len(best[1])
    while start < len(text) and text[start] == " ":
        start += 1
    if start >= len(text):
        return None
    if text[start] != "{":
        token = re.match(r"[^\s$]+", text[start:])
        return token.group(0) if token else None
    depth = 0
    for j in range(start, len(text)):
        ch = text[j]
        if ch == "{" and text[j - 1] != "\\":
            depth += 1
        elif ch == "}" and text[j - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start + 1 : j]
    return None


def _answer_tag(text: str) -> str | None:
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    if start < 0:
        return None
    inner = text[start + len("<answer>") : end]
    boxed = find_boxed(inner)
    return boxed if boxed is not None else inner


_ANSWER_IS = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s*(?:is|:|=)\s*:?", re.IGNORECASE)


def _answer_is(text: str) -> str | None:
    last = None
    for m in _ANSWER_IS.finditer(text):
        last = m
    if last is None:
        return None
    rest = text[last.end() :].lstrip()
    rest = rest.split("\n", 1)[0]
    # The sentence ends at ". " / a final "." that is not a decimal point.
    m = re.search(r"\.(?:\s|$)", rest)
    if m:
        rest = rest[: m.start()]
    return rest.strip() or None


def _hash(text: str) -> str | None:
    i = text.rfind("####")
    if i < 0:
        return None
    rest = text[i + 4 :].split("\n", 1)[0].strip()
    return rest or None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _last_number(text: str) -> str | None:
    last = None
    for m in _NUMBER.finditer(text):
        last = m
    return last.group(0).rstrip(",") if last else None


def _bare(text: str) -> str | None:
    stripped = text.strip()
    if not stripped or len(stripped) > BARE_MAX_CHARS:
        return None
    return stripped


_FINDERS = {
    "answer_tag": _answer_tag,
    "boxed": find_boxed,
    "answer_is": _answer_is,
    "hash": _hash,
    "bare": _bare,
    "last_number": _last_number,
}


def extract(text: str, priority: tuple[str, ...] = DEFAULT_PRIORITY) -> Extraction | None:
    """The final answer of ``text`` from the first source in ``priority`` that has one."""
    for source in priority:
        found = _FINDERS[source](text)
        if found is not None and found.strip():
            return Extraction(found.strip(), source)
    return None


def check_priority(priority: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [s for s in priority if s not in _FINDERS]
    if unknown or not priority:
        raise ValueError(f"unknown answer sources {unknown}; choose from {list(ALL_SOURCES)}")
    return tuple(priority)
