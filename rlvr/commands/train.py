"""`rlvr train`: RL from a YAML config."""

from __future__ import annotations

import argparse

from rlvr.commands._common import add_config_args, fail


def configure(p: argparse.ArgumentParser) -> None:
    add_config_args(p, "configs/tiny_r1zero.yaml")


def run(args: argparse.Namespace) -> int:
    from rlvr.config import ConfigError, TrainConfig, load_config

    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
    except ConfigError as exc:
        return fail(str(exc))
    from rlvr.loop import train

    try:
        summary = train(cfg)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        return fail(str(exc).strip("'\""))
    b, a = summary["before"], summary["after"]
    print(f"held-out pass@1 {b['pass@1']:.3f} -> {a['pass@1']:.3f}; format {b['format_rate']:.3f} -> {a['format_rate']:.3f}")
    print(f"checkpoint: {summary['checkpoint']}  plot: {summary['plot']}")
    return 0
