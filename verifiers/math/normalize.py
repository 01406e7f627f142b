"""String clean-up of an extracted answer before it is parsed (pure Python, no sympy).

Everything here is a *safe* rewrite: it may only remove notation that cannot change the
value (``$``, ``\\left``, ``\\displaystyle``, markdown bold, a trailing full stop) or repair
notation whose meaning is unambiguous (``\\sqrt(2)`` -> ``\\sqrt{2}``, ``\\frac12`` ->
``\\frac{1}{2}``, ``1{,}000`` -> ``1000``). Units are stripped only when what remains is a
plain number (``18 dollars`` -> ``18``; ``5 \\text{ or } 7`` is left alone).
"""

from __future__ import annotations

import re

ELLIPSIS = "\\ldots"

_UNICODE = {
    "\u2212": "-",  # minus sign
    "\u2013": "-",
    "\u00d7": "\\times ",
    "\u22c5": "\\cdot ",
    "\u00b7": "\\cdot ",
    "\u00f7": "\\div ",
    "\u03c0": "\\pi ",
    "\u221e": "\\infty ",
    "\u2264": "\\le ",
    "\u2265": "\\ge ",
    "\u2260": "\\ne ",
    "\u221a": "\\sqrt",
    "\u2026": ELLIPSIS,
    "\u00b0": "^\\circ",
    "\u00a0": " ",
    "\u00b2": "^2",
    "\u00b3": "^3",
    "\u20ac": " ",  # euro sign
    "\u2248": "\\approx ",
}

# Commands that only change presentation.
_DROP = re.compile(
    r"(?<!\\)\\(?:displaystyle|textstyle|scriptstyle|left|right|bigl|bigr|Bigl|Bigr|big|Big|biggl|biggr|"
    r"mleft|mright|limits|nolimits|!|,|;|:|quad|qquad)(?![a-zA-Z])"
)
_ELLIPSES = re.compile(r"\\(?:ldots|cdots|dots|dotsc|dotsb|dotsm|dotso|vdots|ddots)(?![a-zA-Z])|\.\.\.")
_WRAPPERS = ("\\text", "\\textbf", "\\textit", "\\textrm", "\\mathrm", "\\mathbf", "\\mbox", "\\mathit", "\\operatorname", "\\boxed", "\\textnormal", "\\emph")

UNIT_WORDS = frozenset(
    """dollar dollars cent cents usd euro euros pound pounds yen rupees
    meter meters metre metres m cm mm km inch inches in ft foot feet yard yards yd mile miles mi
    sq square cubic units unit degree degrees deg rad radians
    second seconds sec s minute minutes min hour hours hr hrs h day days week weeks month months year years
    gram grams g kg kilogram kilograms mg lb lbs ounce ounces oz ton tons
    liter liters litre litres l ml gallon gallons quart quarts cup cups yuan
    mph kmh km/h m/s
    people persons students apples marbles cookies books points pages items boxes cars dogs cats
    times ways""".split()
)
# Words that change a number's value or that join two answers: never stripped as units.
_VALUE_WORDS = frozenset(
    "and or plus minus over times hundred thousand million billion trillion half halves third thirds "
    "quarter quarters dozen squared cubed root roots pi not no point".split()
)


