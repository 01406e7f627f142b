"""Tasks: procedural arithmetic chains and user data from JSONL/parquet, as `datasets.Dataset`s.

Every row carries ``prompt`` (the full R1-Zero prompt, ending in ``<think>``), ``answer``
(the reference the verifier needs) and ``question`` (the bare problem). Train and test
splits of the procedural task are disjoint by construction: a problem's split is a hash
of its text, so no test problem can appear in training data or in the pretraining corpus.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # datasets is imported lazily: it is slow to import
    from datasets import Dataset

    from rlvr.config import TaskConfig

R1_TEMPLATE = (
    "Assistant thinks in <think> </think>, then answers in <answer> </answer>.\n"
    "User: {question}\nAssistant: <think>"
)


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


def split_of(question: str, test_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") / 2**64
    return "test" if h < test_fraction else "train"


def sample_problem(rng: random.Random, cfg: TaskConfig, n_ops: int | None = None) -> ArithProblem:
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


def sample_split(cfg: TaskConfig, split: str, count: int, seed: int) -> list[ArithProblem]:
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


def arith_rows(problems: list[ArithProblem], template: str) -> list[dict]:
    return [
        {"prompt": template.format(question=p.question), "question": p.question,
         "answer": str(p.answer), "n_ops": len(p.ops)}
        for p in problems
    ]


def load_file_rows(path: str, prompt_column: str, answer_column: str, template: str) -> list[dict]:
    """Rows from a local JSONL or parquet file; ``template`` wraps the prompt column."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"task.path: no such file {path!r}")
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        records = pq.read_table(file).to_pylist()
    else:
        records = []
        with file.open() as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}: line {lineno} is not valid JSON: {exc}") from exc
    rows = []
    for i, rec in enumerate(records):
        for col, field in ((prompt_column, "prompt_column"), (answer_column, "answer_column")):
            if col not in rec or rec[col] is None or str(rec[col]).strip() == "":
                raise ValueError(f"{path}: row {i} has no {col!r} (task.{field}); keys: {sorted(rec)}")
        q = str(rec[prompt_column])
        rows.append({"prompt": template.format(question=q), "question": q, "answer": str(rec[answer_column]), "n_ops": 0})
    return rows


def validate_rows(rows: list[dict], where: str) -> None:
    for i, row in enumerate(rows):
        for key in ("prompt", "answer"):
            if key not in row or row[key] is None or str(row[key]) == "":
                raise ValueError(f"{where}: row {i} has no {key!r}")


def load_task(cfg: TaskConfig) -> dict[str, Dataset]:
    """{"train": Dataset, "test": Dataset} for the configured task."""
    from datasets import Dataset

    if cfg.name == "arith":
        train = arith_rows(sample_split(cfg, "train", cfg.train_size, cfg.seed), cfg.template)
        test = arith_rows(sample_split(cfg, "test", cfg.test_size, cfg.seed + 1), cfg.template)
    else:  # "file"
        rows = load_file_rows(cfg.path, cfg.prompt_column, cfg.answer_column, cfg.template)
        rng = random.Random(cfg.seed)
        rng.shuffle(rows)
        n_test = min(cfg.test_size, len(rows) // 5) if cfg.test_path is None else 0
        test = rows[:n_test]
        train = rows[n_test:]
        if cfg.test_path is not None:
            test = load_file_rows(cfg.test_path, cfg.prompt_column, cfg.answer_column, cfg.template)
    validate_rows(train, "train split")
    validate_rows(test, "test split")
    return {"train": Dataset.from_list(train), "test": Dataset.from_list(test)}
