"""``arith``: procedural left-to-right integer chains (``Compute 20+6-2.``), the demo's task.

Train and test are disjoint by construction: a problem's split is a hash of its text, so no
test problem can appear in training data or in the pretraining corpus.

The pretraining corpus (``build_corpus``, the kind's registered ``corpus``) is R1-Zero prompts
for training-split chains followed by one of two kinds of response, the way web text mixes
careful and careless solutions:

* *reasoning*: ``7+5=12 12-3=9 </think> <answer>9</answer>`` — step by step, correct;
* *guessing*:  ``quick guess </think> <answer>11</answer>`` (or untagged ``11``) — an
  answer off by 1..``guess_noise``, never exact;
* *tool use* (``corpus.tool_prob``, 0 by default): ``<python>print(20+6-2)</python>`` then the
  tool's ``<output>`` and the answer copied from it (the tools demo's corpus). There the practice
  documents (``corpus.practice_frac``) are tool calls outside the R1 template: they teach the
  copies without making the call the template's greedy habit.

How often a document reasons depends on the chain length (``corpus.reason_prob``): short
chains mostly reason, long ones mostly guess. The base model therefore *can* solve long
chains (it sampled the reasoning mode in pretraining) but greedy decoding usually guesses,
so pass@1 is low while pass@8 is high: the headroom that RL-Zero turns into pass@1.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from rlvr.tasks.base import Row, Splits, TaskBase, register_task, split_of


class ArithTask(TaskBase):
    kind: Literal["arith"] = "arith"
    min_ops: int = Field(2, ge=1, le=8, description="Fewest +/- operations in a chain.")
    max_ops: int = Field(4, ge=1, le=8, description="Most +/- operations in a chain.")
    max_start: int = Field(20, ge=1, description="The first number is drawn from [1, max_start].")
    max_operand: int = Field(9, ge=1, description="Each operand is drawn from [1, max_operand].")
    max_value: int = Field(40, ge=1, description="Every intermediate value stays in [0, max_value].")
    train_size: int | None = Field(4000, ge=1, description="Training problems generated.")

    @model_validator(mode="after")
    def _check_ops(self) -> ArithTask:
        if self.min_ops > self.max_ops:
            raise ValueError("task.min_ops must be <= task.max_ops")
        return self


@dataclass(frozen=True)
class ArithProblem:
    start: int
    ops: tuple[tuple[str, int], ...]  # (("+", 5), ("-", 3), ...)

    @property
    def question(self) -> str:
        return f"Compute {self.start}" + "".join(f"{op}{d}" for op, d in self.ops) + "."

    def steps(self) -> list[tuple[int, str, int, int]]:
        """(left, op, operand, result) for each left-to-right step."""
        out, value = [], self.start
        for op, d in self.ops:
            new = value + d if op == "+" else value - d
            out.append((value, op, d, new))
            value = new
        return out

    @property
    def answer(self) -> int:
        return self.steps()[-1][3]


def sample_problem(rng: random.Random, cfg: ArithTask, n_ops: int | None = None) -> ArithProblem:
    """Random chain with every intermediate value in [0, cfg.max_value]."""
    n_ops = n_ops if n_ops is not None else rng.randint(cfg.min_ops, cfg.max_ops)
    while True:
        start = rng.randint(1, cfg.max_start)
        value, ops = start, []
        for _ in range(n_ops):
            op, d = rng.choice("+-"), rng.randint(1, cfg.max_operand)
            value = value + d if op == "+" else value - d
            ops.append((op, d))
        vals = ArithProblem(start, tuple(ops)).steps()
        if all(0 <= r <= cfg.max_value for *_, r in vals):
            return ArithProblem(start, tuple(ops))


def sample_split(cfg: ArithTask, split: str, count: int, seed: int) -> list[ArithProblem]:
    """``count`` distinct problems of ``split``, n_ops balanced, reproducible from ``seed``."""
    rng, seen, out = random.Random(seed), set(), []
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 200 * count + 10_000:
            raise ValueError(f"task: cannot find {count} distinct {split} problems; widen the task ranges")
        n_ops = cfg.min_ops + len(out) % (cfg.max_ops - cfg.min_ops + 1)
        p = sample_problem(rng, cfg, n_ops)
        if p.question in seen or split_of(p.question, cfg.test_fraction) != split:
            continue
        seen.add(p.question)
        out.append(p)
    return out


def arith_rows(problems: list[ArithProblem]) -> list[Row]:
    return [{"question": p.question, "answer": str(p.answer), "n_ops": len(p.ops)} for p in problems]


def reasoning_steps(p: ArithProblem) -> str:
    """``20+6=26 26-2=24 24+3=27``: one operation per step, left to right."""
    return " ".join(f"{a}{op}{d}={r}" for a, op, d, r in p.steps())


def reasoning_response(p: ArithProblem) -> str:
    return f" {reasoning_steps(p)} </think> <answer>{p.answer}</answer>"


def guess_response(p: ArithProblem, rng: random.Random, noise: int, untagged_prob: float) -> str:
    off = rng.randint(1, noise) * rng.choice((-1, 1))
    guess = p.answer + off if p.answer + off >= 0 else p.answer + abs(off)
    if rng.random() < untagged_prob:
        return f" quick guess </think> {guess}"
    return f" quick guess </think> <answer>{guess}</answer>"


def tool_response(p: ArithProblem, template: str) -> str:
    """``template`` (``corpus.tool_template``) for ``p``: the chain as Python, then its value."""
    return template.format(expression=p.question.removeprefix("Compute ").rstrip("."), answer=p.answer)


def build_corpus(cfg) -> list[str]:
    """Pretraining documents (prompt + response, no EOS) over training-split problems only;
    ``cfg`` is a `rlvr.config.PretrainConfig` whose ``task`` is an `ArithTask`."""
    rng = random.Random(cfg.train.seed)
    task, corpus = cfg.task, cfg.corpus
    docs: list[str] = []
    while len(docs) < corpus.num_docs:
        p = sample_problem(rng, task)
        if split_of(p.question, task.test_fraction) != "train":
            continue  # held-out problems never appear in pretraining
        if rng.random() < corpus.practice_frac:  # a worked example outside the R1 template
            if corpus.tool_prob > 0:  # the tools corpus practises the call and the copy of its output
                docs.append(p.question + tool_response(p, corpus.tool_template))
            else:
                docs.append(p.question.removeprefix("Compute ").rstrip(".") + ": " + reasoning_steps(p))
            continue
        reason_p = corpus.reason_prob.get(len(p.ops), 0.5)
        if corpus.tool_prob > 0 and rng.random() < corpus.tool_prob:  # no draw at 0: the demo's corpus is unchanged
            response = tool_response(p, corpus.tool_template)
        elif rng.random() < reason_p:
            response = reasoning_response(p)
        else:
            response = guess_response(p, rng, corpus.guess_noise, corpus.untagged_guess_prob)
        docs.append(task.template.format(question=p.question) + response)
    return docs


@register_task("arith", ArithTask, verifier="arith", corpus=build_corpus)
def load(cfg: ArithTask) -> Splits:
    train = arith_rows(sample_split(cfg, "train", cfg.train_size or 4000, cfg.seed))
    test = arith_rows(sample_split(cfg, "test", cfg.test_size, cfg.seed + 1))
    return Splits(train, test, [f"task arith: {len(train)} training and {len(test)} held-out problems, generated "
                                f"(split by a hash of the question, task.test_fraction={cfg.test_fraction})"])
