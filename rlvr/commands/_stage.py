"""What `rlvr midtrain`, `rlvr sft` and `rlvr dpo` share: config, cache, one-line errors."""

from __future__ import annotations

import argparse

from rlvr.commands._common import add_config_args, fail


def configure_stage(p: argparse.ArgumentParser, default_config: str) -> None:
    add_config_args(p, default_config)
    p.add_argument("--force", action="store_true", help="rerun even if the output holds this config's result")
    p.epilog = ("TRL's own arguments go under `trl:` in the config (or trl.learning_rate=1e-4 on the command line). "
                "The output is cached by config and the input model's content; out_dir must be absent, empty "
                "or this stage's own earlier output.")


def run_stage_command(command: str, args: argparse.Namespace) -> int:
    import json

    from rlvr.config import ConfigError, load_config
    from rlvr.stages import STAGES

    try:
        cfg = load_config(STAGES[command].config(), args.config, args.overrides)
    except ConfigError as exc:
        return fail(exc)
    from rlvr.stages import run_stage
    from rlvr.stages.data import NoPairsError

    try:
        record = run_stage(command, cfg, force=args.force)
    except (FileNotFoundError, NoPairsError, ValueError) as exc:
        return fail(exc)
    shown = {k: record.get(k) for k in ("output", "optimizer_steps", "tokens", "seconds", "pairs",
                                        "heldout_margin_before", "heldout_margin_after") if record.get(k) is not None}
    print(f"{command}: " + json.dumps(shown))
    return 0
