"""Finding the final answer in a completion (pure Python, linear scans, no sympy).

Sources, tried in the order given by ``priority`` (the first that finds something wins):

- ``answer_tag``: the last ``<answer>…</answer>`` block (if it holds a ``\\boxed{}``, its
  content);
- ``final_answer``: the Minerva-style closing line "Final Answer: The final answer is X. I hope
  it is correct." (or "Final answer: …"), when no ``\\boxed{}`` comes after it;
- ``boxed``: the last ``\\boxed{…}`` / ``\\fbox{…}`` with nested braces, together with the boxes
  just before it when only a joiner separates them (``\\boxed{2}, \\boxed{5}``,
  ``\\boxed{1} \\quad\\text{and}\\quad \\boxed{3}``): they become one list ``2, 5``;
- ``answer_is``: the text after the last "the answer is" / "answer:" up to the end of that
  sentence;
- ``hash``: the text after the last ``#### `` (GSM8K style), to the end of the line;
- ``bare``: the whole completion, when it is short and not prose (a bare answer such as
  ``\\frac{1}{2}`` or ``$x^2+1$``);
- ``last_math``: the last math span (``$…$``, ``$$…$$``, ``\\(…\\)``, ``\\[…\\]``) or the last
  number, whichever ends later, in the closing sentences of a completion with no marker.
- ``last_number``: the last number anywhere in the text (off by default: it rewards guesses).

An answer phrase ("The largest $n$ is 34.", "Jane started 3 hours ago.") is reduced to its
value: the part after the last "is" / "are" / "=", or the last math span or number in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PRIORITY = ("answer_tag", "final_answer", "boxed", "answer_is", "hash", "bare", "last_math")
ALL_SOURCES = (*DEFAULT_PRIORITY, "last_number")
MAX_BOXES = 32
BARE_MAX_CHARS = 1000  # a longer completion with no marker has no bare answer
TAIL_CHARS = 600  # ``last_math`` looks only at the end of a completion (its closing sentences)
_SPECIAL_TOKENS = re.compile(r"<\|[a-z_]+\|>|</s>|<eos>|<\|endoftext\|>")


@dataclass(frozen=True)
class Extraction:
    answer: str
    source: str


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """Every complete ``\\boxed{…}`` / ``\\fbox{…}`` as (start, end, content), in order."""
    out = []
    # Only the last boxes can be the answer; scanning each is linear, so bound how many.
    for m in list(re.finditer(r"\\(?:boxed|fbox)(?![a-zA-Z])", text))[-MAX_BOXES:]:
        start = m.end()
        while start < len(text) and text[start] == " ":
            start += 1
        if start >= len(text):
            continue
        if text[start] != "{":
            token = re.match(r"[^\s$]+", text[start:])
            if token:
                out.append((m.start(), start + token.end(), token.group(0)))
            continue
        depth = 0
        for j in range(start, len(text)):
            ch = text[j]
            if ch == "{" and text[j - 1] != "\\":
                depth += 1
            elif ch == "}" and text[j - 1] != "\\":
                depth -= 1
                if depth == 0:
                    out.append((m.start(), j + 1, text[start + 1 : j]))
                    break
    return [b for i, b in enumerate(out) if not any(o[0] < b[0] < o[1] for o in out[:i])]


def find_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` / ``\\fbox{…}`` (balanced braces), or None.

    ``\\boxed 5`` (no brace) yields the next token. An unclosed last box yields None rather
    than the rest of the text, so a truncated completion has no answer.
    """
    last = max((text.rfind("\\boxed"), text.rfind("\\fbox")))
    if last < 0:
        return None
    boxes = _boxes(text)
    if not boxes or boxes[-1][0] != last:
        return None
    return boxes[-1][2]


_JOINER_NOISE = re.compile(
    r"\\text\{([^{}]*)\}|\\mbox\{([^{}]*)\}|\\q?quad|\\[,;:! ]|\$+|\\[()\[\]]|[\s~]|\\\\|\\(?:text|mbox)\b"
)


def _is_joiner(between: str) -> bool:
    """Is the text between two boxes only a list joiner (``, `` / ``\\quad\\text{and}\\quad`` /
    "papers and")? A sentence ("first, then correct it:") is not."""
    between = re.sub(r"[A-Za-z](?:_\{?\w+\}?)?\s*=\s*[$]?\s*$", "", between)  # "\) and \( y_2 = "
    if len(between) > 60 or re.search(r"\d|=|\\boxed", between):
        return False
    rest = _JOINER_NOISE.sub(lambda m: " " + (m.group(1) or m.group(2) or "") + " ", between)
    words = re.findall(r"[A-Za-z]+", rest)
    if not words:
        return True
    return words[-1].lower() in ("and", "or") and len(words) <= 5


