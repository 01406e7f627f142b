"""`rlvr train`: RL from a YAML config, or `--resume RUN_DIR` to continue a stopped run."""

from __future__ import annotations

import argparse
from pathlib import Path

from rlvr.commands._common import add_config_args, fail

DEFAULT_CONFIG = "configs/tiny_r1zero.yaml"


def configure(p: argparse.ArgumentParser) -> None:
    add_config_args(p, None)
    p.description = (f"RL training from --config (default {DEFAULT_CONFIG}). With --resume RUN_DIR the run continues "
                     "from its newest checkpoint, using RUN_DIR/config.yaml unless --config is given; overrides "
                     "may change only fields that do not alter training (e.g. train.steps to extend a run).")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh even if run_dir holds an earlier run's checkpoints (they are deleted)")


def run(args: argparse.Namespace) -> int:
    from rlvr.config import ConfigError, TrainConfig, load_config

    config = args.config
    overrides = list(args.overrides)
    if args.resume:
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            return fail(f"--resume: no such run directory {args.resume!r}")
        if config is None:
            config = str(run_dir / "config.yaml")
        overrides.append(f"run_dir={args.resume}")
    try:
        cfg = load_config(TrainConfig, config or DEFAULT_CONFIG, overrides)
    except ConfigError as exc:
        return fail(str(exc))
    from rlvr.loop import train

    try:
        summary = train(cfg, resume=bool(args.resume), overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as exc:  # ConfigError is a ValueError
        return fail(str(exc).strip("'\""))
    b, a = summary["before"], summary["after"]
    print(f"held-out pass@1 {b['pass@1']:.3f} -> {a['pass@1']:.3f}; format {b['format_rate']:.3f} -> {a['format_rate']:.3f}")
    print(f"checkpoint: {summary['checkpoint']}  plot: {summary['plot']}")
    return 0
