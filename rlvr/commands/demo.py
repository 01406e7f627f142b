"""`rlvr demo`: the whole R1-Zero story on a CPU, run as a stage recipe.

random init -> pretrain (cached) -> evaluate the base -> RL-Zero (GRPO, no SFT) -> evaluate
-> before/after table and ``reward_accuracy.png`` + ``demo_summary.json`` in the run directory.

The stages are those of ``configs/recipes/demo.yaml`` (``rlvr run`` runs the same recipe and
prints the recipe's path table instead). ``--pretrain-config`` / ``--config`` swap the two
stages' configs (and their output directories, read from those configs), e.g. for the code
demo; ``key.sub=value`` overrides go to the RL stage.
"""

from __future__ import annotations

import argparse

from rlvr.logging import print_table

RECIPE = "configs/recipes/demo.yaml"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default=RECIPE, help=f"the demo recipe: a pretrain stage, then a train stage fed by it "
                   f"(default: {RECIPE})")
    p.add_argument("--pretrain-config", help="pretraining config (default: the recipe's)")
    p.add_argument("--config", help="RL config (default: the recipe's)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides for the RL config")


def demo_recipe(args: argparse.Namespace) -> tuple:
    """The demo recipe, loaded and checked, with the command line's configs and overrides applied."""
    from rlvr.config import ConfigError, PretrainConfig, TrainConfig, load_config
    from rlvr.stages.recipe import read_recipe, wire_recipe

    data = read_recipe(args.recipe)
    stages = data.get("stages") or []
    base = next((s for s in stages if isinstance(s, dict) and s.get("command") == "pretrain"), None)
    rl = next((s for s in stages if isinstance(s, dict) and s.get("command") == "train"), None)
    if base is None or rl is None or rl.get("input") != base.get("name"):
        raise ConfigError(f"demo recipe {args.recipe!r} needs a pretrain stage and a train stage whose input it is")
    data.pop("report", None)  # the demo prints its own before/after table
    if args.pretrain_config:
        base["config"] = args.pretrain_config
        base["out"] = load_config(PretrainConfig, args.pretrain_config).out_dir
    rl["overrides"] = [*(rl.get("overrides") or []), *args.overrides]
    if args.config or any(o.startswith("run_dir=") for o in args.overrides):
        rl["config"] = args.config or rl.get("config")
        rl["out"] = load_config(TrainConfig, rl["config"], rl["overrides"]).run_dir
    recipe, wired = wire_recipe(data, args.recipe)
    return recipe, wired, base["name"], rl["name"]


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from rlvr.stages.recipe import run_wired

    t0 = time.time()
    recipe, wired, base, rl = demo_recipe(args)  # ConfigError, StageFailed: one line (rlvr.cli)
    cfg = next(c for st, c in wired if st.name == rl)
    print(f"rlvr demo ({args.recipe}): random init -> pretraining (cached) -> RL-Zero (no SFT, no preference "
          "tuning) straight from the base")
    from rlvr.stages import OutputInUse

    try:
        result = run_wired(recipe, wired)
    except OutputInUse as exc:  # e.g. an `rlvr train` run in the demo's run_dir
        raise OutputInUse(f"{exc} (`rlvr demo run_dir=DIR` sets the RL stage's out)") from exc
    summary = json.loads(Path(cfg.run_dir, "summary.json").read_text())  # what the RL run wrote
    b, a = summary["before"], summary["after"]
    k = cfg.eval.k
    rows = [(name, f"{b[key]:.3f}", f"{a[key]:.3f}", f"{a[key] - b[key]:+.3f}")
            for name, key in (("greedy pass@1", "pass@1"), (f"pass@{k}", f"pass@{k}"), ("format rate", "format_rate"),
                              ("sampled format rate", "sampled_format_rate"), ("response length", "response_len"))
            if key in b and key in a]
    print(f"\nheld-out results ({cfg.eval.num_prompts} test prompts never seen in pretraining or RL; "
          f"sampled = the pass@{k} samples at T={cfg.eval.temperature:g}):")
    print_table(rows, ("metric", "base", "after RL", "change"))
    wall = {"pretrain_s": result["wall_s"][base], "rl_s": result["wall_s"][rl], "total_s": round(time.time() - t0, 1)}
    print(f"\nwall time: pretrain {wall['pretrain_s']:.0f}s, RL+eval {wall['rl_s']:.0f}s, total {wall['total_s']:.0f}s")
    print(f"plot: {summary['plot']}\ncheckpoint: {summary['checkpoint']}")
    Path(cfg.run_dir, "demo_summary.json").write_text(json.dumps({**summary, "wall": wall}, indent=1))
    return 0
