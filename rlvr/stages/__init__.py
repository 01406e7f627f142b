"""Training stages as one registry: each reads a Hugging Face model directory and writes one.

``pretrain`` (random init -> base), ``midtrain`` (continued pretraining on task text), ``sft``
(TRL SFTTrainer on correct traces), ``dpo`` (TRL DPOTrainer on on-policy pairs) and ``train``
(our RL loop). Each registry entry carries how it runs (``run(cfg, out, progress) -> record``);
``run_stage(command, cfg)`` runs one, cached by config hash like pretraining: the hash covers
the stage's config and the stamp of its input model, so a changed upstream stage invalidates
everything after it. A TRL stage's output directory is written beside its final place and moved
there only when the stage finished, so a failed stage leaves no half model and earlier stages'
outputs untouched. Recipes (`rlvr.stages.recipe`) chain these.
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

STAMP = "rlvr_stage.json"  # a finished stage's record, in its output model directory
PRETRAIN_STAMP = "rlvr_pretrain.json"  # rlvr.pretrain.STAMP (kept here so the registry loads without it)


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

    def root(self, cfg: Any) -> Path:
        return Path(getattr(cfg, self.out_field))

    def output(self, cfg: Any) -> Path:
        """The Hugging Face model directory the stage writes."""
        return self.root(cfg) / self.final if self.final else self.root(cfg)


# ---- how each stage runs ----------------------------------------------------------------------

def _run_pretrain(cfg: Any, out: Path, progress: bool) -> dict[str, Any]:
    from rlvr.pretrain import pretrain

    pretrain(cfg, force=True, progress=progress)
    return json.loads((out / PRETRAIN_STAMP).read_text())


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
    """Our RL loop; a fresh run (a stale run_dir is replaced), tokens counted from its metrics."""
    from rlvr.loop import train

    shutil.rmtree(out, ignore_errors=True)  # final/: no stamp survives from an earlier run of other settings
    summary = train(cfg, progress=progress, overwrite=True)
    steps, tokens, curve = rl_budget(cfg)
    return {"optimizer_steps": steps, "tokens": tokens, "before": summary["before"], "after": summary["after"],
            "curve": curve}


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
                      config_key=_pretrain_key),
    "midtrain": Stage("midtrain", _stage_cfg("MidtrainConfig"), _run_midtrain, check=_trl_check("SFTConfig")),
    "sft": Stage("sft", _stage_cfg("SFTConfig"), _run_sft, check=_trl_check("SFTConfig")),
    "dpo": Stage("dpo", _stage_cfg("DPOConfig"), _run_dpo, check=_trl_check("DPOConfig")),
    "train": Stage("train", _train_cfg, _run_rl, out_field="run_dir", final="final"),
}


# ---- keys and stamps ----------------------------------------------------------------------------

def stamp_of(model_dir: str | Path) -> dict[str, Any] | None:
    """The record a stage left in its output directory (pretraining's own stamp counts), if any."""
    for name in (STAMP, PRETRAIN_STAMP):
        path = Path(model_dir) / name
        if path.is_file():
            return json.loads(path.read_text())
    return None


def stage_key(command: str, cfg: Any) -> str:
    """Hash of the stage's config and of its input model's stamp (a rebuilt input invalidates the stage).

    Only fields set away from their defaults count, so a config field added to rlvr later (with a
    default) keeps finished stages cached."""
    stage = STAGES[command]
    if stage.config_key is not None:
        return stage.config_key(cfg)
    upstream = stamp_of(getattr(cfg, stage.model_field))
    payload = {"command": command, "config": cfg.model_dump(mode="json", exclude_defaults=True),
               "input": upstream.get("config_hash") if upstream else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def is_cached(command: str, cfg: Any) -> bool:
    stamp = stamp_of(STAGES[command].output(cfg))
    return stamp is not None and stamp.get("config_hash") == stage_key(command, cfg)


# ---- running --------------------------------------------------------------------------------------

def run_stage(command: str, cfg: Any, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run one stage (or reuse its cached output); returns its record (output dir, steps, tokens, seconds)."""
    stage = STAGES[command]
    out = stage.output(cfg)
    if not force and is_cached(command, cfg):
        print(f"{command}: reusing {out} (config and input unchanged; --force to rerun)")
        return {**stamp_of(out), "output": str(out), "cached": True}
    if stage.model_field:
        from rlvr.models import check_model_dir

        check_model_dir(getattr(cfg, stage.model_field), stage.model_field)
    t0 = time.time()
    record = stage.run(cfg, out, progress)
    record = {"command": command, **record, "config_hash": stage_key(command, cfg),
              "seconds": round(time.time() - t0, 1), "config": cfg.model_dump(mode="json", by_alias=True)}
    (out / stage.stamp).write_text(json.dumps(record, indent=1, default=str))
    return {**record, "output": str(out), "cached": False}


def rl_budget(cfg: Any) -> tuple[int, int, list[tuple[int, float]]]:
    """(optimizer steps, tokens trained, [(tokens so far, held-out pass@1) per evaluation]) of a finished
    RL run, from its metrics.jsonl: every sampled sequence (prompt + completion) of a step is trained
    on ``updates_per_batch`` times."""
    from transformers import AutoTokenizer

    from rlvr.tasks import load_task, render

    tc = cfg.train
    rows = load_task(cfg.task).train[:200]
    tok = AutoTokenizer.from_pretrained(cfg.model)
    prompt_len = sum(len(tok(render(r["question"], cfg.task, tok), add_special_tokens=False)["input_ids"])
                     for r in rows) / len(rows)
    tokens, curve = 0.0, []
    for line in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if m.get("kind") == "train":
            tokens += (prompt_len + m["response_len_mean"]) * cfg.sampling.n * tc.prompts_per_step * tc.updates_per_batch
        elif m.get("kind") == "eval":
            curve.append((round(tokens), m["pass@1"]))
    return tc.steps * tc.updates_per_batch, round(tokens), curve
