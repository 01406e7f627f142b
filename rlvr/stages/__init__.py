"""Training stages as one registry: each reads a Hugging Face model directory and writes one.

``pretrain`` (random init -> base), ``midtrain`` (continued pretraining on task text), ``sft``
(TRL SFTTrainer on correct traces), ``dpo`` (TRL DPOTrainer on on-policy pairs) and ``train``
(our RL loop). Each registry entry carries how it runs (``run(cfg, out, progress) -> record``);
``run_stage(command, cfg)`` runs one the same way for all:

* **Cached on content.** A stage's key covers its config and the *content* of its input model
  (``model_fingerprint``: config and tokenizer files by digest, weights by size and modification
  time), so a replaced or rebuilt input, stamped or not, invalidates the stage, and through its
  own rebuilt output every stage after it.
* **Never destroys work it did not make.** A stage writes only into an output directory that is
  absent, empty, or holds this kind of stage's own output (its stamp, or the marker a stage that
  writes in place leaves before it starts); anything else is refused with one sentence.
* **Resumes.** TRL stages write beside their final place and move there when they finished, so
  a failed stage leaves no half model; the RL stage resumes an interrupted run of the same key
  from its newest checkpoint (``rlvr.loop.train(resume=True)``).

Recipes (`rlvr.stages.recipe`) chain these.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlvr.config import ConfigError

STAMP = "rlvr_stage.json"  # a finished stage's record, in its output model directory
OWNER = "rlvr_stage_owner.json"  # left by a stage that writes in place (pretrain, the RL run dir) before it starts
PRETRAIN_STAMP = "rlvr_pretrain.json"  # rlvr.pretrain.STAMP (kept here so the registry loads without it)
EVAL_CACHE = "rlvr_eval.json"  # the report's evaluations, cached beside a model (rlvr.stages.report)
BOOKKEEPING = {STAMP, OWNER, PRETRAIN_STAMP, EVAL_CACHE}  # rlvr's notes in a model directory, not its content
DIGESTED = (".json", ".txt", ".model", ".jinja", ".tiktoken")  # configs, tokenizers, chat templates
DIGEST_LIMIT = 64 << 20  # bytes; a larger file counts by size and mtime whatever its suffix


class OutputInUse(ConfigError):
    """A stage's output directory holds files no stage of its kind wrote."""


@dataclass(frozen=True)
class Stage:
    """A registry entry: how the stage's config is read, where it writes, how it runs."""

    name: str
    config: Callable[[], type]  # lazy: the config classes import pydantic models only
    run: Callable[[Any, Path, bool], dict[str, Any]]  # run(cfg, output dir, progress) -> record
    model_field: str | None = "model"  # the config field naming the input model (None: random init)
    out_field: str = "out_dir"  # the config field naming the directory the stage owns
    final: str | None = None  # the model's subdirectory of that directory (the RL run's final/)
    stamp: str = STAMP  # the record's file name in the output
    config_key: Callable[[Any], str] | None = None  # the key when the stage has no input (pretrain's own hash)
    check: Callable[[Any], None] | None = None  # checks that need more than the config class (TRL's names)
    seed_field: str = "seed"  # the config field holding the stage's seed (a recipe's `seed` sets it)

    def root(self, cfg: Any) -> Path:
        return Path(getattr(cfg, self.out_field))

    def output(self, cfg: Any) -> Path:
        """The Hugging Face model directory the stage writes."""
        return self.root(cfg) / self.final if self.final else self.root(cfg)


# ---- how each stage runs ----------------------------------------------------------------------

def _run_pretrain(cfg: Any, out: Path, progress: bool) -> dict[str, Any]:
    from rlvr.pretrain import pretrain

    claim(out, "pretrain", "")  # it writes in place: a killed pretraining leaves files that are ours
    pretrain(cfg, force=True, progress=progress)
    return {**json.loads((out / PRETRAIN_STAMP).read_text()), "optimizer_steps": cfg.train.steps}


