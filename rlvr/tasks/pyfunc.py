"""``pyfunc``: procedural Python functions from a one-line spec, rewarded by the sandboxed ``code`` verifier.

A problem is a stub (``def f(x):`` plus a docstring such as ``Return x times 3 plus 2.``) drawn
from one of a few dozen templates over ints, lists and strings with random constants (a few
thousand distinct problems). Its row carries what the code verifier needs, HumanEval-style:
``prompt`` (the stub), ``test`` (``check(candidate)`` with asserts) and ``entry_point``. The
tests call the function on inputs the prompt never shows (boundary values of the constants
and random ones); their expected values come from running the canonical body at build time
(trusted code of ours, never the model's). Train and test are split by a hash of the question.

The pretraining corpus (``build_corpus``, this kind's registered ``corpus``) is the arithmetic
recipe for code. Documents are R1 prompts for training-split problems followed by either

* *a plan*: ``multiply x by 3, then add 2 </think> <answer>\\ndef f(x):\\n    return x * 3 + 2\\n</answer>``
  (correct), or
* *a quick draft*: ``quick draft </think> <answer>...`` with a close but wrong body (a
  constant off by one or two, or a wrong comparison, always in the same slot of a template),
  checked to fail the problem's tests; sometimes without the ``<answer>`` tags.

How often a document plans depends on the problem's level (``corpus.reason_prob``, keyed 1..3):
easy templates mostly plan, hard ones mostly draft, so greedy decoding drafts on most held-out
problems (low pass@1) while sampling often plans (higher pass@8): the headroom RL-Zero turns
into pass@1. ``corpus.practice_frac`` of the documents are plain function definitions (stub +
body) outside the R1 template, which teach the spec-to-code mapping cheaply.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from pydantic import Field, model_validator

from rlvr.tasks.base import Row, Splits, TaskBase, register_task, split_of

QUESTION = "Write this Python function.\n{stub}"
LETTERS = "abcdexyz"


class PyFuncTask(TaskBase):
    kind: Literal["pyfunc"] = "pyfunc"
    train_size: int | None = Field(1000, ge=1, description="Distinct training problems generated.")
    test_fraction: float = Field(0.15, gt=0, lt=1, description="Share of problems (by a hash of the question) "
                                 "held out for evaluation.")
    question: str = Field(QUESTION, description="Question text with a {stub} slot (signature + docstring).")
    num_tests: int = Field(5, ge=2, le=12, description="Calls per problem in its hidden test.")
    draft_phrase: str = Field("quick draft", description="Corpus: what a careless response thinks before its "
                              "close-but-wrong body.")
    families: list[str] | None = Field(None, description="Templates to draw from (None: all; see "
                                       "rlvr.tasks.pyfunc.FAMILIES).")

    @model_validator(mode="after")
    def _check_families(self) -> PyFuncTask:
        unknown = [f for f in self.families or () if f not in FAMILIES]
        if unknown or self.families == []:
            raise ValueError(f"task.families: unknown template(s) {unknown}; known: {', '.join(FAMILIES)}")
        if "{stub}" not in self.question:
            raise ValueError("task.question must contain '{stub}'")
        return self


class Spec(NamedTuple):
    doc: str                # "Return x times 3 plus 2."
    body: str               # the canonical return expression, "x * 3 + 2"
    plan: str               # the reasoning a careful response writes, "multiply x by 3, then add 2"
    wrongs: tuple[str, ...]  # close-but-wrong return expressions
    consts: tuple           # values the tests probe around (boundaries)


@dataclass(frozen=True)
class Family:
    name: str
    level: int  # 1 easy .. 3 hard: keys corpus.reason_prob
    arg: str    # "x" (int), "xs" (list of int) or "s" (str)
    make: Callable[[random.Random], Spec]


FAMILIES: dict[str, Family] = {}


def family(name: str, level: int, arg: str) -> Callable:
    def deco(make: Callable[[random.Random], Spec]) -> Callable[[random.Random], Spec]:
        FAMILIES[name] = Family(name, level, arg, make)
        return make
    return deco


def _off(v: int, lo: int = 0) -> list[int]:
    """The near misses of a constant: v-2, v-1, v+1, v+2 (those >= lo)."""
    return [w for w in (v - 2, v - 1, v + 1, v + 2) if w >= lo]


# Every draft of a template is wrong in the same slot (one constant, or one operator), with
# several wrong values there: the canonical token never appears in that slot of any draft, so
# greedy decoding of the draft mode cannot stitch the right answer out of drafts wrong in
# different places.

# -- ints -------------------------------------------------------------------------------------
@family("add", 1, "x")
def _add(r: random.Random) -> Spec:
    a = r.randint(1, 99)
    return Spec(f"Return x plus {a}.", f"x + {a}", f"add {a} to x", tuple(f"x + {w}" for w in _off(a)), (a,))


@family("mul", 1, "x")
def _mul(r: random.Random) -> Spec:
    a = r.randint(2, 19)
    return Spec(f"Return x times {a}.", f"x * {a}", f"multiply x by {a}", tuple(f"x * {w}" for w in _off(a, 1)), (a,))


@family("greater", 1, "x")
def _greater(r: random.Random) -> Spec:
    a = r.randint(0, 99)
    return Spec(f"Return True if x is greater than {a}.", f"x > {a}", f"compare x with {a}",
                (f"x >= {a}", f"x < {a}", f"x <= {a}"), (a,))


@family("affine", 2, "x")
def _affine(r: random.Random) -> Spec:
    a, b = r.randint(2, 9), r.randint(1, 40)
    return Spec(f"Return x times {a} plus {b}.", f"x * {a} + {b}", f"multiply x by {a}, then add {b}",
                tuple(f"x * {a} + {w}" for w in _off(b)), (a, b))


@family("submul", 2, "x")
def _submul(r: random.Random) -> Spec:
    a, b = r.randint(1, 20), r.randint(2, 9)
    return Spec(f"Return x minus {a}, then times {b}.", f"(x - {a}) * {b}", f"subtract {a} from x, then multiply by {b}",
                tuple(f"(x - {w}) * {b}" for w in _off(a)), (a, b))


@family("mod", 2, "x")
def _mod(r: random.Random) -> Spec:
    a = r.randint(2, 12)
    return Spec(f"Return the remainder of x divided by {a}.", f"x % {a}", f"take x modulo {a}",
                tuple(f"x % {w}" for w in _off(a, 2)), (a,))


@family("clamp", 3, "x")
def _clamp(r: random.Random) -> Spec:
    a = r.randint(0, 99)
    return Spec(f"Return x, but at most {a}.", f"min(x, {a})", f"the smaller of x and {a}",
                tuple(f"min(x, {w})" for w in _off(a)), (a,))


@family("between", 3, "x")
def _between(r: random.Random) -> Spec:
    a = r.randint(0, 30)
    b = a + r.randint(2, 20)
    return Spec(f"Return True if x is between {a} and {b} inclusive.", f"{a} <= x <= {b}",
                f"check {a} <= x and x <= {b}", (f"{a} < x < {b}", f"{a} < x <= {b}"), (a, b))


# -- lists of ints ----------------------------------------------------------------------------
@family("sum_plus", 1, "xs")
def _sum_plus(r: random.Random) -> Spec:
    a = r.randint(1, 99)
    return Spec(f"Return the sum of xs plus {a}.", f"sum(xs) + {a}", f"add up xs, then add {a}",
                tuple(f"sum(xs) + {w}" for w in _off(a)), (a,))


@family("max_plus", 2, "xs")
def _max_plus(r: random.Random) -> Spec:
    a = r.randint(1, 60)
    return Spec(f"Return the largest number in xs plus {a}.", f"max(xs) + {a}", f"take the max of xs, then add {a}",
                tuple(f"max(xs) + {w}" for w in _off(a)), (a,))


@family("count_gt", 2, "xs")
def _count_gt(r: random.Random) -> Spec:
    a = r.randint(0, 20)
    return Spec(f"Return how many numbers in xs are greater than {a}.", f"len([v for v in xs if v > {a}])",
                f"keep v > {a}, then count them",
                tuple(f"len([v for v in xs if v {op} {a}])" for op in (">=", "<", "<=")), (a,))


@family("map_add", 2, "xs")
def _map_add(r: random.Random) -> Spec:
    a = r.randint(1, 60)
    return Spec(f"Return a list of each number in xs plus {a}.", f"[v + {a} for v in xs]", f"add {a} to each v",
                tuple(f"[v + {w} for v in xs]" for w in _off(a)), (a,))


@family("sum_gt", 3, "xs")
def _sum_gt(r: random.Random) -> Spec:
    a = r.randint(0, 20)
    return Spec(f"Return the sum of the numbers in xs that are greater than {a}.", f"sum([v for v in xs if v > {a}])",
                f"keep v > {a}, then add them up",
                tuple(f"sum([v for v in xs if v {op} {a}])" for op in (">=", "<", "<=")), (a,))


@family("map_affine", 3, "xs")
def _map_affine(r: random.Random) -> Spec:
    a, b = r.randint(2, 9), r.randint(1, 40)
    return Spec(f"Return a list of each number in xs times {a} plus {b}.", f"[v * {a} + {b} for v in xs]",
                f"multiply each v by {a}, then add {b}", tuple(f"[v * {a} + {w} for v in xs]" for w in _off(b)), (a, b))


@family("count_between", 3, "xs")
def _count_between(r: random.Random) -> Spec:
    a = r.randint(0, 15)
    b = a + r.randint(2, 15)
    return Spec(f"Return how many numbers in xs are between {a} and {b} inclusive.",
                f"len([v for v in xs if {a} <= v <= {b}])", f"keep {a} <= v <= {b}, then count them",
                (f"len([v for v in xs if {a} < v < {b}])", f"len([v for v in xs if {a} < v <= {b}])"), (a, b))


@family("filter_div", 3, "xs")
def _filter_div(r: random.Random) -> Spec:
    a = r.randint(2, 9)
    return Spec(f"Return the numbers in xs that are divisible by {a}.", f"[v for v in xs if v % {a} == 0]",
                f"keep v with v % {a} == 0", tuple(f"[v for v in xs if v % {w} == 0]" for w in _off(a, 2)), (a,))


# -- strings ----------------------------------------------------------------------------------
@family("first", 1, "s")
def _first(r: random.Random) -> Spec:
    a = r.randint(1, 6)
    return Spec(f"Return the first {a} characters of s.", f"s[:{a}]", f"slice s up to {a}",
                tuple(f"s[:{w}]" for w in _off(a, 1)), (a,))


@family("repeat", 1, "s")
def _repeat(r: random.Random) -> Spec:
    a = r.randint(2, 9)
    return Spec(f"Return s repeated {a} times.", f"s * {a}", f"repeat s {a} times",
                tuple(f"s * {w}" for w in _off(a, 1)), (a,))


@family("last", 2, "s")
def _last(r: random.Random) -> Spec:
    a = r.randint(1, 6)
    return Spec(f"Return the last {a} characters of s.", f"s[-{a}:]", f"slice s from -{a}",
                tuple(f"s[-{w}:]" for w in _off(a, 1)), (a,))


@family("count_char", 2, "s")
def _count_char(r: random.Random) -> Spec:
    c = r.choice(LETTERS)
    return Spec(f"Return how many times '{c}' occurs in s.", f"s.count('{c}')", f"count '{c}' in s",
                tuple(f"s.count('{d}')" for d in LETTERS if d != c), (c,))


@family("drop", 3, "s")
def _drop(r: random.Random) -> Spec:
    a = r.randint(1, 6)
    return Spec(f"Return s without its first {a} characters.", f"s[{a}:]", f"slice s from {a}",
                tuple(f"s[{w}:]" for w in _off(a, 1)), (a,))


@family("replace", 3, "s")
def _replace(r: random.Random) -> Spec:
    c, d = r.sample(LETTERS, 2)
    return Spec(f"Return s with every '{c}' replaced by '{d}'.", f"s.replace('{c}', '{d}')",
                f"replace '{c}' with '{d}' in s",
                tuple(f"s.replace('{c}', '{e}')" for e in LETTERS if e not in (c, d)), (c, d))


# -- problems -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PyFuncProblem:
    family: str
    level: int
    arg: str
    spec: Spec
    name: str = "f"

    @property
    def stub(self) -> str:
        return f'def {self.name}({self.arg}):\n    """{self.spec.doc}"""\n'

    def code(self, body: str | None = None) -> str:
        return f"def {self.name}({self.arg}):\n    return {body or self.spec.body}\n"

    def question(self, cfg: PyFuncTask) -> str:
        return cfg.question.format(stub=self.stub)


def sample_problem(rng: random.Random, cfg: PyFuncTask) -> PyFuncProblem:
    names = cfg.families or list(FAMILIES)
    fam = FAMILIES[rng.choice(names)]
    return PyFuncProblem(fam.name, fam.level, fam.arg, fam.make(rng))


def hidden_inputs(p: PyFuncProblem, count: int) -> list:
    """``count`` distinct inputs: boundary values of the constants, then random ones; seeded by
    the problem, so a problem always has the same hidden test."""
    rng = random.Random(hashlib.sha256(p.stub.encode()).digest())
    picks: list = []
    if p.arg == "x":
        ints = [c for c in p.spec.consts if isinstance(c, int)]
        pool = [v + d for v in ints for d in (0, 1, -1)]
        rng.shuffle(pool)
        pool += [rng.randint(-20, 120) for _ in range(4 * count)]
    elif p.arg == "xs":
        def lst() -> list[int]:
            vals = [rng.randint(0, 25) for _ in range(rng.randint(2, 6))]
            for c in p.spec.consts:  # a boundary value inside the list, sometimes
                if rng.random() < 0.5:
                    vals[rng.randrange(len(vals))] = c
            return vals
        pool = [lst() for _ in range(6 * count)]
    else:
        def word() -> str:
            chars = [rng.choice(LETTERS) for _ in range(rng.randint(3, 9))]
            for c in p.spec.consts:
                if isinstance(c, str) and rng.random() < 0.7:
                    chars[rng.randrange(len(chars))] = c
            return "".join(chars)
        pool = [word() for _ in range(6 * count)]
    for v in pool:
        if v not in picks:
            picks.append(v)
        if len(picks) == count:
            break
    return picks


def _run(code: str, name: str, inputs: list) -> list:
    """Outputs of our own (trusted, template-made) code on ``inputs``; an exception is an output."""
    ns: dict = {}
    exec(compile(code, "<pyfunc>", "exec"), ns)  # noqa: S102 - our template code, never a model's
    out = []
    for v in inputs:
        try:
            out.append(ns[name](list(v) if isinstance(v, list) else v))
        except Exception as exc:  # a wrong draft may divide by zero or index out of range
            out.append(type(exc).__name__)
    return out


@dataclass(frozen=True)
class Checked:
    """A problem with its hidden test and the drafts verified to fail it."""

    problem: PyFuncProblem
    test: str
    wrongs: tuple[str, ...]


def check_problem(p: PyFuncProblem, num_tests: int) -> Checked:
    inputs = hidden_inputs(p, num_tests)
    expected = _run(p.code(), p.name, inputs)
    test = "def check(candidate):\n" + "".join(
        f"    assert candidate({v!r}) == {e!r}\n" for v, e in zip(inputs, expected))
    wrongs = tuple(w for w in dict.fromkeys(p.spec.wrongs) if _run(p.code(w), p.name, inputs) != expected)
    return Checked(p, test, wrongs)


def make_row(c: Checked, cfg: PyFuncTask) -> Row:
    p = c.problem
    return {"question": p.question(cfg), "prompt": p.stub, "test": c.test, "entry_point": p.name,
            "level": p.level, "family": p.family, "solution": p.code()}


def sample_split(cfg: PyFuncTask, split: str, count: int, seed: int) -> list[Checked]:
    """Up to ``count`` distinct problems of ``split`` (fewer if the templates run out)."""
    rng, seen, out = random.Random(seed), set(), []
    for _ in range(50 * count + 5_000):
        p = sample_problem(rng, cfg)
        q = p.question(cfg)
        if q in seen or split_of(q, cfg.test_fraction) != split:
            continue
        seen.add(q)
        out.append(check_problem(p, cfg.num_tests))
        if len(out) == count:
            break
    return out


# -- pretraining corpus -----------------------------------------------------------------------
def plan_response(p: PyFuncProblem) -> str:
    return f" {p.spec.plan} </think> <answer>\n{p.code()}</answer>"


def draft_response(c: Checked, rng: random.Random, phrase: str, untagged_prob: float) -> str:
    code = c.problem.code(rng.choice(c.wrongs))
    if rng.random() < untagged_prob:
        return f" {phrase} </think>\n{code}"
    return f" {phrase} </think> <answer>\n{code}</answer>"


def build_corpus(cfg) -> list[str]:
    """Pretraining documents (prompt + response, no EOS) over training-split problems only;
    ``cfg`` is a `rlvr.config.PretrainConfig` whose ``task`` is a `PyFuncTask`."""
    rng = random.Random(cfg.train.seed)
    task, corpus = cfg.task, cfg.corpus
    checked: dict[str, Checked] = {}
    docs: list[str] = []
    while len(docs) < corpus.num_docs:
        p = sample_problem(rng, task)
        q = p.question(task)
        if split_of(q, task.test_fraction) != "train":
            continue  # held-out problems never appear in pretraining
        if rng.random() < corpus.practice_frac:  # a plain function definition outside the R1 template
            docs.append(p.stub + f"    return {p.spec.body}\n")
            continue
        if q not in checked:
            checked[q] = check_problem(p, task.num_tests)
        c = checked[q]
        if rng.random() < corpus.reason_prob.get(p.level, 0.5) or not c.wrongs:
            response = plan_response(p)
        else:
            response = draft_response(c, rng, task.draft_phrase, corpus.untagged_guess_prob)
        docs.append(task.template.format(question=q) + response)
    return docs


@register_task("pyfunc", PyFuncTask, verifier="code", corpus=build_corpus)
def load(cfg: PyFuncTask) -> Splits:
    train = [make_row(c, cfg) for c in sample_split(cfg, "train", cfg.train_size or 1000, cfg.seed)]
    test = [make_row(c, cfg) for c in sample_split(cfg, "test", cfg.test_size, cfg.seed + 1)]
    return Splits(train, test, [f"task pyfunc: {len(train)} training and {len(test)} held-out Python functions, "
                                f"generated from {len(cfg.families or FAMILIES)} templates (split by a hash of the "
                                f"question, task.test_fraction={cfg.test_fraction}); hidden tests of "
                                f"{cfg.num_tests} calls each"])
