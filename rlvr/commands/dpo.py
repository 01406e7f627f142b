"""`rlvr dpo`: preference tuning on on-policy pairs scored by the task verifier (TRL DPOTrainer)."""

from __future__ import annotations

import argparse

from rlvr.commands._stage import configure_stage, run_stage_command


def configure(p: argparse.ArgumentParser) -> None:
    configure_stage(p, "configs/stages/dpo.yaml")


def run(args: argparse.Namespace) -> int:
    return run_stage_command("dpo", args)
