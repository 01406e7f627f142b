"""``reasoning_gym``: a weighted mix of reasoning-gym's procedural datasets, scored by each dataset's own scorer.

``task.datasets`` lists ``{name, weight, options}``: ``options`` go to ``reasoning_gym.create_dataset(name,
**options)`` (each dataset's generator config: ``min_terms``, ``max_digits``, ...). A dataset's share of the
``train_size`` (and ``test_size``) rows is its weight over the total, rounded by largest remainder, so every
dataset with a weight gets its share whatever the order. Each dataset draws items from a generator seeded
from ``task.seed`` and its name (the same rows on every machine and run); an item's split is a hash of its
question, as in the other procedural kinds, so no held-out question is ever trained on, and a question seen
twice is kept once.

A row holds ``question`` (the item's question and ``answer_instruction``), ``dataset`` (its name),
``entry`` (the item in its JSON form, `verifiers.reasoning_gym.encode_entry`: what the scorer needs,
through Ray workers and checkpoints), ``options`` (the generator options, which a few scorers read) and
``answer`` (the item's reference answer, when it has a single one). The ``reasoning_gym`` verifier reads the
answer from the completion's ``<answer>`` tags and asks the dataset's ``score_answer``.

The ``corpus`` (``rlvr pretrain`` with this task) is the R1 prompts of the training rows followed by a
tagged answer: the item's own answer in ``corpus.reason_prob[0]`` of the documents (default 0.5), else the
answer of another item of the same dataset (a plausible wrong answer). A micro base model learns the format
and, for each question, a spread of answers with the right one among them: headroom that RL turns into
reward. (reasoning-gym has no worked solutions, so unlike ``arith`` the corpus teaches no method: this is a
memorisation demo of the machinery, not of reasoning.)
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Literal

from pydantic import Field, field_validator

from rlvr.errors import DataError
from rlvr.tasks.base import Row, Splits, TaskBase, TaskSection, register_task, split_of

PACKAGE = "reasoning-gym==0.1.25"
ANSWER_INSTRUCTION = "Give only the final answer inside <answer> </answer>, in the form the question asks for."
MAX_DRAWS_PER_ROW = 50  # a dataset whose generator cannot supply this many distinct questions per row is an error


class DatasetSpec(TaskSection):
    """One dataset of the mix."""

    name: str = Field(description="A reasoning-gym dataset name (reasoning_gym.factory.DATASETS), e.g. 'chain_sum'.")
    weight: float = Field(1.0, gt=0, description="Share of the rows, relative to the other datasets' weights.")
    options: dict[str, Any] = Field(default_factory=dict, description="Generator options, passed to "
                                    "reasoning_gym.create_dataset(name, **options) (not seed or size).")

    @field_validator("options")
    @classmethod
    def _no_seed_or_size(cls, options: dict[str, Any]) -> dict[str, Any]:
        clash = sorted({"seed", "size"} & set(options))
        if clash:
            raise ValueError(f"options {clash} are set by the task (task.seed, task.train_size/test_size)")
        json.dumps(options)  # rows carry them: they must be JSON
        return options


class ReasoningGymTask(TaskBase):
    kind: Literal["reasoning_gym"] = "reasoning_gym"
    datasets: list[DatasetSpec] = Field(min_length=1, description="The mix: a list of {name, weight, options}.")
    train_size: int | None = Field(2000, ge=1, description="Training rows generated (split among the datasets by "
                                   "weight).")
    answer_instruction: str = Field(ANSWER_INSTRUCTION, description="Appended to every question ('' for none).")

    @field_validator("datasets")
    @classmethod
    def _distinct(cls, datasets: list[DatasetSpec]) -> list[DatasetSpec]:
        names = [d.name for d in datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"a dataset is listed twice in {names}; give one entry per dataset")
        return datasets


def shares(weights: list[float], total: int) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder; ties to the earlier dataset)."""
    exact = [w * total / sum(weights) for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "big")


def _import_reasoning_gym():
    try:
        import reasoning_gym
    except ImportError:
        raise DataError(f"task.kind=reasoning_gym needs the reasoning-gym package: pip install '{PACKAGE}'") from None
    return reasoning_gym


