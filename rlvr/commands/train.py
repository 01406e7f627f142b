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
    p.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="check the run without running it: print the resolved config, check that the model, tokenizer "
                        "and dataset are reachable, print the memory preflight, and run one RL step on CPU with a "
                        "random-init model of the same architecture, shrunk")
    p.epilog = "Every config field, with its type, default and meaning: `rlvr config [SECTION]`."


def run(args: argparse.Namespace) -> int:
    from rlvr.config import TrainConfig, load_config

    if args.resume and args.overwrite:
        return fail("--resume continues the run in RUN_DIR and --overwrite deletes it: give one of them")
    config = args.config
    overrides = list(args.overrides)
    if args.resume:
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            return fail(f"--resume: no such run directory {args.resume!r}")
        if config is None:
            config = str(run_dir / "config.yaml")
        overrides.append(f"run_dir={args.resume}")
    cfg = load_config(TrainConfig, config or DEFAULT_CONFIG, overrides)  # ConfigError: one line (rlvr.cli)
    if args.print_config:
        from rlvr.config import config_yaml

        print(config_yaml(cfg), end="")
        return 0
    from rlvr.trackers import check_trackers

    check_trackers(cfg.logging.report_to)  # a missing package or login: before any data or model loads
    if args.dry_run:
        from rlvr.dry_run import dry_run

        dry_run(cfg)
        return 0
    from rlvr.checkpoint import check_run_dir

    check_run_dir(cfg.run_dir, resume=bool(args.resume), overwrite=args.overwrite)
    from rlvr.loop import train

    summary = train(cfg, resume=bool(args.resume), overwrite=args.overwrite)
    print_summary(summary, cfg.eval.k)
    return 0


def print_summary(summary: dict, k: int) -> None:
    from rlvr.logging import print_table

    b, a = summary["before"], summary["after"]
    if a is None or b is None:
        print(f"\nno held-out evaluation (eval.num_prompts=0); checkpoint: {summary['checkpoint']}")
        return
    rows = [(name, f"{b[key]:.3f}", f"{a[key]:.3f}", f"{a[key] - b[key]:+.3f}")
            for name, key in (("greedy pass@1", "pass@1"), (f"pass@{k}", f"pass@{k}"), ("format rate", "format_rate"),
                              ("response length", "response_len"), ("verifier errors", "verifier_errors"))
            if key in a and key in b]
    print(f"\nheld-out results ({int(a.get('num_prompts', 0))} prompts never trained on):")
    print_table(rows, ("metric", "before", "after", "change"))
    print(f"checkpoint: {summary['checkpoint']}  plot: {summary['plot']}")
