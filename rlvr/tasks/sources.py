"""Rows from user data: local JSONL / JSON / parquet / CSV files, a directory written by
``Dataset.save_to_disk``, a directory of data files, or a hub dataset name (where a hub is reachable).

`SourceTask` holds the fields every data-backed kind shares; `load_source` turns them into
`Splits`: read, map columns, convert each record with the kind's ``to_row``, then split
(a separate test source or split if given, else a hash of the question).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

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
                raise ValueError(f"{file}: line {lineno} is not valid JSON: {exc}") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{file}: line {lineno} is not a JSON object")
            records.append(rec)
    return records


def read_records(source: str, split: str, subset: str | None = None, field: str = "task.path") -> list[dict]:
    """Every record of ``split`` in ``source`` as a dict; errors name ``field`` and the source."""
    p = Path(source)
    if p.is_file():
        kind = FILE_KINDS.get(p.suffix.lower())
        if kind is None:
            raise ValueError(f"{field}: {source!r} is not .jsonl, .json, .parquet or .csv")
        if p.suffix.lower() == ".jsonl":
            return _read_jsonl(p)
        from datasets import load_dataset

        try:
            return load_dataset(kind, data_files=str(p), split="train").to_list()
        except Exception as exc:  # pyarrow/datasets parse errors: keep their text, name the file
            raise ValueError(f"{field}: cannot read {source!r} as {kind}: {exc}") from None
    if p.is_dir():
        from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

        if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            data = load_from_disk(str(p))
            if isinstance(data, DatasetDict):
                if split not in data:
                    raise ValueError(f"{field}: {source!r} has no split {split!r}; it has {sorted(data)}")
                data = data[split]
            assert isinstance(data, Dataset)
            return data.to_list()
        try:
            return load_dataset(str(p), split=split).to_list()
        except Exception as exc:
            raise ValueError(f"{field}: cannot load split {split!r} from directory {source!r}: {exc}") from None
    if looks_like_hub_id(source):
        from datasets import load_dataset

        try:
            return load_dataset(source, subset, split=split).to_list()
        except Exception as exc:
            raise ValueError(f"{field}: {source!r} is not a local file or directory, and loading it from the hub "
                             f"failed ({type(exc).__name__}: {str(exc)[:200]}). Download it where the hub is "
                             "reachable (`datasets.load_dataset(...).save_to_disk(DIR)`) and point at DIR.") from None
    raise ValueError(f"{field}: no such file or directory {source!r}")


def map_columns(records: list[dict], columns: dict[str, str], where: str) -> list[dict]:
    """Rename mapped columns to their row keys; a mapped column absent from the data is an error."""
    if not records or not columns:
        return records
    present = set().union(*(r.keys() for r in records[:1000]))
    for key, col in columns.items():
        if col not in present:
            raise ValueError(f"task.columns.{key}: column {col!r} does not exist in {where}; "
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
        raise ValueError(f"task.path is required for task.kind={cfg.kind!r} (a file, a directory or a hub name)")
    columns = {**default_columns, **cfg.columns}

    def rows_of(source: str, split: str, field: str) -> list[Row]:
        records = read_records(source, split, cfg.subset, field)
        where = f"{field}={source!r}" + (f" split {split!r}" if not Path(source).is_file() else "")
        present = set().union(*(r.keys() for r in records[:1000])) if records else set()
        usable = {k: c for k, c in columns.items() if c in present or k in cfg.columns}  # defaults may be absent
        return [to_row(rec, i, where, columns) for i, rec in enumerate(map_columns(records, usable, where))]

    rows = rows_of(cfg.path, cfg.split, "task.path")
    if cfg.test_path is not None or cfg.test_split is not None:
        test = rows_of(cfg.test_path or cfg.path, cfg.test_split or cfg.split,
                       "task.test_path" if cfg.test_path else "task.path")
        train, how = rows, f"held-out rows from {cfg.test_path or cfg.path} split {cfg.test_split or cfg.split!r}"
    else:
        train = [r for r in rows if split_of(str(r["question"]), cfg.test_fraction) == "train"]
        test = [r for r in rows if split_of(str(r["question"]), cfg.test_fraction) == "test"]
        how = f"held out by a hash of the question (task.test_fraction={cfg.test_fraction})"
    n_train, n_test = len(train), len(test)
    if not train or not test:
        raise ValueError(
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
    """``rec[key]``, or a ValueError naming the row, the key and the source column."""
    value = rec.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        col = columns.get(key, key)
        raise ValueError(f"{where}: row {index} has no {key!r} (column {col!r}, map another with "
                         f"task.columns.{key}=COLUMN); keys: {sorted(rec)}")
    return value
