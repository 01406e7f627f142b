"""Stage recipes (`rlvr run`): chaining, caching on rerun, failure keeps earlier outputs and the
rerun resumes at the failed stage, one clear error per bad recipe."""

from __future__ import annotations

import pytest
import yaml

from rlvr.cli import main
from rlvr.config import ConfigError
from rlvr.stages.recipe import StageFailed, load_recipe, run_recipe

FAST = ["num_examples=48", "threads=1", "trl.max_steps=2", "trl.per_device_train_batch_size=8"]
PAIRS = ["pairs.engine=hf", "pairs.num_prompts=24", "pairs.heldout_prompts=0", "pairs.max_tokens=24"]
# pairs judged by the strict format check, not the answer: how often the micro base answers right depends on
# the CPU that pretrained it (tests/rlvr/stages/test_stages.py), while about a third of its samples are
# well-formed on every CPU seen
FORMAT_PAIRS = [*PAIRS, "pairs.verifier=r1_format"]


def write(tmp_path, stages, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"name": "t", "out_root": str(tmp_path / "out"), "stages": stages}))
    return str(path)


def stage(name, command, model=None, input=None, extra=()):
    st = {"name": name, "command": command, "config": f"configs/stages/{command}.yaml", "overrides": [*FAST, *extra]}
    if model:
        st["overrides"].append(f"model={model}")
    if input:
        st["input"] = input
    return st


def test_three_stage_recipe_chains_and_reruns_cached(micro_model, tmp_path, capsys):
    recipe = write(tmp_path, [stage("mid", "midtrain", model=micro_model), stage("sft", "sft", input="mid"),
                              stage("dpo", "dpo", input="sft", extra=FORMAT_PAIRS)])
    first = run_recipe(recipe)["stages"]
    assert [r["cached"] for r in first.values()] == [False, False, False]
    assert first["sft"]["config"]["model"] == first["mid"]["output"]  # each stage's output feeds the next
    assert first["dpo"]["config"]["model"] == first["sft"]["output"]
    capsys.readouterr()
    assert main(["run", recipe]) == 0
    assert capsys.readouterr().out.count("reusing") == 3


def test_failed_stage_keeps_earlier_outputs_and_rerun_resumes_there(micro_model, tmp_path, capsys):
    # stage 2 fails: an arithmetic-only model gets every countdown prompt wrong, so DPO has no pairs
    bad = write(tmp_path, [stage("sft", "sft", model=micro_model),
                           stage("dpo", "dpo", input="sft", extra=[*PAIRS, "task.kind=countdown", "pairs.n=2",
                                                                  "pairs.num_prompts=4"])])
    with pytest.raises(StageFailed, match="(?s)stage 'dpo' .*no preference pairs.*rerun the recipe to resume at 'dpo'"):
        run_recipe(bad)
    sft_out = tmp_path / "out" / "sft"
    stamp = (sft_out / "rlvr_stage.json").read_text()
    assert (sft_out / "model.safetensors").is_file() and not (tmp_path / "out" / "dpo").exists()
    assert main(["run", bad]) == 2 and "error: stage 'dpo'" in capsys.readouterr().err

    fixed = write(tmp_path, [stage("sft", "sft", model=micro_model), stage("dpo", "dpo", input="sft", extra=FORMAT_PAIRS)])
    records = run_recipe(fixed)["stages"]
    assert records["sft"]["cached"] and not records["dpo"]["cached"]
    assert (sft_out / "rlvr_stage.json").read_text() == stamp
    assert (tmp_path / "out" / "dpo" / "model.safetensors").is_file()


def test_unknown_command_is_one_error(micro_model, tmp_path):
    recipe = write(tmp_path, [stage("sft", "sft", model=micro_model), {"name": "x", "command": "rlhf"}])
    with pytest.raises(ConfigError, match=r"stages.1 \('x'\): unknown command 'rlhf'; known: dpo, midtrain, pretrain, sft, train"):
        load_recipe(recipe)


def test_input_from_a_stage_not_in_the_recipe_is_one_error(micro_model, tmp_path, capsys):
    recipe = write(tmp_path, [stage("base_sft", "sft", model=micro_model), stage("dpo", "dpo", input="sft")])
    with pytest.raises(ConfigError, match=r"stages.1 \('dpo'\): input 'sft' is not a stage of this recipe "
                                          r"\(earlier stages: base_sft\)"):
        load_recipe(recipe)
    later = write(tmp_path, [stage("dpo", "dpo", input="sft"), stage("sft", "sft", model=micro_model)], "l.yaml")
    with pytest.raises(ConfigError, match="input 'sft' is a later stage of this recipe"):
        load_recipe(later)
    assert main(["run", recipe]) == 2 and capsys.readouterr().err.count("error:") == 1


def test_stage_config_errors_name_the_stage(micro_model, tmp_path):
    recipe = write(tmp_path, [stage("sft", "sft", model=micro_model, extra=["num_exampls=3"])])
    with pytest.raises(ConfigError, match=r"(?s)stages.0 \('sft'\).*num_exampls: unknown key"):
        load_recipe(recipe)


