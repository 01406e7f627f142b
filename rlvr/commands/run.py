"""`rlvr run RECIPE.yaml`: chain stages (pretrain, midtrain, sft, dpo, train), each stage's output
feeding the next; finished stages are reused (cached by config and input model content), a failed
stage keeps the earlier outputs and a rerun resumes at it (an RL stage from its newest checkpoint);
no stage writes over a directory it did not make. See docs/stages.md."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML (e.g. configs/recipes/phases.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides of the recipe file")
    p.add_argument("--force", action="store_true", help="rerun every stage even if cached")


def run(args: argparse.Namespace) -> int:
    from rlvr.stages.recipe import run_recipe

    run_recipe(args.recipe, args.overrides, force=args.force)  # ConfigError, StageFailed: one line (rlvr.cli)
    return 0
