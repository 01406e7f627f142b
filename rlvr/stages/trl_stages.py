"""The TRL stages: mid-training and SFT through ``trl.SFTTrainer``, DPO through ``trl.DPOTrainer``.

Each ``run_*(cfg, out)`` trains the model in ``cfg.model`` and saves a Hugging Face directory
in ``out``; it returns the stage's record (optimizer steps, tokens trained, TRL's final logs,
and for DPO the held-out chosen-over-rejected margin before and after).

Tokens trained are the tokens of the sequences the optimizer saw (prompt + completion; both
sequences of a DPO pair), as TRL counts them (``num_tokens``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from rlvr.config import ConfigError
from rlvr.stages.config import DPOConfig, MidtrainConfig, SFTConfig, StageBase

# What this CPU needs; a key in the stage's `trl:` section wins over these.
CPU_DEFAULTS: dict[str, Any] = {
    "use_cpu": True, "bf16": False, "fp16": False, "report_to": [], "dataloader_num_workers": 0,
    "save_strategy": "no", "gradient_checkpointing": False, "logging_steps": 10, "disable_tqdm": True,
}


def check_trl_section(config_cls: type, cfg: StageBase) -> dict[str, Any]:
    """The ``trl:`` section with numbers as numbers; an unknown key is an error naming it."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    given = {}
    for key, value in cfg.trl.items():
        if key not in fields:
            raise ConfigError(f"trl.{key}: not an argument of trl.{config_cls.__name__} "
                              f"(see `python -c 'import trl; help(trl.{config_cls.__name__})'`)")
        given[key] = _numeric(value, fields[key].default, key)
    if "output_dir" in given:
        raise ConfigError("trl.output_dir: the stage writes to out_dir; set that instead")
    return given


def trl_args(config_cls: type, cfg: StageBase, out: Path, **stage_defaults: Any) -> Any:
    """TRL's config object from the stage's ``trl:`` section over rlvr's CPU defaults."""
    given = check_trl_section(config_cls, cfg)
    kwargs = {**CPU_DEFAULTS, "seed": cfg.seed, "data_seed": cfg.seed, **stage_defaults, **given}
    return config_cls(output_dir=str(out / "trl"), **kwargs)


def _numeric(value: Any, default: Any, key: str) -> Any:
    """YAML reads ``1e-4`` (no dot) as a string; a numeric TRL field gets a number."""
    if not isinstance(value, str) or isinstance(default, bool) or not isinstance(default, (int, float)):
        return value
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"trl.{key}: expected a number, got {value!r}") from None
    return int(number) if isinstance(default, int) and number.is_integer() else number


def _load(cfg: StageBase) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.models import resolve_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    import datasets

    datasets.disable_progress_bars()  # five bars per stage say nothing about training
    model_dir = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, tokenizer


def _save(trainer: Any, tokenizer: Any, model_dir: str, out: Path) -> None:
    import shutil

    trainer.model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    gen = Path(model_dir) / "generation_config.json"
    if gen.is_file():
        shutil.copy(gen, out / "generation_config.json")
    shutil.rmtree(out / "trl", ignore_errors=True)


def _record(trainer: Any, seq_tokens: float, seconds: float, extra: dict[str, Any]) -> dict[str, Any]:
    """Steps and tokens trained: TRL's own running ``num_tokens`` (scaled from its last log to the last
    step), else steps x batch x the dataset's mean sequence length."""
    args, state = trainer.args, trainer.state
    logs = [h for h in state.log_history if "loss" in h]
    counted = [h for h in logs if "num_tokens" in h and h.get("step")]
    if counted:
        tokens = float(counted[-1]["num_tokens"]) * state.global_step / counted[-1]["step"]
    else:
        batch = min(args.per_device_train_batch_size, len(trainer.train_dataset)) * args.gradient_accumulation_steps
        tokens = state.global_step * batch * seq_tokens
    return {"optimizer_steps": state.global_step, "tokens": round(tokens), "seconds": round(seconds, 1),
            "final_log": logs[-1] if logs else {}, **extra}


def _mean_len(dataset: Any, *columns: str) -> float:
    return sum(sum(len(row[c]) for c in columns) for row in dataset) / max(1, len(dataset))


def run_sft(cfg: SFTConfig, out: Path, text: bool = False) -> dict[str, Any]:
    """SFT on correct traces, loss on the completion only (``text``: mid-training on plain text)."""
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from rlvr.stages.data import midtrain_texts, sft_examples, training_rows

    t0 = time.time()
    args = trl_args(TRLSFTConfig, cfg, out, **({} if text else {"completion_only_loss": True}))
    model, tokenizer = _load(cfg)
    rows, _ = training_rows(cfg.task, cfg.num_examples, cfg.seed)
    data = midtrain_texts(cfg.task, rows) if text else sft_examples(cfg.task, rows, tokenizer)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(data), processing_class=tokenizer)
    seq_tokens = _mean_len(trainer.train_dataset, "input_ids")
    trainer.train()
    _save(trainer, tokenizer, cfg.model, out)
    return _record(trainer, seq_tokens, time.time() - t0, {"examples": len(data), "example": data[0]})


