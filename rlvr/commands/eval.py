"""`rlvr eval`: evaluate any checkpoint on the configured task's held-out split."""

from __future__ import annotations

import argparse

from rlvr.commands._common import add_config_args, fail


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Hugging Face model directory to evaluate")
    add_config_args(p, "configs/tiny_r1zero.yaml")
    p.add_argument("--engine", choices=["hf", "vllm"], default=None, help="override engine.kind")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from rlvr.config import ConfigError, TrainConfig, load_config

    overrides = [f"model={args.model}", *args.overrides]
    if args.engine:
        overrides.append(f"engine.kind={args.engine}")
    try:
        cfg = load_config(TrainConfig, args.config, overrides)
    except ConfigError as exc:
        return fail(str(exc))
    from rlvr.evaluate import evaluate
    from rlvr.loop import check_model_dir, engine_kwargs
    from rlvr.tasks import load_task
    from rollouts import make_engine

    try:
        check_model_dir(cfg.model)
    except FileNotFoundError as exc:
        return fail(str(exc))
    rows = list(load_task(cfg.task)["test"])[: cfg.eval.num_prompts]
    engine = make_engine(cfg.engine.kind, cfg.model, **engine_kwargs(cfg))
    m = evaluate(engine, rows, k=cfg.eval.k, temperature=cfg.eval.temperature, max_tokens=cfg.eval.max_tokens,
                 seed=cfg.train.seed + 7)
    engine.close()
    if args.json:
        print(json.dumps(m))
    else:
        for k, v in m.items():
            print(f"{k:>16}: {v:.4f}")
    return 0