def _into_partial(train_fn: Callable[[Any, Path], dict[str, Any]], cfg: Any, out: Path) -> dict[str, Any]:
    """Run a TRL stage into ``OUT.partial`` and move it to ``out`` once it finished."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    record = train_fn(cfg, partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return record


def _run_midtrain(cfg: Any, out: Path, progress: bool) -> dict[str, Any]:
    from rlvr.stages.trl_stages import run_midtrain

    return _into_partial(run_midtrain, cfg, out)


def _run_sft(cfg: Any, out: Path, progress: bool) -> dict[str, Any]:
    from rlvr.stages.trl_stages import run_sft

    return _into_partial(run_sft, cfg, out)


def _run_dpo(cfg: Any, out: Path, progress: bool) -> dict[str, Any]:
    from rlvr.stages.trl_stages import run_dpo

    return _into_partial(run_dpo, cfg, out)


def _run_rl(cfg: Any, out: Path, progress: bool) -> dict[str, Any]:
    """Our RL loop: resumes an interrupted run of the same key from its newest checkpoint, else a
    fresh run in the stage's own run_dir; tokens counted from its metrics."""
    from rlvr.checkpoint import latest_checkpoint
    from rlvr.loop import train

    run_dir, key = Path(cfg.run_dir), stage_key("train", cfg)
    resume = interrupted_checkpoint(run_dir, key, cfg.train.steps)
    if resume is not None:
        print(f"train: resuming the interrupted run in {run_dir} from {resume.name} (same config and input)")
    elif latest_checkpoint(run_dir) is not None:
        print(f"train: training afresh in {run_dir} (its checkpoints are of a finished run, or of another config or "
              "input model)")
    claim(run_dir, "train", key)
    shutil.rmtree(out, ignore_errors=True)  # final/: no stamp survives from an earlier run of other settings
    summary = train(cfg, progress=progress, resume=resume is not None, overwrite=resume is None)
    steps, tokens, curve = rl_budget(cfg)
    return {"optimizer_steps": steps, "tokens": tokens, "before": summary["before"], "after": summary["after"],
            "curve": curve}


def interrupted_checkpoint(run_dir: Path, key: str, steps: int) -> Path | None:
    """The newest checkpoint of an unfinished RL stage run in ``run_dir`` made with ``key`` (config and
    input model), if any. A finished run (its last checkpoint at ``steps``) is not resumed: a rerun of
    a finished stage (``--force``, ``cache: false``) trains afresh."""
    from rlvr.checkpoint import latest_checkpoint

    marker = run_dir / OWNER
    if not marker.is_file() or json.loads(marker.read_text()).get("key") != key:
        return None
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None or int(ckpt.name.split("_")[-1]) >= steps:
        return None
    return ckpt


def _trl_check(config_class: str) -> Callable[[Any], None]:
    def check(cfg: Any) -> None:
        import trl

        from rlvr.stages.trl_stages import check_trl_section

        check_trl_section(getattr(trl, config_class), cfg)

    return check


def _pretrain_cfg() -> type:
    from rlvr.config import PretrainConfig

    return PretrainConfig


def _pretrain_key(cfg: Any) -> str:
    from rlvr.pretrain import config_hash

    return config_hash(cfg)


def _train_cfg() -> type:
    from rlvr.config import TrainConfig

    return TrainConfig


def _stage_cfg(name: str) -> Callable[[], type]:
    def get() -> type:
        from rlvr.stages import config

        return getattr(config, name)

    return get


STAGES: dict[str, Stage] = {
    "pretrain": Stage("pretrain", _pretrain_cfg, _run_pretrain, model_field=None, stamp=PRETRAIN_STAMP,
                      config_key=_pretrain_key, seed_field="train.seed"),
    "midtrain": Stage("midtrain", _stage_cfg("MidtrainConfig"), _run_midtrain, check=_trl_check("SFTConfig")),
    "sft": Stage("sft", _stage_cfg("SFTConfig"), _run_sft, check=_trl_check("SFTConfig")),
    "dpo": Stage("dpo", _stage_cfg("DPOConfig"), _run_dpo, check=_trl_check("DPOConfig")),
    "train": Stage("train", _train_cfg, _run_rl, out_field="run_dir", final="final", seed_field="train.seed"),
}


# ---- keys, stamps and ownership -----------------------------------------------------------------

def stamp_of(model_dir: str | Path) -> dict[str, Any] | None:
    """The record a stage left in its output directory (pretraining's own stamp counts), if any."""
    for name in (STAMP, PRETRAIN_STAMP):
        path = Path(model_dir) / name
        if path.is_file():
            return json.loads(path.read_text())
    return None


def model_fingerprint(model: str, field: str = "model") -> str:
    """A digest of what a model directory holds: every top-level file but rlvr's own notes in it,
    config and tokenizer files by content, weights (and anything large) by size and modification
    time (reading gigabytes of weights at every cache check would not pay). Replacing a file, or
    rebuilding the model, changes it; a stamp is not needed (a user's or a hub model counts as is)."""
    from rlvr.models import resolve_model

    digest = hashlib.sha256()
    for f in sorted(Path(resolve_model(model, field)).iterdir()):
        if f.name in BOOKKEEPING or f.name.startswith(".") or not f.is_file():
            continue
        st = f.stat()
        if f.suffix in DIGESTED and st.st_size <= DIGEST_LIMIT:
            what = hashlib.sha256(f.read_bytes()).hexdigest()
        else:
            what = f"{st.st_size}:{st.st_mtime_ns}"
        digest.update(f"{f.name}\0{what}\n".encode())
    return digest.hexdigest()[:16]


