"""What `rlvr midtrain`, `rlvr sft` and `rlvr dpo` share: config and cache (named errors are one line: rlvr.cli)."""

from __future__ import annotations

import argparse

from rlvr.commands._common import add_config_args


def configure_stage(p: argparse.ArgumentParser, default_config: str) -> None:
    add_config_args(p, default_config)
    p.add_argument("--force", action="store_true", help="rerun even if the output holds this config's result")
    p.epilog = ("TRL's own arguments go under `trl:` in the config (or trl.learning_rate=1e-4 on the command line). "
                "The output is cached by config and the input model's content; out_dir must be absent, empty "
                "or this stage's own earlier output.")


def run_stage_command(command: str, args: argparse.Namespace) -> int:
    import json

    from rlvr.config import load_config
    from rlvr.stages import STAGES

    cfg = load_config(STAGES[command].config(), args.config, args.overrides)  # ConfigError: one line (rlvr.cli)
    from rlvr.stages import run_stage

    record = run_stage(command, cfg, force=args.force)
    shown = {k: record.get(k) for k in ("output", "optimizer_steps", "tokens", "seconds", "pairs",
                                        "heldout_margin_before", "heldout_margin_after") if record.get(k) is not None}
    print(f"{command}: " + json.dumps(shown))
    return 0