def _boxed(text: str) -> str | None:
    boxes = _boxes(text)
    if not boxes or find_boxed(text) is None:
        return None
    group = [boxes[-1]]
    for prev in reversed(boxes[:-1]):
        if not _is_joiner(text[prev[1] : group[0][0]]):
            break
        group.insert(0, prev)
    joined = ", ".join(b[2] for b in group)
    return joined if len(joined) <= BARE_MAX_CHARS else boxes[-1][2]


def _answer_tag(text: str) -> str | None:
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    if start < 0:
        return None
    inner = text[start + len("<answer>") : end]
    boxed = _boxed(inner)
    return boxed if boxed is not None else inner


# ---- math spans and answer phrases --------------------------------------------------------

_SPAN_OPEN = (("$$", "$$", True), ("\\[", "\\]", True), ("\\(", "\\)", False), ("$", "$", False))


def math_spans(text: str) -> list[tuple[int, int, str | None]]:
    """Math spans as (start, end, content); content is None for a broken inline span (one
    that crosses a line break), whose numbers must not be read as an answer."""
    spans, i, n = [], 0, len(text)
    unclosed: set[str] = set()  # closers not found after some position: not found later either
    while i < n:
        if text[i] not in "$\\" or (i > 0 and text[i - 1] == "\\"):
            i += 1
            continue
        for opener, closer, multiline in _SPAN_OPEN:
            if text.startswith(opener, i):
                j = i + len(opener) if closer not in unclosed else -1
                while j >= 0:
                    j = text.find(closer, j)
                    if j < 0 or text[j - 1] != "\\" or closer != "$":
                        break
                    j += 1
                if j < 0:
                    unclosed.add(closer)
                    i = n if opener in ("$$", "\\[") else i + len(opener)
                    break
                inner = text[i + len(opener) : j]
                broken = not multiline and "\n" in inner
                spans.append((i, j + len(closer), None if broken else inner))
                i = j + len(closer)
                break
        else:
            i += 1
    return spans


_NUMBER_TOKEN = re.compile(r"(?<![A-Za-z\d.,])-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+)?(?:\s*(?:\\?%|percent\b))?")


def _last_value(text: str) -> tuple[int, str] | None:
    """The last math span or number in ``text`` (whichever ends later) as (end, answer)."""
    spans = [sp for sp in math_spans(text) if sp[2] is not None and sp[2].strip() and not _span_is_prose(sp[2])]
    best = None
    if spans:
        group = [spans[-1]]  # "$(1, 4)$ and $(4, 1)$": spans joined by a joiner are one list
        for prev in reversed(spans[:-1]):
            if not _is_joiner(text[prev[1] : group[0][0]]):
                break
            group.insert(0, prev)
        best = (spans[-1][1], ", ".join(sp[2].strip() for sp in group))
    plain = _outside(text)
    num = None
    for m in _NUMBER_TOKEN.finditer(plain):
        num = m
    if num is not None and (best is None or num.end() > best[0]):
        best = (num.end(), num.group(0).strip().rstrip(","))
    return best


_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
# Words that are notation, not prose: plain function names, "and", percent spelled out.
_MATH_WORDS = frozenset(
    "and sqrt exp log sin cos tan cot sec csc arcsin arccos arctan asin acos atan abs "
    "pi inf nan zoo percent percentage pct".split()
)
_TEXT_CMD = re.compile(r"\\(?:text\w*|mbox|mathrm|operatorname|begin|end|mathbb|mathcal)\{[^{}]*\}")


def _words(text: str) -> list[str]:
    from verifiers.math.normalize import UNIT_WORDS  # pure Python; imported late to keep this module light

    words = _PROSE_WORD.findall(_TEXT_CMD.sub(" ", text))
    return [w for w in words if w.lower() not in UNIT_WORDS and w.lower() not in _MATH_WORDS]


def _span_is_prose(inner: str) -> bool:
    return len(_words(inner)) >= 3


def _outside(text: str) -> str:
    """``text`` with every math span blanked out."""
    chars = list(text)
    for start, end, _ in math_spans(text):
        chars[start:end] = " " * (end - start)
    return "".join(chars)


def _is_prose(text: str) -> bool:
    """Words (outside math, commands and ``\\text{}``) next to a number or math: a sentence,
    not an answer. "18 dollars", "no solution" and "x \\in [1, 2]" are answers."""
    outside = _outside(text)
    has_value = bool(re.search(r"\d", outside)) or outside != text
    return has_value and bool(_words(outside))


_VERB = re.compile(r"\s(?:is|are|was|equals|be|becomes)(?:\s+(?:equal\s+to|approximately|about))?(?=\s)|=|\\approx", re.IGNORECASE)