def generator(spec: DatasetSpec, seed: int, size: int):
    """reasoning-gym's dataset for ``spec``, seeded from ``seed`` and the dataset's name."""
    rg = _import_reasoning_gym()
    from reasoning_gym.factory import DATASETS

    if spec.name not in DATASETS:
        raise DataError(f"task.datasets: no reasoning-gym dataset {spec.name!r}; known: {', '.join(sorted(DATASETS))}")
    try:
        return rg.create_dataset(spec.name, seed=_seed(seed, spec.name), size=size, **spec.options)
    except (TypeError, ValueError, AssertionError) as exc:
        raise DataError(f"task.datasets: {spec.name} rejects options {spec.options}: {exc}") from None


def make_row(spec: DatasetSpec, entry: dict, cfg: ReasoningGymTask) -> Row:
    from verifiers.reasoning_gym import encode_entry

    question = entry["question"].rstrip()
    if cfg.answer_instruction:
        question = f"{question}\n{cfg.answer_instruction}"
    try:
        encoded = encode_entry(entry)
    except TypeError as exc:
        raise DataError(f"task.datasets: {spec.name}: {exc}") from None
    row: Row = {"question": question, "dataset": spec.name, "entry": encoded, "options": dict(spec.options)}
    if isinstance(entry.get("answer"), str):
        row["answer"] = entry["answer"]
    return row


def _draw(spec: DatasetSpec, cfg: ReasoningGymTask, want: dict[str, int]) -> dict[str, list[dict]]:
    """Distinct items of ``spec`` for each split, ``want[split]`` of each, in generation order."""
    need = sum(want.values())
    limit = MAX_DRAWS_PER_ROW * need + 1000
    ds = generator(spec, cfg.seed, limit)
    got: dict[str, list[dict]] = {split: [] for split in want}
    seen: set[str] = set()
    for idx in range(limit):
        if all(len(got[s]) >= want[s] for s in want):
            return got
        entry = ds[idx]
        question = entry["question"]
        split = split_of(question, cfg.test_fraction)
        if question in seen or len(got[split]) >= want[split]:
            continue
        seen.add(question)
        got[split].append(entry)
    short = {s: f"{len(got[s])}/{want[s]}" for s in want}
    raise DataError(f"task.datasets: {spec.name} gave too few distinct questions in {limit} draws ({short}); "
                    f"widen its options {spec.options} or lower task.train_size/test_size")


def sample_rows(cfg: ReasoningGymTask) -> tuple[list[Row], list[Row]]:
    weights = [d.weight for d in cfg.datasets]
    train_counts = shares(weights, cfg.train_size or 2000)
    test_counts = shares(weights, cfg.test_size)
    train: list[Row] = []
    test: list[Row] = []
    for spec, n_train, n_test in zip(cfg.datasets, train_counts, test_counts):
        got = _draw(spec, cfg, {"train": n_train, "test": n_test})
        train += [make_row(spec, e, cfg) for e in got["train"]]
        test += [make_row(spec, e, cfg) for e in got["test"]]
    rng = random.Random(cfg.seed)  # mixed, so a prefix of the rows (test_size, eval.num_prompts) holds every dataset
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def build_corpus(cfg) -> list[str]:
    """Pretraining documents (prompt + response, no EOS) over the task's training rows only; ``cfg`` is a
    `rlvr.config.PretrainConfig` whose ``task`` is a `ReasoningGymTask`."""
    task, corpus = cfg.task, cfg.corpus
    rng = random.Random(cfg.train.seed)
    right = corpus.reason_prob.get(0, 0.5)
    rows = [r for r in sample_rows(task)[0] if "answer" in r]
    if not rows:
        raise DataError("task.datasets: no item has a single reference answer to build a corpus from")
    answers: dict[str, list[str]] = {}
    for r in rows:
        answers.setdefault(r["dataset"], []).append(r["answer"])
    docs: list[str] = []
    for _ in range(corpus.num_docs):
        row = rng.choice(rows)
        answer = row["answer"]
        if rng.random() >= right:  # a plausible wrong answer: another item's, of the same dataset
            others = [a for a in answers[row["dataset"]] if a != answer]
            answer = rng.choice(others) if others else answer
        docs.append(f"{task.template.format(question=row['question'])} </think> <answer>{answer}</answer>")
    return docs


@register_task("reasoning_gym", ReasoningGymTask, verifier="reasoning_gym", corpus=build_corpus)
def load(cfg: ReasoningGymTask) -> Splits:
    train, test = sample_rows(cfg)
    mix = ", ".join(f"{d.name} x{d.weight:g}" for d in cfg.datasets)
    return Splits(train, test, [f"task reasoning_gym: {len(train)} training and {len(test)} held-out items generated "
                                f"from {mix} (split by a hash of the question, task.test_fraction={cfg.test_fraction})"])
