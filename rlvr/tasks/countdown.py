"""``countdown`` (TinyZero): reach ``target`` from ``numbers`` with + - * /, each number used at most once.

Procedural by default: numbers are drawn, a random expression over them (exact division
only) gives the target, so every problem is solvable. With ``task.path`` the rows come from
data instead (TinyZero's parquet has ``nums`` and ``target``).
"""

from __future__ import annotations

import ast
import random
from typing import Literal

from pydantic import Field, model_validator

from rlvr.errors import DataError
from rlvr.tasks.base import Row, Splits, register_task, split_of
from rlvr.tasks.sources import SourceTask, load_source, need

QUESTION = ("Using the numbers {numbers}, write an equation that equals {target}. You may use +, -, * and /, "
            "and each number at most once. Give only the expression in the answer, e.g. <answer> (1 + 2) * 3 </answer>.")
COLUMNS = {"numbers": "nums", "target": "target"}


class CountdownTask(SourceTask):
    kind: Literal["countdown"] = "countdown"
    min_numbers: int = Field(3, ge=2, le=6, description="Procedural: fewest numbers per problem.")
    max_numbers: int = Field(4, ge=2, le=6, description="Procedural: most numbers per problem.")
    max_number: int = Field(99, ge=2, description="Procedural: numbers are drawn from [1, max_number].")
    max_target: int = Field(100, ge=1, description="Procedural: targets lie in [1, max_target].")
    train_size: int | None = Field(4000, ge=1, description="Procedural: training problems generated.")
    question: str = Field(QUESTION, description="Question text with {numbers} and {target} slots.")

    @model_validator(mode="after")
    def _check_counts(self) -> CountdownTask:
        if self.min_numbers > self.max_numbers:
            raise ValueError("task.min_numbers must be <= task.max_numbers")
        return self


def _random_expression(rng: random.Random, numbers: list[int]) -> tuple[str, int] | None:
    """Combine all ``numbers`` in random order and shape; None if a division is not exact (so every
    intermediate value is an integer, and plain ints compute it exactly)."""
    items: list[tuple[str, int]] = [(str(n), n) for n in numbers]
    while len(items) > 1:
        (sa, a), (sb, b) = items.pop(rng.randrange(len(items))), items.pop(rng.randrange(len(items)))
        op = rng.choice("+-*/")
        if op == "/":
            if b == 0 or a % b:
                return None
            value = a // b
        else:
            value = a + b if op == "+" else a - b if op == "-" else a * b
        items.append((f"({sa} {op} {sb})", value))
    return items[0]


def sample_problem(rng: random.Random, cfg: CountdownTask) -> tuple[list[int], int, str]:
    """(numbers, target, one solution)."""
    while True:
        numbers = [rng.randint(1, cfg.max_number) for _ in range(rng.randint(cfg.min_numbers, cfg.max_numbers))]
        found = _random_expression(rng, numbers)
        if found is not None and 1 <= found[1] <= cfg.max_target:
            return numbers, found[1], found[0][1:-1] if found[0].startswith("(") else found[0]


def make_row(numbers: list[int], target: int, cfg: CountdownTask, solution: str | None = None) -> Row:
    row: Row = {"question": cfg.question.format(numbers=list(numbers), target=target),
                "numbers": [int(n) for n in numbers], "target": int(target)}
    if solution is not None:
        row["solution"] = solution
    return row


def _generate(cfg: CountdownTask, split: str, count: int, seed: int) -> list[Row]:
    rng, seen, rows = random.Random(seed), set(), []
    for _ in range(200 * count + 10_000):
        if len(rows) == count:
            return rows
        numbers, target, solution = sample_problem(rng, cfg)
        row = make_row(numbers, target, cfg, solution)
        if row["question"] in seen or split_of(row["question"], cfg.test_fraction) != split:
            continue
        seen.add(row["question"])
        rows.append(row)
    raise DataError(f"task countdown: cannot find {count} distinct {split} problems; widen the ranges")


def _from_record(rec: dict, i: int, where: str, columns: dict[str, str], cfg: CountdownTask) -> Row:
    numbers, target = need(rec, "numbers", i, where, columns), need(rec, "target", i, where, columns)
    if isinstance(numbers, str):
        try:
            numbers = ast.literal_eval(numbers) if numbers.strip().startswith("[") else numbers.split()
        except (ValueError, SyntaxError):
            raise DataError(f"{where}: row {i}: 'numbers' {numbers!r} is not a list of integers") from None
    try:
        return make_row([int(n) for n in numbers], int(target), cfg)
    except (TypeError, ValueError):
        raise DataError(f"{where}: row {i}: 'numbers' must be integers and 'target' an integer, "
                        f"got {numbers!r} and {target!r}") from None


@register_task("countdown", CountdownTask, verifier="countdown")
def load(cfg: CountdownTask) -> Splits:
    if cfg.path is not None:
        return load_source(cfg, lambda rec, i, where, cols: _from_record(rec, i, where, cols, cfg), COLUMNS)
    train = _generate(cfg, "train", cfg.train_size or 4000, cfg.seed)
    test = _generate(cfg, "test", cfg.test_size, cfg.seed + 1)
    return Splits(train, test, [f"task countdown: {len(train)} training and {len(test)} held-out problems, generated "
                                f"({cfg.min_numbers}-{cfg.max_numbers} numbers in [1, {cfg.max_number}], "
                                f"split by a hash of the question)"])
