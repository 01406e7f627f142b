"""Tasks: one file per kind behind a registry (`TASKS`), rows carrying the whole verifier context.

``load_task(cfg)`` reads or generates a kind's train/test rows; ``env_rows`` makes them ready for the
run's environment and ``check_rows`` for its rubric, failing at load time and naming the row when one
lacks what the environment or a verifier needs;
``render`` is the one place a prompt is made (raw template or chat template), for RL,
evaluation and every other stage; ``prepare_rows`` renders, tokenizes and drops prompts too
long for the model. Built-in kinds: arith, countdown, gsm8k, math, code, hf, guess_number. A new kind is a
module in this package that calls ``register_task`` (imported here by name scan).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Sequence
from typing import Any

from rlvr.errors import DataError
from rlvr.tasks.base import R1_SYSTEM_PROMPT, R1_TEMPLATE, TASKS, Row, Splits, TaskBase, register_task, split_of

for _mod in pkgutil.iter_modules(__path__):  # every kind registers itself on import
    if _mod.name not in ("base", "sources"):
        importlib.import_module(f"{__name__}.{_mod.name}")

from rlvr.tasks.arith import ArithProblem, ArithTask, sample_problem, sample_split  # noqa: E402

__all__ = ["TASKS", "Row", "Splits", "TaskBase", "ArithTask", "ArithProblem", "R1_TEMPLATE", "R1_SYSTEM_PROMPT",
           "register_task", "split_of", "sample_problem", "sample_split", "load_task", "check_rows", "env_rows",
           "split_where", "render", "prepare_rows", "default_verifier"]


def default_verifier(cfg: TaskBase) -> str:
    """The verifier that rewards this task when the config names none."""
    return getattr(cfg, "verifier", None) or TASKS[cfg.kind].verifier


def load_task(cfg: TaskBase, verifiers: Iterable[Any] = (), env: Any = None) -> Splits:
    """Train/test rows of ``cfg``; with ``env`` (an ``env:`` config), every row made ready for that
    environment (``prepare_row``: what it needs is checked, what it derives is added); with ``verifiers``,
    every row is then checked to carry what they need. Both fail before any model loads."""
    splits = TASKS[cfg.kind].load(cfg)
    verifiers = list(verifiers)
    for name in ("train", "test"):
        where = split_where(cfg, name)
        if env is not None:
            setattr(splits, name, env_rows(getattr(splits, name), env, where))
        check_rows(getattr(splits, name), verifiers, where)
    return splits


def split_where(cfg: TaskBase, split: str) -> str:
    """How errors name a split: the task kind, the split and, for data read from files, where from."""
    source = getattr(cfg, "test_path", None) if split == "test" else None
    source = source or getattr(cfg, "path", None)
    return f"task {cfg.kind!r} {split} split" + (f" (from {source!r})" if source else "")


def env_rows(rows: Sequence[Row], env: Any, where: str) -> list[Row]:
    """``rows`` as the environment ``env`` runs them (``env.prepare_row``); a row it cannot run is a
    DataError naming the environment kind, ``where`` (the split) and the row."""
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(env.prepare_row(row))
        except (ValueError, TypeError) as exc:
            raise DataError(f"{where}: row {i} cannot run in env.kind={env.kind!r}: {exc}; row keys: "
                            f"{sorted(row)}") from None
    return out


def check_rows(rows: Sequence[Row], verifiers: Iterable[Any], where: str) -> None:
    """A DataError naming the first row, verifier and key missing, before any model loads."""
    from verifiers import missing_keys

    verifiers = list(verifiers)
    for i, row in enumerate(rows):
        for v in verifiers:
            missing = missing_keys(v, row)
            if missing:
                raise DataError(f"{where}: row {i} lacks {', '.join(map(repr, missing))}, which verifier "
                                f"{v.name!r} needs (map a column with task.columns.<key>=COLUMN); "
                                f"row keys: {sorted(row)}")


def render(question: str | list[dict[str, str]], cfg: TaskBase, tokenizer: Any = None,
           tools: list[dict] | None = None) -> str:
    """The prompt text for ``question``: the raw template, or the tokenizer's chat template. A
    question that is a list of chat messages (TRL's conversational format) always goes through the
    chat template, with ``system_prompt`` first when it has no system turn of its own. ``tools``: JSON
    schemas of the environment's tools (``EnvBase.tools()``), given to the chat template's ``tools=``;
    they need task.format=chat and a template that renders them."""
    if tools and cfg.format != "chat":
        raise DataError("env.call_format=hermes needs task.format=chat: the tools are described to the model, and "
                        "its calls answered, by the tokenizer's chat template (task.format=raw has none; use "
                        "env.call_format=tagged with raw prompts)")
    if isinstance(question, list):
        if cfg.format != "chat":
            raise DataError("a question of chat messages needs task.format=chat (it is rendered through the "
                            "tokenizer's chat template; task.format=raw puts text into task.template)")
        messages = list(question)
    elif cfg.format == "raw":
        return cfg.template.format(question=question)
    else:
        messages = [{"role": "user", "content": question}]
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise DataError("task.format='chat' needs a tokenizer with a chat template; this model's tokenizer has "
                        "none (use task.format=raw with text questions, or a model whose tokenizer_config.json has "
                        "a chat_template)")
    if cfg.system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    if not tools:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    if text == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True):
        raise DataError("env.call_format=hermes: this tokenizer's chat template ignores tools= (the prompt would not "
                        "tell the model its tools); use a model whose template supports tool calling, or "
                        "env.call_format=tagged")
    return text


def prepare_rows(splits: Splits, cfg: TaskBase, tokenizer: Any, max_prompt_tokens: int,
                 tools: list[dict] | None = None) -> list[str]:
    """Add ``prompt_text`` and ``prompt_ids`` to every row (in place) and drop rows whose prompt
    is longer than ``max_prompt_tokens`` (an error with ``task.strict``); returns notes to print.
    ``tools``: the environment's tool schemas for the chat template (see ``render``).

    The ids are what both the engine and the learner use, so they see the same prompt tokens
    (the chat template already holds any BOS: no special tokens are added here)."""
    notes = []
    for name in ("train", "test"):
        rows, kept = getattr(splits, name), []
        for i, row in enumerate(rows):
            row["prompt_text"] = render(row["question"], cfg, tokenizer, tools)
            row["prompt_ids"] = tokenizer(row["prompt_text"], add_special_tokens=False)["input_ids"]
            if len(row["prompt_ids"]) <= max_prompt_tokens:
                kept.append(row)
            elif cfg.strict:
                raise DataError(f"task {name} split: row {i} has a {len(row['prompt_ids'])}-token prompt > "
                                f"task.max_prompt_tokens={max_prompt_tokens} (task.strict is set)")
        if len(kept) < len(rows):
            notes.append(f"task {name} split: dropped {len(rows) - len(kept)} of {len(rows)} rows whose prompt is "
                         f"longer than {max_prompt_tokens} tokens (task.max_prompt_tokens; task.strict=true stops instead)")
        if not kept:
            raise DataError(f"task {name} split: every prompt is longer than {max_prompt_tokens} tokens "
                            "(task.max_prompt_tokens, or a model with a longer context)")
        setattr(splits, name, kept)
    return notes
