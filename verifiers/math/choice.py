"""Multiple-choice letters and ordering words (pure Python, no sympy).

`choice_letter`: the option letter an answer names, written as graders' users write it: ``C``, ``(C)``,
``C.``, ``C)``, ``C:``, ``Option C``, each optionally followed by the option's text (``C. x = 42``,
``(C) 42``; AMC's ``\\textbf{(C) }42`` after normalisation). The text is not checked: the letter is the
answer. A letter is ``A`` to ``J`` (MMLU-Pro has ten options); outside brackets it must be a capital,
so ``x. 5`` or ``a: b`` is no choice.

`asks_for_order`: does a question ask for its answers in a given order ("in increasing order",
"from least to greatest", "respectively", ...)? Then a bare list is compared item by item instead of as a
set. "ordered pair" is not such a phrase: "all ordered pairs" orders the pair, not the list of pairs.
"""

from __future__ import annotations

import re

_CHOICE = re.compile(r"(?:(?:option|choice)\s+)?(?:\(\s*([A-Ja-j])\s*\)|([A-J])(?:[.):]|$))(?:\s+\S.*)?", re.S | re.I)
_ORDER = re.compile(
    r"\b(?:in\s+(?:increasing|decreasing|ascending|descending|numerical|alphabetical|(?:the\s+)?(?:same|given|"
    r"following)|that|this)\s+order|from\s+(?:least|smallest|lowest)\s+to\s+(?:greatest|largest|highest)|"
    r"from\s+(?:greatest|largest|highest)\s+to\s+(?:least|smallest|lowest)|respectively|in\s+order)\b",
    re.I,
)
MAX_QUESTION_CHARS = 20_000


def choice_letter(answer: str) -> str | None:
    """The option letter of a normalised answer (upper case), or None when it names no option."""
    m = _CHOICE.fullmatch(answer.strip())
    if m is None:
        return None
    letter = m.group(1) or m.group(2)
    if m.group(2) and not letter.isupper():  # "a." is a variable, "(a)" an option
        return None
    return letter.upper()


def asks_for_order(question: str | None) -> bool:
    """True when ``question`` asks for its answers in an order (see the module doc)."""
    return isinstance(question, str) and bool(_ORDER.search(question[:MAX_QUESTION_CHARS]))
