"""Full-state training checkpoints, written atomically, and the checks that make resume safe.

A checkpoint is a directory ``run_dir/checkpoints/step_000012/`` holding everything the loop
needs to continue as if it had never stopped:

* ``learner.pt``: the policy's model (a LoRA policy: its adapter), optimiser, LR schedule and reference;
* ``critic.pt``: PPO's critic and its optimiser (when present);
* ``rng.pt``: python, numpy and torch RNG states;
* ``state.json``: step, prompt-sampler position, evaluations so far, rollouts already drawn for
  upcoming steps (async mode), and a format version;
* ``config.yaml``: the run's configuration.

Writing is atomic: everything goes into ``checkpoints/.tmp-step_000012``, every file and the
directory are fsynced, then the directory is renamed into place and its parent fsynced. A
process killed mid-write leaves only a ``.tmp-*`` directory, which is never read and is
removed by the next save or resume; the previous checkpoint is untouched. The newest
``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

FORMAT_VERSION = 2
_STEP_DIR = re.compile(r"^step_(\d+)$")

# Fields that may change between a run and its resume: they do not change what is trained.
RESUME_MAY_CHANGE = (
    "run_dir", "train.steps", "train.threads", "logging.", "checkpoint.", "eval.every",
    "engine.kv_cache_gib", "engine.max_logprob_diff", "engine.threads", "engine.gpu_memory_utilization",
    "rewards.workers", "alarms.",
)


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def rng_state() -> dict[str, Any]:
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | Path, step: int, *, tensors: dict[str, Any], state: dict[str, Any],
                    config_yaml: str, keep: int) -> Path:
    """Write ``tensors`` (name -> torch-serialisable object, one ``name.pt`` each), ``state``
    (JSON) and the config atomically as checkpoint ``step``; prune to the newest ``keep``."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-{final.name}"
    tmp.mkdir()
    for name, obj in tensors.items():
        torch.save(obj, tmp / f"{name}.pt")
    (tmp / "state.json").write_text(json.dumps({"format": FORMAT_VERSION, "step": step, **state}))
    (tmp / "config.yaml").write_text(config_yaml)
    for f in tmp.iterdir():
        _fsync_path(f)
    _fsync_path(tmp)
    if final.exists():  # a re-run of the same step after a resume
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_path(root)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tensors, state)`` of a checkpoint directory written by ``save_checkpoint``."""
    path = Path(path)
    state_file = path / "state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} is incomplete: no state.json")
    state = json.loads(state_file.read_text())
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {str(path)!r}: format {state.get('format')!r}, this rlvr reads {FORMAT_VERSION}")
    tensors = {}
    for f in sorted(path.glob("*.pt")):
        # weights_only: a checkpoint holds tensors, numbers, strings and containers, never code
        tensors[f.stem] = torch.load(f, map_location="cpu", weights_only=True)
    return tensors, state


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def config_changes(saved_yaml: str, current: dict[str, Any]) -> list[str]:
    """Fields whose values differ between a checkpoint's config and ``current`` (a model_dump),
    as ``'field: old -> new'``, ignoring the fields in ``RESUME_MAY_CHANGE``."""
    old, new = _flatten(yaml.safe_load(saved_yaml)), _flatten(json.loads(json.dumps(current)))
    changed = []
    for key in sorted(set(old) | set(new)):
        if any(key == f or (f.endswith(".") and key.startswith(f)) for f in RESUME_MAY_CHANGE):
            continue
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            changed.append(f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}")
    return changed
