"""`rlvr demo`: the whole R1-Zero story on a CPU, run as a stage recipe.

random init -> pretrain (cached) -> evaluate the base -> RL-Zero (GRPO, no SFT) -> evaluate
-> before/after table and ``reward_accuracy.png`` + ``demo_summary.json`` in the run directory.

The stages are those of ``configs/recipes/demo.yaml`` (``rlvr run`` runs the same recipe and
prints the recipe's path table instead). ``--pretrain-config`` / ``--config`` swap the two
stages' configs (and their output directories, read from those configs), e.g. for the code
demo; ``key.sub=value`` overrides go to the RL stage.

A recipe may hold several RL stages fed by the base (``configs/recipes/tools.yaml``: the same RL
budget with and without the python tool): each gets its table, then one line compares them at
equal steps. Overrides then go to every RL stage; ``--config`` needs a single one.
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
    """The demo recipe, loaded and checked, with the command line's configs and overrides applied: the recipe,
    its wired stages, the base's name and the RL stages' names."""
    from rlvr.config import ConfigError, PretrainConfig, TrainConfig, load_config
    from rlvr.stages.recipe import read_recipe, wire_recipe

    data = read_recipe(args.recipe)
    stages = data.get("stages") or []
    base = next((s for s in stages if isinstance(s, dict) and s.get("command") == "pretrain"), None)
    rls = [s for s in stages if isinstance(s, dict) and s.get("command") == "train"]
    if base is None or not rls or any(rl.get("input") != base.get("name") for rl in rls):
        raise ConfigError(f"demo recipe {args.recipe!r} needs a pretrain stage and train stages whose input it is")
    if args.config and len(rls) > 1:
        raise ConfigError(f"--config: demo recipe {args.recipe!r} has {len(rls)} RL stages; set their configs in it")
    data.pop("report", None)  # the demo prints its own before/after table
    if args.pretrain_config:
        base["config"] = args.pretrain_config
        base["out"] = load_config(PretrainConfig, args.pretrain_config).out_dir
    for rl in rls:
        rl["overrides"] = [*(rl.get("overrides") or []), *args.overrides]
        if args.config or any(o.startswith("run_dir=") for o in args.overrides):
            rl["config"] = args.config or rl.get("config")
            rl["out"] = load_config(TrainConfig, rl["config"], rl["overrides"]).run_dir
    recipe, wired = wire_recipe(data, args.recipe)
    return recipe, wired, base["name"], [rl["name"] for rl in rls]


# (label, metric key): the before/after rows, where both evaluations have the metric
ROWS = (("greedy pass@1", "pass@1"), ("pass@{k}", "pass@{k}"), ("format rate", "format_rate"),
        ("sampled format rate", "sampled_format_rate"), ("response length", "response_len"),
        ("tool calls per episode", "tool_calls"), ("tool errors per episode", "tool_errors"), ("turns", "turns"))


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from rlvr.stages.recipe import run_wired

    t0 = time.time()
    recipe, wired, base, rls = demo_recipe(args)  # ConfigError, StageFailed: one line (rlvr.cli)
    cfgs = {st.name: c for st, c in wired if st.name in rls}
    print(f"rlvr demo ({args.recipe}): random init -> pretraining (cached) -> RL-Zero (no SFT, no preference "
          "tuning) straight from the base")
    from rlvr.stages import OutputInUse

    try:
        result = run_wired(recipe, wired)
    except OutputInUse as exc:  # e.g. an `rlvr train` run in the demo's run_dir
        raise OutputInUse(f"{exc} (`rlvr demo run_dir=DIR` sets the RL stage's out)") from exc
    summaries = {}
    for rl, cfg in cfgs.items():
        summary = summaries[rl] = json.loads(Path(cfg.run_dir, "summary.json").read_text())  # what the run wrote
        b, a, k = summary["before"], summary["after"], cfg.eval.k
        rows = [(name.format(k=k), f"{b[key.format(k=k)]:.3f}", f"{a[key.format(k=k)]:.3f}",
                 f"{a[key.format(k=k)] - b[key.format(k=k)]:+.3f}")
                for name, key in ROWS if key.format(k=k) in b and key.format(k=k) in a]
        title = "" if len(cfgs) == 1 else f"{rl} (env.kind={cfg.env.kind}, {cfg.train.steps} RL steps): "
        print(f"\n{title}held-out results ({cfg.eval.num_prompts} test prompts never seen in pretraining or RL; "
              f"sampled = the pass@{k} samples at T={cfg.eval.temperature:g}):")
        print_table(rows, ("metric", "base", "after RL", "change"))
    if len(cfgs) > 1:
        print("\nside by side, held-out greedy pass@1 after RL: " + ", ".join(
            f"{rl} {summaries[rl]['after']['pass@1']:.3f} ({cfgs[rl].train.steps} steps)" for rl in cfgs))
    name = {rl: "rl" if len(rls) == 1 else rl for rl in rls}  # the wall-time keys: rl_s, or <stage>_s
    wall = {"pretrain_s": result["wall_s"][base], **{f"{name[rl]}_s": result["wall_s"][rl] for rl in rls},
            "total_s": round(time.time() - t0, 1)}
    print(f"\nwall time: pretrain {wall['pretrain_s']:.0f}s, " + ", ".join(
        f"{'RL+eval' if len(rls) == 1 else rl} {wall[f'{name[rl]}_s']:.0f}s" for rl in rls) +
        f", total {wall['total_s']:.0f}s")
    for rl, cfg in cfgs.items():
        summary = summaries[rl]
        print(f"plot: {summary['plot']}\ncheckpoint: {summary['checkpoint']}")
        Path(cfg.run_dir, "demo_summary.json").write_text(json.dumps({**summary, "wall": wall}, indent=1))
    return 0
