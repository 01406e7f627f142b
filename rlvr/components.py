"""The pieces a run is built from, shared by `rlvr train` and `rlvr eval` (which must not import the loop):
the rubric, the task's rows made ready for the model, and the engine. (The policy side, which the trainer
and every data-parallel learner rank build alike, is rlvr.train.side.)"""

from __future__ import annotations

import os
from typing import Any

from rlvr.config import ConfigError, TrainConfig
from rlvr.tasks import Splits, load_task, prepare_rows
from verifiers import Rubric
from verifiers import get as get_verifier


def build_rubric(cfg: TrainConfig) -> Rubric:
    """The run's weighted verifiers; the strict R1 format check joins at weight 0 when the terms lack it, so
    every run measures its format rate from its own scores (a metric, not a reward)."""
    parts = [(get_verifier(t.verifier, **t.kwargs), t.weight) for t in cfg.rewards.terms]
    if not any(v.name == "r1_format" for v, _ in parts):
        parts.append((get_verifier("r1_format"), 0.0))
    return Rubric(parts, retries=cfg.rewards.retries)


def close_verifiers(rubric: Rubric) -> None:
    """Close the parts that hold resources of their own (a judge's threads, a reward model's process)."""
    for verifier, _ in rubric.parts:
        close = getattr(verifier, "close", None)
        if callable(close):
            close()


def max_prompt_tokens(cfg: TrainConfig, model_dir: str) -> int:
    """``task.max_prompt_tokens``, else what fits the model's context beside the completion."""
    from rlvr.models import context_length

    if cfg.task.max_prompt_tokens is not None:
        return cfg.task.max_prompt_tokens
    context = context_length(model_dir)
    longest = max(cfg.sampling.max_tokens, cfg.eval.max_tokens)
    if context is None:
        return 1 << 30
    if context <= longest:
        raise ConfigError(f"sampling.max_tokens / eval.max_tokens = {longest} leave no room for a prompt in the "
                          f"model's context of {context} tokens")
    return context - longest


def load_rows(cfg: TrainConfig, tokenizer: Any, rubric: Rubric, model_dir: str, verbose: bool = True) -> Splits:
    """The task's rows, made ready for the run's environment (``env.prepare_row``), checked against the rubric,
    rendered and tokenized; prints what was split and dropped."""
    splits = load_task(cfg.task, [v for v, _ in rubric.parts], cfg.env)
    notes = splits.notes + prepare_rows(splits, cfg.task, tokenizer, max_prompt_tokens(cfg, model_dir),
                                        tools=cfg.env.tools())
    if cfg.eval.num_prompts == 0:
        notes.append("evaluation: off (eval.num_prompts=0)")
    elif len(splits.test) > cfg.eval.num_prompts:
        notes.append(f"evaluation: {cfg.eval.num_prompts} of {len(splits.test)} held-out prompts (eval.num_prompts)")
    elif cfg.eval.num_prompts > len(splits.test):
        notes.append(f"evaluation: all {len(splits.test)} held-out prompts (eval.num_prompts={cfg.eval.num_prompts} "
                     "asks for more than there are)")
    splits.test = splits.test[: cfg.eval.num_prompts]
    if verbose:
        for note in notes:
            print(note)
    splits.notes = notes
    return splits


def thread_split(cfg: TrainConfig) -> tuple[int, int]:
    """(learner, engine) thread counts; 0 leaves the library default (all cores).

    With ``train.async`` the two sides run at the same time, so they split the cores: oversubscribed
    OpenMP teams make CPU torch several times slower."""
    tc, engine_threads = cfg.train, cfg.engine.threads or cfg.train.threads
    if not tc.async_.enabled:
        return tc.threads, engine_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    learner = tc.threads or max(1, cores // 2)
    return learner, cfg.engine.threads or max(1, cores - learner)


def build_engine(cfg: TrainConfig, model_dir: str, threads: int | None = None, separate_process: bool | None = None,
                 **extra: Any):
    """The run's engine (``cfg.engine.build``). With ``train.async`` an engine that can run its core in a
    process of its own does (its thread pool then cannot collide with the learner's); the others compute
    on the rollout worker thread, whose thread count the pipeline sets (see RolloutPipeline)."""
    e = cfg.engine
    threads = cfg.train.threads if threads is None else threads
    if separate_process is None:
        separate_process = cfg.train.async_.enabled and e.own_process
    return e.build(model_dir, threads=threads, seed=cfg.train.seed, separate_process=separate_process, **extra)