def input_fingerprint(command: str, cfg: Any) -> str | None:
    stage = STAGES[command]
    return model_fingerprint(getattr(cfg, stage.model_field), stage.model_field) if stage.model_field else None


def stage_key(command: str, cfg: Any) -> str:
    """Hash of the stage's config and of its input model's content.

    Only fields set away from their defaults count, so a config field added to rlvr later (with a
    default) keeps finished stages cached."""
    stage = STAGES[command]
    if stage.config_key is not None:
        return stage.config_key(cfg)
    payload = {"command": command, "config": cfg.model_dump(mode="json", exclude_defaults=True),
               "input": input_fingerprint(command, cfg)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def is_cached(command: str, cfg: Any) -> bool:
    stamp = stamp_of(STAGES[command].output(cfg))
    return stamp is not None and stamp.get("config_hash") == stage_key(command, cfg)


def owner(root: Path, final: str | None = None) -> str | None:
    """The stage command that wrote directory ``root`` (its stamp or its marker), None if none did."""
    places = [root / STAMP, root / OWNER] + ([root / final / STAMP] if final else [])
    for path in places:
        if path.is_file():
            return json.loads(path.read_text()).get("command")
    return "pretrain" if (root / PRETRAIN_STAMP).is_file() else None


def check_output(command: str, cfg: Any, field: str | None = None) -> None:
    """Refuse an output directory that holds anything but this kind of stage's own work.

    ``field`` names the setting in the error (default: the config field; a recipe says ``out``)."""
    stage = STAGES[command]
    root, field = stage.root(cfg), field or stage.out_field
    if not root.exists():
        return
    if not root.is_dir():
        raise OutputInUse(f"{field} {str(root)!r} is a file, not a directory; choose another {field}")
    made_by = owner(root, stage.final)
    if made_by == command or (made_by is None and not any(root.iterdir())):
        return
    what = (f"the output of a {made_by!r} stage" if made_by else
            f"files that no {command!r} stage wrote (a stage never overwrites work it did not make)")
    raise OutputInUse(f"{field} {str(root)!r} already holds {what}; choose another {field} or delete that directory")


def claim(root: Path, command: str, key: str) -> None:
    """Mark ``root`` as this stage's before it writes there in place (the key: what the run is of)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / OWNER).write_text(json.dumps({"command": command, "key": key}))


# ---- running --------------------------------------------------------------------------------------

def run_stage(command: str, cfg: Any, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run one stage (or reuse its cached output); returns its record (output dir, steps, tokens, seconds)."""
    stage = STAGES[command]
    out = stage.output(cfg)
    check_output(command, cfg)
    key, fingerprint = stage_key(command, cfg), input_fingerprint(command, cfg)
    stamp = stamp_of(out)
    if stamp is not None and stamp.get("config_hash") == key and not force:
        print(f"{command}: reusing {out} (config and input model unchanged; --force to rerun)")
        return {**stamp, "output": str(out), "cached": True}
    if stamp is not None and stamp.get("config_hash") != key:
        why = ("its input model changed" if stamp.get("input_fingerprint") not in (None, fingerprint) else
               "its config changed" if "input_fingerprint" in stamp else "its config or input model changed")
        print(f"{command}: rebuilding {out} ({why})")
    t0 = time.time()
    record = stage.run(cfg, out, progress)
    record = {"command": command, **record, "config_hash": key, "input_fingerprint": fingerprint,
              "seconds": round(time.time() - t0, 1), "config": cfg.model_dump(mode="json", by_alias=True)}
    (out / stage.stamp).write_text(json.dumps(record, indent=1, default=str))
    return {**record, "output": str(out), "cached": False}


def rl_budget(cfg: Any) -> tuple[int, int, list[tuple[int, float]]]:
    """(optimizer steps, tokens trained, [(tokens so far, held-out pass@1) per evaluation]) of a finished
    RL run, from its metrics.jsonl (each step logs ``tokens_trained``: its batch's real tokens, prompt and
    completion, once per optimiser pass)."""
    tc = cfg.train
    tokens, curve = 0.0, []
    for line in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if m.get("kind") == "train":
            tokens += m["tokens_trained"]
        elif m.get("kind") == "eval":
            curve.append((round(tokens), m["pass@1"]))
    return tc.steps * tc.updates_per_batch, round(tokens), curve