def test_unknown_trl_argument_fails_before_any_stage_runs(micro_model, tmp_path):
    recipe = write(tmp_path, [stage("sft", "sft", model=micro_model),
                              stage("dpo", "dpo", input="sft", extra=["trl.betta=0.1"])])
    with pytest.raises(ConfigError, match=r"stages.1 \('dpo'\): trl.betta: not an argument of trl.DPOConfig"):
        load_recipe(recipe)
    assert not (tmp_path / "out").exists()


def test_recipe_seed_reaches_every_stage_but_one_that_pins_its_own(tmp_path):
    over = ["seed=3", f"out_root={tmp_path / 'phases-seed3'}"]
    recipe, wired = load_recipe("configs/recipes/phases.yaml", over)
    cfgs = {st.name: cfg for st, cfg in wired}
    assert recipe.seed == 3
    assert cfgs["base"].train.seed == 0  # the shared base pins seed 0: another seed would rebuild it in place
    assert cfgs["rl_zero"].train.seed == cfgs["sft_rl"].train.seed == cfgs["dpo_rl"].train.seed == 3
    assert cfgs["sft"].seed == cfgs["dpo"].seed == 3
    assert cfgs["dpo"].model == str(tmp_path / "phases-seed3" / "sft")  # each seed's stages beside each other
    _, default = load_recipe("configs/recipes/phases.yaml")
    assert {st.name: cfg for st, cfg in default}["sft"].seed == 0  # no recipe seed: the stage config's own


def test_shipped_recipes_load():
    for path in ("configs/recipes/demo.yaml", "configs/recipes/phases.yaml"):
        recipe, wired = load_recipe(path)
        assert wired and recipe.report is not None
    wired = load_recipe("configs/recipes/demo.yaml")[1]
    demo = {st.name: st for st, _ in wired}
    assert demo["base"].cache and not demo["rl_zero"].cache  # `make demo` reuses the base and reruns RL
    assert dict((st.name, cfg) for st, cfg in wired)["rl_zero"].engine.kind == "static"  # the demo's engine


def test_report_tables_every_path_and_plots(micro_model, tmp_path):
    """sft -> RL beside RL-Zero, evaluated with one config; the PNG and the table are written; the base
    row names the stages that made the base (here SFT, not "(pretrained)") and what they trained."""
    rl = ["engine.kind=hf", "train.steps=2", "train.prompts_per_step=4", "sampling.n=4", "sampling.max_tokens=16",
          "eval.num_prompts=8", "eval.k=2", "eval.max_tokens=16", "eval.every=1", "logging.progress=false",
          "train.micro_batch_size=16", "checkpoint.every=0", "train.threads=1"]
    ev = tmp_path / "eval.yaml"
    ev.write_text(yaml.safe_dump({"model": micro_model, "engine": {"kind": "hf"},
                                  "eval": {"num_prompts": 8, "k": 2, "max_tokens": 16}}))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "name": "mini", "out_root": str(tmp_path / "out"),
        "stages": [{"name": "sft", "command": "sft", "config": "configs/stages/sft.yaml",
                    "overrides": [*FAST, f"model={micro_model}"]},
                   {"name": "rl_zero", "command": "train", "config": "configs/tiny_r1zero.yaml",
                    "overrides": [*rl, f"model={micro_model}"]},
                   {"name": "sft_rl", "command": "train", "config": "configs/tiny_r1zero.yaml", "input": "sft",
                    "overrides": rl}],
        "report": {"eval_config": str(ev), "base": "sft", "paths": {"RL-Zero": ["rl_zero"], "SFT→RL": ["sft_rl"]}}}))
    table = run_recipe(str(path))["report"]["table"]
    assert [row["path"] for row in table] == ["base", "RL-Zero", "SFT→RL"]
    base_row = table[0]  # the base is an SFT model: the row says so and counts what SFT trained
    assert base_row["stages"] == "sft" and base_row["optimizer_steps"] == 2 and base_row["tokens"] > 0
    assert table[2]["stages"] == "train" and table[2]["optimizer_steps"] == 2  # the path: after the base
    assert "(pretrained)" not in (tmp_path / "out" / "table.md").read_text()
    rl_row = table[1]
    assert rl_row["optimizer_steps"] == 2 and rl_row["tokens"] > 0 and 0 <= rl_row["pass@1"] <= 1
    assert all(0 <= row["sampled_format_rate"] <= 1 for row in table)  # the pass@k samples' format, beside greedy
    assert "| sampled format |" in (tmp_path / "out" / "table.md").read_text()
    assert (tmp_path / "out" / "pass1_vs_tokens.png").stat().st_size > 1000
    assert "| RL-Zero |" in (tmp_path / "out" / "table.md").read_text()
    again = run_recipe(str(path))  # RL stages are cached like the TRL ones
    assert all(r["cached"] for r in again["stages"].values()) and again["report"]["table"] == table