def reduce_phrase(phrase: str) -> str:
    """"The largest $n$ is 34" -> "34"; "Jane started 3 hours ago" -> "3"; "$x = 5$" is kept."""
    phrase = phrase.strip()
    if not _is_prose(phrase):
        return phrase
    mask = _outside(phrase)
    cut = None
    for m in _VERB.finditer(mask):
        cut = m
    if cut is not None:
        rest = phrase[cut.end() :].strip()
        if _is_value(rest):
            return rest
        phrase = rest or phrase
    found = _last_value(phrase)
    return found[1] if found else phrase


def _is_value(s: str) -> bool:
    """Not prose, and holding a number, math, a plain expression or one single token."""
    if not s or _is_prose(s):
        return False
    return bool(re.search(r"\d|\\|\$", s)) or len(s.split()) == 1


def _last_sentence(text: str) -> str:
    body = text.rstrip().rstrip(".").rstrip()
    outside = _outside(body)
    cut = max(outside.rfind(". "), outside.rfind("\n"), outside.rfind("! "), outside.rfind("? "))
    return body[cut + 1 :].strip()


_FINAL = re.compile(r"final\s+answer\s*(?:is|:)\s*(?:the\s+final\s+answer\s+is\s*:?)?", re.IGNORECASE)
_ANSWER_IS = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s*(?:is|:|=)\s*:?", re.IGNORECASE)


def _sentence(rest: str) -> str:
    """Up to the end of the sentence: a line break, "I hope", or a full stop that is not a
    decimal point and is not inside math."""
    rest = rest.lstrip()
    hope = re.search(r"\bI hope\b", rest)
    if hope:
        rest = rest[: hope.start()]
    out, spans = [], {s: e for s, e, _ in math_spans(rest)}
    i = 0
    while i < len(rest):
        if i in spans:
            out.append(rest[i : spans[i]])
            i = spans[i]
            continue
        ch = rest[i]
        if ch == "\n" and out and "".join(out).strip():
            break
        if ch == "." and (i + 1 == len(rest) or rest[i + 1].isspace()):
            break
        out.append(ch)
        i += 1
    return "".join(out).strip()


def _final_answer(text: str) -> str | None:
    last = None
    for m in _FINAL.finditer(text):
        last = m
    if last is None or re.search(r"\\(?:boxed|fbox)", text[last.end() :]):
        return None
    return reduce_phrase(_sentence(text[last.end() :])) or None


def _answer_is(text: str) -> str | None:
    last = None
    for m in _ANSWER_IS.finditer(text):
        last = m
    if last is None:
        return None
    sentence = _sentence(text[last.end() :])
    return reduce_phrase(sentence) if sentence else None


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
    spans = math_spans(stripped)
    if len(spans) == 1 and spans[0][0] == 0 and stripped[spans[0][1] :].strip(" .") == "":
        return stripped  # one math span: "$x^2+1$", "$$\frac12$$."
    if _is_prose(stripped):
        return None
    return stripped


def _last_math(text: str) -> str | None:
    tail = text[-TAIL_CHARS:] if len(text) > TAIL_CHARS else text
    sentence = _last_sentence(tail)
    cut = None
    for m in _VERB.finditer(_outside(sentence)):
        cut = m
    if cut is not None and _is_value(sentence[cut.end() :].strip()):
        return sentence[cut.end() :].strip()  # "So the result is sqrt(2)/2."
    found = _last_value(tail)
    return found[1] if found else None


_FINDERS = {
    "answer_tag": _answer_tag,
    "final_answer": _final_answer,
    "boxed": _boxed,
    "answer_is": _answer_is,
    "hash": _hash,
    "bare": _bare,
    "last_math": _last_math,
    "last_number": _last_number,
}


_GUESSES = frozenset({"bare", "last_math", "last_number"})


def extract(text: str, priority: tuple[str, ...] = DEFAULT_PRIORITY) -> Extraction | None:
    """The final answer of ``text`` from the first source in ``priority`` that has one."""
    text = _SPECIAL_TOKENS.sub(" ", text)
    # A last box left open means the answer was cut off: no fallback may guess it.
    truncated = max(text.rfind("\\boxed"), text.rfind("\\fbox")) >= 0 and find_boxed(text) is None
    for source in priority:
        if truncated and source in _GUESSES:
            continue
        found = _FINDERS[source](text)
        if found is not None and found.strip():
            return Extraction(found.strip(), source)
    return None


def check_priority(priority: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [s for s in priority if s not in _FINDERS]
    if unknown or not priority:
        raise ValueError(f"unknown answer sources {unknown}; choose from {list(ALL_SOURCES)}")
    return tuple(priority)
