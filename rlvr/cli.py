"""The ``rlvr`` command. Arguments are parsed before torch or vLLM are imported, so
``--help`` answers at once; each subcommand module imports its heavy libraries inside
``run(args)``.

Each subcommand lives in a module with ``configure(parser)`` (cheap: argparse only) and
``run(args) -> int``.

Errors: the project's named errors (rlvr.errors: config, data, paths, packages, reward alarms,
parity, cluster) are mistakes a user can fix or stops the run decided on; they print as one
``error:`` line and exit 2 (``--debug`` adds the traceback). Any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

# name -> (module, one-line help). Modules must not import torch at import time.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("rlvr.commands.pretrain", "Build a tokenizer and pretrain a tiny base model from random init."),
    "midtrain": ("rlvr.commands.midtrain", "Continued pretraining on task-domain text (TRL SFTTrainer)."),
    "sft": ("rlvr.commands.sft", "Supervised fine-tuning on correct reasoning traces (TRL SFTTrainer)."),
    "dpo": ("rlvr.commands.dpo", "Preference tuning on on-policy pairs scored by the verifier (TRL DPOTrainer)."),
    "train": ("rlvr.commands.train", "RL-train a policy (GRPO & co.) from a YAML config."),
    "eval": ("rlvr.commands.eval", "Evaluate a checkpoint on a task's held-out split."),
    "run": ("rlvr.commands.run", "Run a stage recipe (pretrain -> sft -> dpo -> train ...), cached stage by stage."),
    "demo": ("rlvr.commands.demo", "Pretrain (or reuse) -> eval base -> RL-Zero -> eval -> before/after table."),
    "config": ("rlvr.commands.config", "Print every config field with its type, default and description."),
    "verify": ("rlvr.commands.verify", "Score a JSONL of completions with a verifier (audit / compare)."),
    "bench": ("rlvr.commands.bench", "Benchmark rollout throughput of engines side by side."),
    "serve": ("rlvr.commands.serve", "Serve a model through an OpenAI-compatible API (local, token-protected)."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlvr", description="RL with verifiable rewards: pretrain, train, eval, verify, bench.")
    debug_help = "on an error, print its full traceback too (errors of rlvr's own kinds are otherwise one line)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).configure(p)
        # also after the command (`rlvr train --debug`); SUPPRESS keeps `rlvr --debug train` working
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `key=value` overrides after an option (`--overwrite a.b=1`) still count as overrides
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 0
    return run_subcommand(importlib.import_module(SUBCOMMANDS[args.command][0]), args)


def run_subcommand(module, args: argparse.Namespace) -> int:
    """``module.run(args)`` as an exit status: a named error (rlvr.errors) is one ``error:`` line and
    status 2 (with its traceback under ``--debug``); any other exception propagates with its traceback."""
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from rlvr.errors import is_user_error

        if not is_user_error(exc):
            raise  # a bug: its traceback is what a report needs
        from rlvr.commands._common import fail

        if getattr(args, "debug", False):
            traceback.print_exception(exc)
        return fail(exc)


if __name__ == "__main__":
    sys.exit(main())
