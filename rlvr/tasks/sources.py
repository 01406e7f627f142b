"""Rows from user data: local JSONL / JSON / parquet / CSV files, a directory written by
``Dataset.save_to_disk``, a directory of data files, or a hub dataset name (where a hub is reachable).

`SourceTask` holds the fields every data-backed kind shares; `load_source` turns them into
`Splits`: read, map columns, convert each record with the kind's ``to_row``, then split
(a separate test source or split if given, else a hash of the question).

A question may be text or, as in TRL's conversational datasets, a list of chat messages
(``[{"role": "user", "content": ...}, ...]``; map TRL's ``prompt`` or ``messages`` column with
``task.columns.question=...``). Such a prompt is rendered through the tokenizer's chat template,
so it needs ``task.format=chat``; a conversation that ends with the assistant's reply (TRL's
``messages``) is cut before that reply, which becomes the row's ``answer`` when the data has no
answer column. Nothing is ever ``str()``-ed into a template.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from rlvr.errors import DataError
from rlvr.tasks.base import Row, Splits, TaskBase, split_of

FILE_KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class SourceTask(TaskBase):
    """Fields of a task read from data."""

    path: str | None = Field(None, description="Data: a .jsonl/.json/.parquet/.csv file, a `save_to_disk` "
                             "directory, a directory of data files, or a hub dataset name.")
    subset: str | None = Field(None, description="Hub dataset configuration name (e.g. 'main' for gsm8k).")
    split: str = Field("train", description="Split read for training (directories and hub datasets).")
    test_path: str | None = Field(None, description="Separate held-out data (same forms as `path`).")
    test_split: str | None = Field(None, description="Held-out split of `path` (e.g. 'test'); else a hash split.")
    columns: dict[str, str] = Field(default_factory=dict, description="Row key -> source column, e.g. "
                                    "{question: problem, answer: solution}; unmapped keys use their own name.")


    @model_validator(mode="after")
    def _check_local_paths(self) -> SourceTask:
        for key in ("path", "test_path"):
            value = getattr(self, key)
            if value is not None and not Path(value).exists() and not looks_like_hub_id(value):
                raise ValueError(f"task.{key}: no such file or directory {value!r}")
        return self


def looks_like_hub_id(source: str) -> bool:
    """``org/name`` with no file suffix: a hub dataset, not a local path."""
    return (source.count("/") == 1 and not source.startswith((".", "/", "~"))
            and Path(source).suffix.lower() not in FILE_KINDS)


def _read_jsonl(file: Path) -> list[dict]:
    records = []
    with file.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{file}: line {lineno} is not valid JSON: {exc}") from None
            if not isinstance(rec, dict):
                raise DataError(f"{file}: line {lineno} is not a JSON object")
            records.append(rec)
    return records


def read_records(source: str, split: str, subset: str | None = None, field: str = "task.path") -> list[dict]:
    """Every record of ``split`` in ``source`` as a dict; errors name ``field`` and the source."""
    p = Path(source)
    if p.is_file():
        kind = FILE_KINDS.get(p.suffix.lower())
        if kind is None:
            raise DataError(f"{field}: {source!r} is not .jsonl, .json, .parquet or .csv")
        if p.suffix.lower() == ".jsonl":
            return _read_jsonl(p)
        from datasets import load_dataset

        try:
            return load_dataset(kind, data_files=str(p), split="train").to_list()
        except Exception as exc:  # pyarrow/datasets parse errors: keep their text, name the file
            raise DataError(f"{field}: cannot read {source!r} as {kind}: {exc}") from None
    if p.is_dir():
        from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

        if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            data = load_from_disk(str(p))
            if isinstance(data, DatasetDict):
                if split not in data:
                    raise DataError(f"{field}: {source!r} has no split {split!r}; it has {sorted(data)}")
                data = data[split]
            assert isinstance(data, Dataset)
            return data.to_list()
        try:
            return load_dataset(str(p), split=split).to_list()
        except Exception as exc:
            raise DataError(f"{field}: cannot load split {split!r} from directory {source!r}: {exc}") from None
    if looks_like_hub_id(source):
        from datasets import load_dataset

        try:
            return load_dataset(source, subset, split=split).to_list()
        except Exception as exc:
            raise DataError(f"{field}: {source!r} is not a local file or directory, and loading it from the hub "
                            f"failed ({type(exc).__name__}: {str(exc)[:200]}). Download it where the hub is "
                            "reachable (`datasets.load_dataset(...).save_to_disk(DIR)`) and point at DIR.") from None
    raise DataError(f"{field}: no such file or directory {source!r}")


def map_columns(records: list[dict], columns: dict[str, str], where: str) -> list[dict]:
    """Rename mapped columns to their row keys; a mapped column absent from the data is an error."""
    if not records or not columns:
        return records
    present = set().union(*(r.keys() for r in records[:1000]))
    for key, col in columns.items():
        if col not in present:
            raise DataError(f"task.columns.{key}: column {col!r} does not exist in {where}; "
                            f"columns: {sorted(present)}")
    out = []
    for rec in records:
        row = {k: v for k, v in rec.items() if k not in columns.values()}
        row.update({key: rec.get(col) for key, col in columns.items()})
        out.append(row)
    return out


def load_source(cfg: SourceTask, to_row: Callable[[dict, int, str, dict], Row], default_columns: dict[str, str]) -> Splits:
    """Read ``cfg.path`` (and the held-out source), convert each record, split, cap the sizes.

    ``to_row(record, index, where, columns)`` builds one row from a mapped record; it raises ValueError
    naming the row and key when the record lacks what the kind needs.
    """
    if cfg.path is None:
        raise DataError(f"task.path is required for task.kind={cfg.kind!r} (a file, a directory or a hub name)")
    columns = {**default_columns, **cfg.columns}

    def rows_of(source: str, split: str, field: str) -> list[Row]:
        records = read_records(source, split, cfg.subset, field)
        where = f"{field}={source!r}" + (f" split {split!r}" if not Path(source).is_file() else "")
        present = set().union(*(r.keys() for r in records[:1000])) if records else set()
        usable = {k: c for k, c in columns.items() if c in present or k in cfg.columns}  # defaults may be absent
        rows = [to_row(split_conversation(rec), i, where, columns)
                for i, rec in enumerate(map_columns(records, usable, where))]
        chat = next((i for i, r in enumerate(rows) if isinstance(r.get("question"), list)), None)
        if chat is not None and cfg.format != "chat":
            raise DataError(f"{where}: row {chat}: 'question' (column {columns.get('question', 'question')!r}) holds "
                            "chat messages, which are rendered through the tokenizer's chat template: set "
                            "task.format=chat (task.format=raw puts text into task.template)")
        return rows

    rows = rows_of(cfg.path, cfg.split, "task.path")
    if cfg.test_path is not None or cfg.test_split is not None:
        test = rows_of(cfg.test_path or cfg.path, cfg.test_split or cfg.split,
                       "task.test_path" if cfg.test_path else "task.path")
        train, how = rows, f"held-out rows from {cfg.test_path or cfg.path} split {cfg.test_split or cfg.split!r}"
    else:
        train = [r for r in rows if split_of(question_text(r["question"]), cfg.test_fraction) == "train"]
        test = [r for r in rows if split_of(question_text(r["question"]), cfg.test_fraction) == "test"]
        how = f"held out by a hash of the question (task.test_fraction={cfg.test_fraction})"
    n_train, n_test = len(train), len(test)
    if not train or not test:
        raise DataError(
            f"task {cfg.kind!r}: {cfg.path!r} gave {n_train} training and {n_test} held-out rows ({how}); both "
            "splits need at least one row: give more rows, or a held-out set with task.test_path / task.test_split")
    train = train[: cfg.train_size] if cfg.train_size else train
    test = test[: cfg.test_size]
    note = (f"task {cfg.kind}: {len(rows)} rows from {cfg.path!r}; train {len(train)}"
            + (f" (of {n_train})" if len(train) < n_train else "")
            + f", held out {len(test)}" + (f" (of {n_test}, task.test_size)" if len(test) < n_test else "")
            + f"; {how}")
    return Splits(train, test, [note])


def need(rec: dict, key: str, index: int, where: str, columns: dict[str, str]) -> Any:
    """``rec[key]``, or a DataError naming the row, the key and the source column (and saying
    whether the value is absent or null, or empty)."""
    value = rec.get(key)
    empty = (isinstance(value, str) and not value.strip()) or (isinstance(value, (list, dict)) and not value)
    if value is None or empty:
        col = columns.get(key, key)
        if empty:
            raise DataError(f"{where}: row {index} has an empty {key!r} (column {col!r}); fill it, drop the row, or "
                            f"map another column with task.columns.{key}=COLUMN")
        hint = ""
        if key == "question" and (conv := next((c for c in ("prompt", "messages") if _is_messages(rec.get(c))), None)):
            hint = f"; its {conv!r} column holds chat messages (TRL's format): task.columns.question={conv}"
        raise DataError(f"{where}: row {index} has no {key!r} (column {col!r}, map another with "
                        f"task.columns.{key}=COLUMN); keys: {sorted(rec)}{hint}")
    return value


ROLES = ("system", "user", "assistant", "tool")


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def question_text(question: str | list[dict]) -> str:
    """A question as one string (chat messages as canonical JSON), for the hash split; text is unchanged,
    so the split of text questions is what it always was."""
    return question if isinstance(question, str) else json.dumps(question, sort_keys=True, ensure_ascii=False)


def split_conversation(rec: dict) -> dict:
    """TRL's ``messages`` rows: a question that ends with the assistant's reply is cut before it, and
    the reply becomes ``answer`` when the row has none; an ``answer`` that is a list of messages (TRL's
    conversational ``completion``) becomes its assistant text."""
    question, answer = rec.get("question"), rec.get("answer")
    if _is_messages(answer):
        rec = {**rec, "answer": "\n".join(str(m.get("content", "")) for m in answer if m.get("role") == "assistant")}
    if _is_messages(question) and question[-1].get("role") == "assistant":
        reply = question[-1].get("content")
        rec = {**rec, "question": question[:-1]}
        if rec.get("answer") in (None, "") and isinstance(reply, str):
            rec["answer"] = reply
    return rec


def prompt_of(rec: dict, index: int, where: str, columns: dict[str, str]) -> str | list[dict[str, str]]:
    """The row's question: text, or a list of chat messages checked to be rendered as a prompt (each a
    ``{"role", "content"}`` with a known role and text content, ending with the user's turn)."""
    value = need(rec, "question", index, where, columns)
    col = columns.get("question", "question")
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        if isinstance(value, dict):
            raise DataError(f"{where}: row {index}: 'question' (column {col!r}) is a mapping, not text or a list of "
                            "chat messages")
        return str(value)  # a number
    for j, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: row {index}: 'question' (column {col!r}) is a list, but its item {j} is not a "
                            f"chat message {{'role': one of {', '.join(ROLES)}, 'content': text}}: {str(m)[:120]}")
    if value[-1]["role"] != "user":
        raise DataError(f"{where}: row {index}: the chat messages of 'question' (column {col!r}) end with a "
                        f"{value[-1]['role']!r} turn; a prompt ends with the user's turn")
    return [{"role": m["role"], "content": m["content"]} for m in value]