def _matching_brace(s: str, i: int) -> int:
    """Index of the ``}`` matching the ``{`` at ``s[i]``, or -1."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "{" and (j == 0 or s[j - 1] != "\\"):
            depth += 1
        elif s[j] == "}" and (j == 0 or s[j - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return j
    return -1


def unwrap_command(s: str, cmd: str) -> str:
    """Replace every ``cmd{X}`` by ``X`` (balanced braces)."""
    out, i = [], 0
    while True:
        j = s.find(cmd + "{", i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        end = _matching_brace(s, j + len(cmd))
        if end < 0:
            out.append(s[i:])
            return "".join(out)
        out.append(s[i:j])
        out.append(s[j + len(cmd) + 1 : end])
        i = end + 1


def _fix_sqrt_parens(s: str) -> str:
    r"""``\sqrt(2)`` -> ``\sqrt{2}`` (balanced parentheses), ``\sqrt2`` -> ``\sqrt{2}``."""
    out, i = [], 0
    while True:
        j = s.find("\\sqrt", i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        k = j + 5
        while k < len(s) and s[k] == " ":
            k += 1
        out.append(s[i:j] + "\\sqrt")
        if k < len(s) and s[k] == "(":
            depth = 0
            for m in range(k, len(s)):
                depth += (s[m] == "(") - (s[m] == ")")
                if depth == 0:
                    out.append("{" + s[k + 1 : m] + "}")
                    i = m + 1
                    break
            else:
                i = k
        elif k < len(s) and (s[k].isdigit() or s[k].isalpha()):
            out.append("{" + s[k] + "}")
            i = k + 1
        else:
            i = k


_FRAC_SHORT = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_HALF_SHORT = [re.compile(r"\\frac\s*(\d)\s*(?=\{)"), re.compile(r"\\frac(\{[^{}]*\})\s*(\d)")]
_THOUSANDS = re.compile(r"^[+-]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")  # 0,111 is not a thousand
_SPACE_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?: \d{3})+(?:\.\d+)?$")
_SCI = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{?\s*([+-]?\d+)\s*\}?$")
_TRAILING_TEXT = re.compile(r"^(.*?)\s*\\(?:text|mbox|mathrm|textrm|textnormal|textbf|textit)\{([^{}]*)\}\s*(\^\s*\{?[23]\}?)?$")
# A command written with a doubled backslash (``\\frac``, from an over-escaped string) is the command.
_DOUBLED = re.compile(
    r"(?<!\\)\\(?=\\(?:left|right|frac|dfrac|tfrac|sqrt|pi|le|leq|ge|geq|ne|neq|lt|gt|text|textbf|mathrm|boxed|"
    r"cdot|times|infty|in|cup|cap|pm|mp|approx|circ|quad|qquad|sin|cos|tan|log|ln)(?![a-zA-Z]))"
)
_SIMPLE_WRAPPED = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mbox)\{\s*([+-]?[\d.,]+|\(?[A-Za-z]\)?)\s*\}"
)
_PLAIN_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?%?$")


def _strip_delimiters(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"), ("**", "**"), ("__", "__"), ("`", "`")):
        while len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left) : len(s) - len(right)].strip()
    return s


def is_plain_number(s: str) -> bool:
    return bool(_PLAIN_NUMBER.match(s))


def _strip_units(s: str) -> str:
    """Remove trailing unit words / ``\\text{unit}`` when what remains is a number."""
    m = _TRAILING_TEXT.match(s)
    if m and m.group(1).strip():
        words = m.group(2).strip().lower().split()
        if words and not (set(words) & _VALUE_WORDS) and all(re.fullmatch(r"[a-z/.]+", w) for w in words):
            head = m.group(1).strip()
            if _looks_numeric(head):
                return head
    glued = re.fullmatch(r"([+-]?[\d,]*\.?\d+)\s*([a-zA-Z/]+)\s*(?:\^\s*\{?[23]\}?)?", s)  # 12cm, 1,000.99m^2
    if glued and glued.group(2).lower() in UNIT_WORDS:
        return glued.group(1)
    parts = s.rsplit(None, 3)
    for n in (3, 2, 1):
        if len(parts) <= n:
            continue
        head, tail = " ".join(parts[:-n]), [w.lower().strip(".") for w in parts[-n:]]
        if all(w in UNIT_WORDS for w in tail) and _looks_numeric(head):
            return head
    return s


def _looks_numeric(s: str) -> bool:
    s = s.replace("\\$", "").replace("$", "").strip()
    s = s.replace(",", "") if _THOUSANDS.match(s) else s
    return is_plain_number(s) or bool(re.fullmatch(r"[+-]?\\frac\{\d+\}\{\d+\}|[+-]?\d+/\d+|[+-]?\d*\\sqrt\{\d+\}", s))


_DECIMAL_TAIL = re.compile(r"\\approx\s*[+-]?(?:\d+\.?\d*|\.\d+)\s*(?:\\ldots)?\s*\.?\s*$")


def _approx(s: str) -> str:
    """``x \\approx 11`` -> ``x = 11``; ``x = 1/3 \\approx \\frac{1}{3}`` -> ``x = 1/3``. An approximation by a
    decimal (``\\frac{\\sqrt3}{3} \\approx 0.577``) is left for `parse` to read as an exact value and its
    approximation, both checked (`compare.equal`)."""
    i = s.find("\\approx")
    if i < 0 or _DECIMAL_TAIL.search(s):
        return s
    if "=" in s[:i]:
        return s[:i].rstrip()
    return s.replace("\\approx", "=", 1)


def normalize(answer: str) -> str:
    """Canonical string form of an answer (see module doc for what may be rewritten)."""
    s = answer.strip()
    for k, v in _UNICODE.items():
        s = s.replace(k, v)
    s = _DOUBLED.sub("", s)
    s = re.sub(r'^(?:\\?"|\u201c)\s*(.*?)\s*(?:\\?"|\u201d)$', r"\1", s.strip(), flags=re.DOTALL)  # "quoted"
    s = _strip_delimiters(s)
    s = s.replace("\\$", " ").replace("$", " ")
    s = re.sub(r"\\lt(?![a-zA-Z])", "<", s)
    s = re.sub(r"\\gt(?![a-zA-Z])", ">", s)
    s = re.sub(r"\\q?quad(?=[a-zA-Z])", " ", s)  # "\quadx_2": a missing space
    s = re.sub(r"(?<=[)\]])\s*\\q?quad\s*(?=[(\[])", ", ", s)  # (1, 4) \quad (4, 1)
    s = re.sub(r",\s*\\!\s*", ",", s)  # 11,\!111 is one number
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    s = s.replace("\\le ", "\\le ").replace("\\leqslant", "\\le").replace("\\geqslant", "\\ge")
    s = _ELLIPSES.sub(lambda _m: " " + ELLIPSIS + " ", s)
    s = _DROP.sub(" ", s)
    s = re.sub(r"(?<!\\)\\ ", " ", s).replace("~", " ").replace("\n", " ")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s)  # degrees
    s = s.replace("{,}", ",")
    for cmd in ("\\textbf", "\\mathbf", "\\boxed"):
        s = unwrap_command(s, cmd)
    s = _SIMPLE_WRAPPED.sub(r"\1", s)  # \text{13} -> 13, \text{E} -> E
    s = _approx(s)
    s = re.sub(r"(?<=[)\]])\s*(?:or|and)\s*(?=[(\[])", ", ", s)  # (11,7)or(7,11)
    s = re.sub(r"(?<![\w)])\*\*(?=\S)(.+?)(?<=\S)\*\*(?![\w(])", r"\1", s)  # markdown bold, not 2**10
    s = _fix_sqrt_parens(s)
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF_SHORT[0].sub(r"\\frac{\1}", s)
    s = _FRAC_HALF_SHORT[1].sub(r"\\frac\1{\2}", s)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"^(?:\\text\{\s*)?(?:final answer|answer)\s*[:=]\s*\}?\s*", "", s, flags=re.IGNORECASE)
    s = s.rstrip(" .;")
    s = _strip_delimiters(s)
    s = re.sub(r"\s*(?:\\text\{\s*(?:percent|percentage|pct)\s*\}|percent|percentage|pct)$", "%", s)
    s = _strip_units(s)
    s = s.replace("\\%", "%").replace("\\percent", "%")
    s = re.sub(r"\s*%$", "%", s)
    if _THOUSANDS.match(s.rstrip("%")) or _SPACE_THOUSANDS.match(s.rstrip("%")):
        s = s.replace(",", "").replace(" ", "")
    m = _SCI.match(s)
    if m:
        s = f"{m.group(1)}e{m.group(2)}"
    if re.fullmatch(r"[+-]?(?:\d+\.?\d*|\.\d+)E[+-]?\d+", s):
        s = s.lower()
    return s.strip()
