"""What every task kind shares: its config fields, the row contract, the hash split, the registry.

A *row* is a plain dict (JSON-serialisable, so it can travel in a checkpoint) holding
``question`` (the bare problem) and the whole verifier context (``answer``, ``tests`` and
``entry_point``, ``numbers`` and ``target``, or any column the user mapped). `rlvr.tasks.render`
adds ``prompt_text`` and ``prompt_ids``; nothing else makes a prompt.

A task kind is one file: a config class (``kind: Literal[...]`` plus its own fields) and a
loader ``load(cfg) -> Splits``, registered with ``@register_task``. The config union of
`rlvr.config` is built from this registry, so adding a kind touches nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

R1_TEMPLATE = (
    "Assistant thinks in <think> </think>, then answers in <answer> </answer>.\n"
    "User: {question}\nAssistant: <think>"
)
R1_SYSTEM_PROMPT = (
    "You are a helpful assistant. You first think about the reasoning process in your mind and then give the "
    "answer. The reasoning process and the answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively: <think> reasoning here </think> <answer> answer here </answer>."
)

Row = dict[str, Any]


class TaskSection(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskBase(TaskSection):
    """Fields every task kind has (prompt format, split sizes, prompt length)."""

    kind: str
    seed: int = Field(0, description="Seed for problem sampling and row order.")
    format: Literal["raw", "chat"] = Field(
        "raw", description="'raw': `template` around the question (base models); 'chat': the tokenizer's chat "
        "template with `system_prompt` (instruct models).")
    template: str = Field(R1_TEMPLATE, description="raw format: prompt template with a {question} slot (R1-Zero style).")
    system_prompt: str = Field(R1_SYSTEM_PROMPT, description="chat format: the system message ('' for none).")
    train_size: int | None = Field(None, ge=1, description="Most training rows used (None: all; procedural kinds "
                                   "generate this many).")
    test_size: int = Field(200, ge=1, description="Most held-out rows kept for evaluation.")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="Share of problems (by a hash of the question) held "
                                 "out for evaluation when no separate test split is given.")
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Rows whose prompt is longer are dropped at load time (count printed). None: what "
        "fits the model's context beside `sampling.max_tokens`.")
    strict: bool = Field(False, description="Stop at load time instead of dropping rows whose prompt is too long.")

    @model_validator(mode="after")
    def _check_template(self) -> TaskBase:
        if "{question}" not in self.template:
            raise ValueError("task.template must contain '{question}'")
        return self


@dataclass
class Splits:
    """A task's rows, and a line per split saying where they came from (printed at load time)."""

    train: list[Row]
    test: list[Row]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TaskKind:
    """A registry entry: the config class, the loader, and the verifier that rewards it by default."""

    name: str
    config: type[TaskBase]
    load: Callable[[Any], Splits]
    verifier: str
    corpus: Callable[..., list[str]] | None = None  # procedural kinds: pretraining documents


TASKS: dict[str, TaskKind] = {}


def register_task(name: str, config: type[TaskBase], verifier: str,
                  corpus: Callable[..., list[str]] | None = None) -> Callable:
    """``@register_task("gsm8k", GSM8KTask, verifier="math")`` above ``def load(cfg) -> Splits``."""

    def deco(load: Callable[[Any], Splits]) -> Callable[[Any], Splits]:
        if name in TASKS:
            raise ValueError(f"task kind {name!r} is already registered")
        TASKS[name] = TaskKind(name, config, load, verifier, corpus)
        return load

    return deco


def split_of(question: str, test_fraction: float) -> str:
    """'test' or 'train', from a hash of the question: stable across runs, stages and machines."""
    h = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") / 2**64
    return "test" if h < test_fraction else "train"