def run_midtrain(cfg: MidtrainConfig, out: Path) -> dict[str, Any]:
    return run_sft(cfg, out, text=True)


def pair_margins(model: Any, pairs: list[dict[str, Any]]) -> float:
    """Mean of log p(chosen) - log p(rejected) (summed over completion tokens) under ``model``."""
    import torch

    def seq_logp(prompt: list[int], completion: list[int]) -> float:
        ids = torch.tensor([prompt + completion])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]  # [C, V]
        return float(torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(completion)[:, None]).sum())

    model.eval()
    with torch.no_grad():
        margins = [seq_logp(p["prompt_ids"], p["chosen_ids"]) - seq_logp(p["prompt_ids"], p["rejected_ids"])
                   for p in pairs]
    return sum(margins) / len(margins)


def _pairs(cfg: DPOConfig, tokenizer: Any, model_dir: str, rows: list[dict], splits: Any) -> tuple[list, list]:
    """On-policy training pairs and held-out pairs, sampled from the stage's input model."""
    from rlvr.stages.data import NoPairsError, sample_pairs
    from rlvr.tasks import Splits, default_verifier, prepare_rows
    from rollouts import engine_config
    from verifiers import get as get_verifier

    pc = cfg.pairs
    held = splits.test[: pc.heldout_prompts]
    ready = Splits(list(rows[: pc.num_prompts]), list(held) or list(splits.test[:1]))
    prepare_rows(ready, cfg.task, tokenizer, max_prompt_tokens=1 << 30)
    verifier = get_verifier(pc.verifier or default_verifier(cfg.task))
    engine = engine_config(pc.engine, dtype="float32").build(model_dir, threads=cfg.threads, seed=cfg.seed)
    try:
        train = sample_pairs(engine, ready.train, verifier, pc.n, pc.temperature, pc.max_tokens, cfg.seed,
                             f"dpo: model {cfg.model!r}", tokenizer)
        heldout = []
        if pc.heldout_prompts:
            try:
                heldout = sample_pairs(engine, ready.test, verifier, pc.n, pc.temperature, pc.max_tokens,
                                       cfg.seed + 1, "dpo held-out", tokenizer)
            except NoPairsError:
                heldout = []  # the margin is then not measured; training does not depend on it
    finally:
        engine.close()
    return train, heldout


def run_dpo(cfg: DPOConfig, out: Path) -> dict[str, Any]:
    """DPO on on-policy pairs; records the held-out chosen-over-rejected margin before and after."""
    from datasets import Dataset
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    from rlvr.models import resolve_model
    from rlvr.stages.data import training_rows

    t0 = time.time()
    args = trl_args(TRLDPOConfig, cfg, out)
    model, tokenizer = _load(cfg)
    rows, splits = training_rows(cfg.task, cfg.num_examples, cfg.seed)
    train_pairs, heldout = _pairs(cfg, tokenizer, resolve_model(cfg.model), rows, splits)
    print(f"dpo: {len(train_pairs)} on-policy pairs from {min(len(rows), cfg.pairs.num_prompts)} training prompts "
          f"({cfg.pairs.n} samples each); {len(heldout)} held-out pairs")
    margin_before = pair_margins(model, heldout) if heldout else None
    train_margin_before = pair_margins(model, train_pairs)  # what DPO's loss pushes up directly
    model.train()
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in train_pairs])
    ref, _ = _load(cfg)  # the frozen reference: the stage's input model
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=dataset, processing_class=tokenizer)
    seq_tokens = _mean_len(trainer.train_dataset, "prompt_ids", "prompt_ids", "chosen_ids", "rejected_ids")
    trainer.train()
    margin_after = pair_margins(trainer.model, heldout) if heldout else None
    train_margin_after = pair_margins(trainer.model, train_pairs)
    _save(trainer, tokenizer, cfg.model, out)
    extra = {"pairs": len(train_pairs), "heldout_pairs": len(heldout), "heldout_margin_before": margin_before,
             "heldout_margin_after": margin_after, "train_margin_before": train_margin_before,
             "train_margin_after": train_margin_after, "example": {k: train_pairs[0][k] for k in ("prompt", "chosen", "rejected")}}
    if margin_before is not None:
        print(f"dpo: held-out chosen-over-rejected log-prob margin {margin_before:+.3f} -> {margin_after:+.3f} "
              f"({len(heldout)} pairs)")
    return _record(trainer, seq_tokens, time.time() - t0, extra)
