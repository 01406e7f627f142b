"""Training stages as one registry: each reads a Hugging Face model directory and writes one.

``pretrain`` (random init -> base), ``midtrain`` (continued pretraining on task text), ``sft``
(TRL SFTTrainer on correct traces), ``dpo`` (TRL DPOTrainer on on-policy pairs) and ``train``
(our RL loop). ``run_stage(command, cfg)`` runs one, cached by config hash like pretraining:
the hash covers the stage's config and the stamp of its input model, so a changed upstream
stage invalidates everything after it. A stage's output directory is written beside its final
place and moved there only when the stage finished, so a failed stage leaves no half model and
earlier stages' outputs untouched. Recipes (`rlvr.stages.recipe`) chain these.
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

STAMP = "rlvr_stage.json"


@dataclass(frozen=True)
class Stage:
    """A registry entry: the config class, the field naming the input model (None: none) and the output."""

    name: str
    config: Callable[[], type]  # lazy: the config classes import pydantic models only
    model_field: str | None
    out_field: str
    output: Callable[[Any], Path]  # the HF model directory the stage writes


def _pretrain_cfg() -> type:
    from rlvr.config import PretrainConfig

    return PretrainConfig


def _train_cfg() -> type:
    from rlvr.config import TrainConfig

    return TrainConfig


def _stage_cfg(name: str) -> Callable[[], type]:
    def get() -> type:
        from rlvr.stages import config

        return {"midtrain": config.MidtrainConfig, "sft": config.SFTConfig, "dpo": config.DPOConfig}[name]

    return get


STAGES: dict[str, Stage] = {
    "pretrain": Stage("pretrain", _pretrain_cfg, None, "out_dir", lambda c: Path(c.out_dir)),
    "midtrain": Stage("midtrain", _stage_cfg("midtrain"), "model", "out_dir", lambda c: Path(c.out_dir)),
    "sft": Stage("sft", _stage_cfg("sft"), "model", "out_dir", lambda c: Path(c.out_dir)),
    "dpo": Stage("dpo", _stage_cfg("dpo"), "model", "out_dir", lambda c: Path(c.out_dir)),
    "train": Stage("train", _train_cfg, "model", "run_dir", lambda c: Path(c.run_dir) / "final"),
}


def stamp_of(model_dir: str | Path) -> dict[str, Any] | None:
    """The record a stage left in its output directory (pretraining's own stamp counts), if any."""
    from rlvr.pretrain import STAMP as PRETRAIN_STAMP

    for name in (STAMP, PRETRAIN_STAMP):
        path = Path(model_dir) / name
        if path.is_file():
            return json.loads(path.read_text())
    return None


def stage_hash(command: str, cfg: Any) -> str:
    """Hash of the stage's config and of its input model's stamp (a rebuilt input invalidates the stage).

    Only fields set away from their defaults count, so a config field added to rlvr later (with a
    default) keeps finished stages cached."""
    if command == "pretrain":
        from rlvr.pretrain import config_hash

        return config_hash(cfg)
    stage = STAGES[command]
    upstream = stamp_of(getattr(cfg, stage.model_field)) if stage.model_field else None
    payload = {"command": command, "config": cfg.model_dump(mode="json", exclude_defaults=True),
               "input": upstream.get("config_hash") if upstream else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def is_cached(command: str, cfg: Any) -> bool:
    stamp = stamp_of(STAGES[command].output(cfg))
    return stamp is not None and stamp.get("config_hash") == stage_hash(command, cfg)


def run_stage(command: str, cfg: Any, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run one stage (or reuse its cached output); returns its record (output dir, steps, tokens, seconds)."""
    stage = STAGES[command]
    out = stage.output(cfg)
    if not force and is_cached(command, cfg):
        print(f"{command}: reusing {out} (config and input unchanged; --force to rerun)")
        return {**stamp_of(out), "output": str(out), "cached": True}
    if command == "pretrain":
        from rlvr.pretrain import pretrain

        pretrain(cfg, force=True, progress=progress)
        stamp = stamp_of(out)
        return {**stamp, "output": str(out), "cached": False}
    if stage.model_field:
        from rlvr.models import check_model_dir

        check_model_dir(getattr(cfg, stage.model_field), stage.model_field)
    t0 = time.time()
    if command == "train":
        record = _run_rl(cfg, progress)
    else:
        record = _run_trl(command, cfg, out)
    record = {"command": command, "config_hash": stage_hash(command, cfg), **record,
              "seconds": round(time.time() - t0, 1), "config": cfg.model_dump(mode="json", by_alias=True)}
    (out / STAMP).write_text(json.dumps(record, indent=1, default=str))
    return {**record, "output": str(out), "cached": False}


def _run_trl(command: str, cfg: Any, out: Path) -> dict[str, Any]:
    from rlvr.stages import trl_stages

    run = {"midtrain": trl_stages.run_midtrain, "sft": trl_stages.run_sft, "dpo": trl_stages.run_dpo}[command]
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    record = run(cfg, partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return record


def _run_rl(cfg: Any, progress: bool) -> dict[str, Any]:
    """Our RL loop; a fresh run (a stale run_dir is replaced), tokens counted from its metrics."""
    from rlvr.loop import train

    final = Path(cfg.run_dir) / "final"
    shutil.rmtree(final, ignore_errors=True)  # no stamp survives from an earlier run of other settings
    summary = train(cfg, progress=progress, overwrite=True)
    steps, tokens, curve = rl_budget(cfg)
    return {"optimizer_steps": steps, "tokens": tokens, "before": summary["before"], "after": summary["after"],
            "curve": curve}


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
