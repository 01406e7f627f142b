"""`rlvr sft`: supervised fine-tuning on correct step-by-step traces (TRL SFTTrainer, completion-only loss)."""

from __future__ import annotations

import argparse

from rlvr.commands._stage import configure_stage, run_stage_command


def configure(p: argparse.ArgumentParser) -> None:
    configure_stage(p, "configs/stages/sft.yaml")


def run(args: argparse.Namespace) -> int:
    return run_stage_command("sft", args)
