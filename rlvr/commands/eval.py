"""`rlvr eval`: evaluate any checkpoint on the configured task's held-out split, with the run's rubric."""

from __future__ import annotations

import argparse
from pathlib import Path

from rlvr.commands._common import add_config_args

DEFAULT_CONFIG = "configs/tiny_r1zero.yaml"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Hugging Face model directory (or hub id) to evaluate")
    add_config_args(p, None)
    p.description = ("Evaluate --model on the held-out split of the config's task, scored by the config's rewards "
                     "(the same task and reward settings as `rlvr train`): greedy pass@1, pass@k, format rate, "
                     "response length and verifier errors. Without --config, a model inside a run directory "
                     f"(RUN/final) is evaluated with that run's RUN/config.yaml, any other with {DEFAULT_CONFIG}.")
    p.add_argument("--engine", default=None, help="override engine.kind (hf, static, vllm, or a registered kind)")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")


def run_config(model: str) -> str | None:
    """The ``config.yaml`` of the run whose output ``model`` is (``RUN/final`` -> ``RUN/config.yaml``)."""
    candidate = Path(model).parent / "config.yaml"
    return str(candidate) if Path(model).is_dir() and candidate.is_file() else None


def switch_engine(data: dict, kind: str) -> tuple[dict, list[str]]:
    """``data`` (a config mapping) with its ``engine`` section made fit for ``kind``: where the section is of
    another kind, the fields ``kind``'s config does not have are left out (a run's ``config.yaml`` spells out
    every field of its own engine, e.g. the static engine's ``kv_cache_gib``). Returns it and the names left out."""
    from rollouts.config import ENGINES

    engine = data.get("engine")
    if not isinstance(engine, dict) or engine.get("kind", "hf") == kind or kind not in ENGINES:
        return data, []  # an unknown kind: the config's own check names it
    fields = ENGINES[kind].model_fields
    dropped = sorted(k for k in engine if k != "kind" and k not in fields)
    return {**data, "engine": {k: v for k, v in engine.items() if k not in dropped}}, dropped


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from rlvr.config import TrainConfig, load_config, read_config

    config = args.config
    if config is None:
        config = run_config(args.model)
        if config is not None:
            print(f"rlvr eval: using {config}, the config of the run that wrote {args.model} (its task and rewards; "
                  "--config to choose another)", file=sys.stderr)
        else:
            config = DEFAULT_CONFIG
    overrides = [f"model={args.model}", *args.overrides]
    data = read_config(config)
    if args.engine:
        data, dropped = switch_engine(data, args.engine)
        if dropped:
            print(f"rlvr eval: --engine {args.engine}: left out {config}'s engine fields that {args.engine} does not "
                  f"take: {', '.join(dropped)}", file=sys.stderr)
        overrides.append(f"engine.kind={args.engine}")
    cfg = load_config(TrainConfig, config, overrides, data=data)
    from rlvr.evaluate import evaluate_model

    m = evaluate_model(cfg, progress=not args.json, verbose=not args.json)
    if args.json:
        print(json.dumps(m))
    else:
        for k, v in m.items():
            print(f"{k:>20}: {v:.4f}")
    return 0
