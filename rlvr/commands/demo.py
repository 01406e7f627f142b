"""`rlvr demo`: the whole R1-Zero story on a CPU.

random init -> pretrain (cached) -> evaluate the base -> RL-Zero (GRPO, no SFT) -> evaluate
-> before/after table and ``reward_accuracy.png`` in the run directory.
"""

from __future__ import annotations

import argparse

from rlvr.commands._common import fail, print_table


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pretrain-config", default="configs/tiny_pretrain.yaml", help="pretraining config")
    p.add_argument("--config", default="configs/tiny_r1zero.yaml", help="RL config")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides for the RL config")


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from rlvr.config import ConfigError, PretrainConfig, TrainConfig, load_config

    t0 = time.time()
    try:
        pcfg = load_config(PretrainConfig, args.pretrain_config)
        cfg = load_config(TrainConfig, args.config, args.overrides)
    except ConfigError as exc:
        return fail(str(exc))
    from rlvr.loop import train
    from rlvr.pretrain import pretrain

    print("== stage 1: pretraining the base model from random init ==")
    pretrain(pcfg)
    t1 = time.time()
    print("== stage 2: RL-Zero (no SFT, no preference tuning) straight from the base ==")
    summary = train(cfg, overwrite=True)  # a benchmark/demo run always starts afresh
    t2 = time.time()
    b, a = summary["before"], summary["after"]
    k = cfg.eval.k
    rows = [(name, f"{b[key]:.3f}", f"{a[key]:.3f}", f"{a[key] - b[key]:+.3f}")
            for name, key in (("greedy pass@1", "pass@1"), (f"pass@{k}", f"pass@{k}"), ("format rate", "format_rate"),
                              ("response length", "response_len"))]
    print(f"\nheld-out results ({cfg.eval.num_prompts} test prompts never seen in pretraining or RL):")
    print_table(rows, ("metric", "base", "after RL", "change"))
    wall = {"pretrain_s": round(t1 - t0, 1), "rl_s": round(t2 - t1, 1), "total_s": round(t2 - t0, 1)}
    print(f"\nwall time: pretrain {wall['pretrain_s']:.0f}s, RL+eval {wall['rl_s']:.0f}s, total {wall['total_s']:.0f}s")
    print(f"plot: {summary['plot']}\ncheckpoint: {summary['checkpoint']}")
    Path(cfg.run_dir, "demo_summary.json").write_text(json.dumps({**summary, "wall": wall}, indent=1))
    return 0