RL_MICRO = ["engine.kind=hf", "train.steps=1", "train.prompts_per_step=4", "sampling.n=4", "sampling.max_tokens=16",
            "eval.num_prompts=8", "eval.k=2", "eval.max_tokens=16", "logging.progress=false",
            "train.micro_batch_size=16", "checkpoint.every=0", "train.threads=1"]


def test_demo_runs_the_demo_recipe_with_overrides_on_the_rl_stage(micro_pretrain_cfg, micro_model, tmp_path, capsys):
    """`rlvr demo` = configs/recipes/demo.yaml through the recipe runner: the base is reused (cached),
    the RL stage reruns every time with the command line's overrides, and the before/after table,
    the PNG and demo_summary.json are written as before."""
    import json

    pre = tmp_path / "pre.yaml"
    pre.write_text(yaml.safe_dump(micro_pretrain_cfg.model_dump(mode="json")))  # out_dir: the micro base
    run_dir = tmp_path / "run"
    assert main(["demo", "--pretrain-config", str(pre), *RL_MICRO, f"run_dir={run_dir}", "train.seed=3"]) == 0
    out = capsys.readouterr().out
    assert "pretrain: reusing" in out and "\ntrain: reusing" not in out  # base cached; RL (cache: false) runs
    assert "held-out results (8 test prompts" in out and "greedy pass@1" in out and "sampled format rate" in out
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["train"]["seed"] == 3 and cfg["train"]["steps"] == 1 and cfg["model"] == micro_model
    summary = json.loads((run_dir / "demo_summary.json").read_text())
    assert {"before", "after", "checkpoint", "plot", "wall"} <= set(summary)
    assert summary["wall"]["total_s"] >= summary["wall"]["rl_s"] > 0
    assert (run_dir / "reward_accuracy.png").stat().st_size > 1000
    assert (run_dir / "final" / "rlvr_stage.json").is_file()  # written by the recipe's train stage


def test_demo_bad_override_is_one_error_naming_the_rl_stage(capsys):
    assert main(["demo", "train.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "stages.1 ('rl_zero')" in err and "train.stepz: unknown key" in err


def test_demo_overrides_reach_the_rl_stage_config():
    """`rlvr demo cluster.rollout_workers=2 ...`: the overrides land in the RL stage's config only."""
    from rlvr.cli import build_parser
    from rlvr.commands.demo import demo_recipe

    args = build_parser().parse_args(["demo", "cluster.rollout_workers=2", "train.steps=7", "run_dir=runs/x"])
    recipe, wired, base, (rl,) = demo_recipe(args)
    cfgs = {st.name: cfg for st, cfg in wired}
    assert (base, rl) == ("base", "rl_zero") and recipe.report is None
    assert cfgs[rl].cluster.rollout_workers == 2 and cfgs[rl].train.steps == 7 and cfgs[rl].run_dir == "runs/x"
    assert cfgs[rl].model == cfgs[base].out_dir == "artifacts/tiny-base"


def test_demo_tools_recipe_runs_the_same_rl_budget_with_and_without_the_tool():
    """`make demo-tools`: one base, two RL stages fed by it, the same settings but the environment."""
    from rlvr.cli import build_parser
    from rlvr.commands.demo import demo_recipe

    args = build_parser().parse_args(["demo", "--recipe", "configs/recipes/tools.yaml", "train.steps=5"])
    _, wired, base, rls = demo_recipe(args)
    cfgs = {st.name: cfg for st, cfg in wired}
    assert rls == ["rl_tool", "rl_no_tool"] and all(cfgs[r].model == cfgs[base].out_dir for r in rls)
    tool, plain = cfgs["rl_tool"], cfgs["rl_no_tool"]
    assert (tool.env.kind, plain.env.kind) == ("python", "single_turn") and tool.run_dir != plain.run_dir
    assert tool.train.steps == plain.train.steps == 5 and tool.task == plain.task and tool.sampling == plain.sampling
    # the corpus's tool calls read as the environment's, so RL continues the pretrained habit
    doc = cfgs[base].corpus.tool_template.format(expression="1+2", answer=3)
    assert tool.env.output_template.format(output="3\n") in doc and doc.startswith(f" {tool.env.call_open}print(1+2)")
    with pytest.raises(ConfigError, match="--config: demo recipe .* has 2 RL stages"):
        demo_recipe(build_parser().parse_args(["demo", "--recipe", "configs/recipes/tools.yaml", "--config", "x.yaml"]))


def test_demo_code_swaps_both_stage_configs_and_outputs():
    """`make demo-code`: the demo recipe with the code configs, each stage writing where its config says."""
    from rlvr.cli import build_parser
    from rlvr.commands.demo import demo_recipe

    args = build_parser().parse_args(["demo", "--pretrain-config", "configs/code_pretrain.yaml",
                                      "--config", "configs/code_r1zero.yaml"])
    _, wired, base, (rl,) = demo_recipe(args)
    cfgs = {st.name: cfg for st, cfg in wired}
    assert cfgs[base].out_dir == cfgs[rl].model == "artifacts/code-base" and cfgs[rl].run_dir == "runs/code-r1zero"
    assert cfgs[rl].task.kind == "pyfunc"
