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
``keep`` checkpoints are kept. A write the file system refuses (disk full, read-only) removes the
partial directory and raises a `StorageError` naming the file and the last complete checkpoint
(torch's own writer would say only ``unexpected pos``: every byte goes through ``os.write`` here).

``check_run_dir`` refuses, before any data or model loads, a run directory that cannot be
written, that holds an earlier run's checkpoints (without ``--resume`` / ``--overwrite``), or
that has none to resume from.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

FORMAT_VERSION = 2
_STEP_DIR = re.compile(r"^step_(\d+)$")

# Fields that may change between a run and its resume: they do not change what is trained
# (rewards.retries only how hard a failed check is tried again: a run resumed after infrastructure trouble may
# want more).
RESUME_MAY_CHANGE = (
    "run_dir", "train.steps", "train.threads", "logging.", "checkpoint.", "eval.every",
    "engine.kv_cache_gib", "engine.max_logprob_diff", "engine.threads", "engine.gpu_memory_utilization",
    "rewards.workers", "rewards.retries", "alarms.",
    "resolved.engine.max_logprob_diff", "resolved.logging.",  # (config.yaml's derived values of the fields above)
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


class _FdWriter:
    """A file object for ``torch.save`` whose every byte goes through ``os.write``, so a refused
    write keeps its OSError (torch's C++ writer reports a failed fwrite as ``unexpected pos``)."""

    def __init__(self, fd: int):
        self.fd, self.error = fd, None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = view.nbytes
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            self.error = exc
            raise
        return size

    def flush(self) -> None:
        pass


def _write_file(path: Path, obj: Any) -> None:
    """``obj`` (bytes, or anything ``torch.save`` takes) into ``path``; a refused write raises the OSError itself."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        writer = _FdWriter(fd)
        if isinstance(obj, bytes):
            writer.write(obj)
        else:
            try:
                torch.save(obj, writer)
            except RuntimeError:
                if writer.error is not None:
                    raise writer.error from None
                raise
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | Path, step: int, *, tensors: dict[str, Any], state: dict[str, Any],
                    config_yaml: str, keep: int) -> Path:
    """Write ``tensors`` (name -> torch-serialisable object, one ``name.pt`` each), ``state``
    (JSON) and the config atomically as checkpoint ``step``; prune to the newest ``keep``.
    A write the file system refuses is a `StorageError`; the partial directory is removed and
    the earlier checkpoints stay as they were."""
    root = checkpoints_dir(run_dir)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-{final.name}"
    current = root
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # left by a process killed mid-write
            shutil.rmtree(stale, ignore_errors=True)
        current = tmp
        tmp.mkdir()
        files = {f"{name}.pt": obj for name, obj in tensors.items()}
        files["state.json"] = json.dumps({"format": FORMAT_VERSION, "step": step, **state}).encode()
        files["config.yaml"] = config_yaml.encode()
        for name, obj in files.items():
            current = tmp / name
            _write_file(current, obj)
            _fsync_path(current)
        current = tmp
        _fsync_path(tmp)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _refused(exc, current, step, run_dir) from exc
    if final.exists():  # a re-run of the same step after a resume
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_path(root)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _refused(exc: OSError, path: Path, step: int, run_dir: str | Path) -> Exception:
    """The one-sentence error for a checkpoint write the file system refused."""
    from rlvr.errors import StorageError

    last = latest_checkpoint(run_dir)
    kept = f"the last complete checkpoint, {str(last)!r}, is untouched" if last else "no earlier checkpoint exists"
    why = exc.strerror or str(exc)
    return StorageError(f"checkpoint step {step}: {why}: {str(exc.filename or path)!r}; the partial checkpoint was "
                        f"removed and {kept}. Free space (or fix the directory), then continue with "
                        f"`rlvr train --resume {run_dir}`", exc.errno, str(exc.filename or path))


def check_run_dir(run_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Before any data or model loads: ``run_dir`` can be written, and holds checkpoints exactly
    when the run resumes (an earlier run's checkpoints are deleted only with ``overwrite``)."""
    from rlvr.config import ConfigError
    from rlvr.errors import NotFoundError, StorageError

    run_dir = Path(run_dir)
    if resume and latest_checkpoint(run_dir) is None:
        raise NotFoundError(f"resume: no checkpoint in {str(checkpoints_dir(run_dir))!r}")
    if not resume and not overwrite and list_checkpoints(run_dir):
        raise ConfigError(f"run_dir {str(run_dir)!r} holds checkpoints of an earlier run: continue it with "
                          f"`rlvr train --resume {run_dir}`, start over with --overwrite, or choose another run_dir")
    existing = run_dir
    while not existing.exists() and existing != existing.parent:  # the directory that a fresh run_dir goes into
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"run_dir {str(run_dir)!r}: {str(existing)!r} is a file, not a directory")
    try:  # a real write, not os.access: root passes any mode check, and a read-only mount fails only here
        fd, probe = tempfile.mkstemp(prefix=".rlvr-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StorageError(f"run_dir {str(run_dir)!r}: cannot write in {str(existing)!r} "
                           f"({exc.strerror or exc}); choose a run_dir on a writable disk", exc.errno,
                           str(existing)) from exc


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tensors, state)`` of a checkpoint directory written by ``save_checkpoint``."""
    path = Path(path)
    from rlvr.errors import DataError, NotFoundError

    state_file = path / "state.json"
    if not state_file.is_file():
        raise NotFoundError(f"checkpoint {str(path)!r} is incomplete: no state.json")
    state = json.loads(state_file.read_text())
    if state.get("format") != FORMAT_VERSION:
        raise DataError(f"checkpoint {str(path)!r}: format {state.get('format')!r}, this rlvr reads {FORMAT_VERSION}")
    tensors = {}
    for f in sorted(path.glob("*.pt")):
        # weights_only: a checkpoint holds tensors, numbers, strings and containers, never code
        tensors[f.stem] = torch.load(f, map_location="cpu", weights_only=True)
    return tensors, state


def config_changes(saved_yaml: str, current: dict[str, Any]) -> list[str]:
    """Fields whose values differ between a checkpoint's config and ``current`` (a model_dump),
    as ``'field: old -> new'``, ignoring the fields in ``RESUME_MAY_CHANGE``."""
    from rlvr.config import flatten

    old, new = flatten(yaml.safe_load(saved_yaml)), flatten(json.loads(json.dumps(current)))
    changed = []
    for key in sorted(set(old) | set(new)):
        if any(key == f or (f.endswith(".") and key.startswith(f)) for f in RESUME_MAY_CHANGE):
            continue
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            changed.append(f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}")
    return changed
