"""`rlvr midtrain`: continued pretraining on task-domain text without the answer format (TRL SFTTrainer)."""

from __future__ import annotations

import argparse

from rlvr.commands._stage import configure_stage, run_stage_command


def configure(p: argparse.ArgumentParser) -> None:
    configure_stage(p, "configs/stages/midtrain.yaml")


def run(args: argparse.Namespace) -> int:
    return run_stage_command("midtrain", args)
