"""`rlvr pretrain`: tokenizer + random init + pretraining of the tiny base model."""

from __future__ import annotations

import argparse

from rlvr.commands._common import add_config_args


def configure(p: argparse.ArgumentParser) -> None:
    add_config_args(p, "configs/tiny_pretrain.yaml")
    p.add_argument("--force", action="store_true", help="rebuild even if a cached model with the same config exists")


def run(args: argparse.Namespace) -> int:
    from rlvr.config import PretrainConfig, load_config

    cfg = load_config(PretrainConfig, args.config, args.overrides)  # ConfigError: one line (rlvr.cli)
    from rlvr.pretrain import pretrain

    pretrain(cfg, force=args.force)
    return 0
