"""Stage recipes: ``rlvr run recipe.yaml`` chains stages, each stage's output feeding the next.

A recipe names its stages; a stage's ``input`` is the name of an earlier stage, whose output
model directory becomes the stage's ``model`` (its output goes to ``out``, default
``<out_root>/<name>``). Every stage config is loaded and checked, and every stage's ``out``
checked to be its own (absent, empty, or written by that kind of stage), before anything runs.
Stages are cached by config and input model content (`rlvr.stages.run_stage`), so a rerun skips
finished stages and resumes at the first one that did not finish (an RL stage from its newest
checkpoint); a failed stage leaves the earlier outputs as they were.

An optional ``report`` evaluates the final model of each named path (a list of stages) on the
held-out split with one evaluation config, and writes a table (markdown + JSON) and a PNG of
held-out pass@1 against cumulative training tokens.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from rlvr.config import ConfigError, Section, _format_error, apply_overrides, load_config, read_config
from rlvr.stages import STAGES


class RecipeStage(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Stage name (unique in the recipe).")
    command: str = Field(description="Stage command: pretrain, midtrain, sft, dpo or train.")
    config: str | None = Field(None, description="The stage's YAML config (the command's own format).")
    input: str | None = Field(None, description="Name of an earlier stage whose output model this stage starts from.")
    out: str | None = Field(None, description="Output directory (the run_dir for `train`); default <out_root>/<name>. "
                            "It must be absent, empty, or this kind of stage's own earlier output: a stage never "
                            "writes over anything else.")
    overrides: list[str] = Field(default_factory=list, description="key.sub=value overrides of the stage config.")
    cache: bool = Field(True, description="Reuse the stage's output when its config and input model are unchanged; "
                        "false reruns it every time (the demo's RL stage, whose run is what the demo shows). An RL "
                        "stage that was interrupted resumes from its newest checkpoint either way.")


class ReportConfig(Section):
    eval_config: str = Field("configs/tiny_r1zero.yaml", description="RL-format config whose task, rewards, eval "
                             "and engine settings evaluate every path (its `model` is replaced).")
    overrides: list[str] = Field(default_factory=list, description="Overrides of the evaluation config.")
    base: str = Field(description="The stage all paths start from (its output is evaluated as 'base').")
    paths: dict[str, list[str]] = Field(description="Path label -> its stages after the base, in order.")
    plot: str = Field("pass1_vs_tokens.png", description="PNG file name, in out_root.")


class Recipe(Section):
    name: str = Field("recipe", description="Recipe name (titles only).")
    out_root: str = Field("runs/recipe", description="Where stages without an `out` write.")
    seed: int | None = Field(None, description="Seed of every stage (train.seed of pretrain and train, seed of the "
                             "TRL stages) and of the report's evaluation, set before each stage's own overrides, so a "
                             "stage can pin its own; None: each config's own. `rlvr run R.yaml seed=1 "
                             "out_root=runs/r-seed1` repeats a recipe with another seed beside the first.")
    stages: list[RecipeStage] = Field(min_length=1, description="Stages, in the order they run.")
    report: ReportConfig | None = Field(None, description="Evaluate and compare paths at the end.")


def load_recipe(path: str, overrides: list[str] | None = None) -> tuple[Recipe, list[tuple[RecipeStage, Any]]]:
    """The recipe and each stage's validated config, with models and outputs wired; one error per problem."""
    return wire_recipe(apply_overrides(read_recipe(path), overrides or []), path)


def read_recipe(path: str) -> dict[str, Any]:
    """The recipe file as a mapping (to edit before `wire_recipe`, as `rlvr demo` does)."""
    return read_config(path, "recipe")


def wire_recipe(data: dict[str, Any], path: str) -> tuple[Recipe, list[tuple[RecipeStage, Any]]]:
    """Validate a recipe mapping (read from ``path``) and every stage's config; wire inputs to outputs."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, repr(path))) from None
    names = [s.name for s in recipe.stages]
    outputs: dict[str, Path] = {}
    roots: dict[Path, str] = {}  # each stage's own directory -> the stage
    wired = []
    for i, st in enumerate(recipe.stages):
        where = f"recipe {path!r}: stages.{i} ({st.name!r})"
        if names.count(st.name) > 1:
            raise ConfigError(f"{where}: the name {st.name!r} is used by more than one stage")
        if st.command not in STAGES:
            raise ConfigError(f"{where}: unknown command {st.command!r}; known: {', '.join(sorted(STAGES))}")
        stage = STAGES[st.command]
        extra = ([f"{stage.seed_field}={recipe.seed}"] if recipe.seed is not None else []) + list(st.overrides)
        if st.input is not None:
            if stage.model_field is None:
                raise ConfigError(f"{where}: {st.command!r} starts from random init and takes no input")
            if st.input not in outputs:
                later = st.input in names
                raise ConfigError(
                    f"{where}: input {st.input!r} is " + ("a later stage of this recipe; a stage can only start "
                    "from one that runs before it" if later else "not a stage of this recipe") +
                    f" (earlier stages: {', '.join(outputs) or 'none'})")
            extra.append(f"{stage.model_field}={outputs[st.input]}")
        extra.append(f"{stage.out_field}={st.out or Path(recipe.out_root) / st.name}")
        try:
            cfg = load_config(stage.config(), st.config, extra)
            if stage.check is not None:  # e.g. TRL's argument names, before anything runs
                stage.check(cfg)
        except (ConfigError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        root = stage.root(cfg).resolve()
        if root in roots:
            raise ConfigError(f"{where}: out {str(stage.root(cfg))!r} is already the out of stage "
                              f"{roots[root]!r}; give each stage its own out")
        roots[root] = st.name
        outputs[st.name] = stage.output(cfg)
        wired.append((st, cfg))
    if recipe.report is not None:
        rep = recipe.report
        for label, stages in {"base": [rep.base], **rep.paths}.items():
            for name in stages:
                if name not in outputs:
                    raise ConfigError(f"recipe {path!r}: report path {label!r} names {name!r}, which is not a stage "
                                      f"of this recipe (stages: {', '.join(names)})")
    return recipe, wired


class StageFailed(RuntimeError):
    """A stage raised; the message names it and says that earlier outputs are kept."""


def run_recipe(path: str, overrides: list[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Run every stage (cached ones are reused), then the report if the recipe has one."""
    return run_wired(*load_recipe(path, overrides), force=force)


def run_wired(recipe: Recipe, wired: list[tuple[RecipeStage, Any]], force: bool = False) -> dict[str, Any]:
    """Run a loaded recipe (`load_recipe` / `wire_recipe`): its stages in order, then its report.

    Returns the stages' records, ``wall_s`` (each stage's seconds in this run; a reused stage's
    are its check) and the report's table when there is one."""
    from rlvr.stages import OutputInUse, check_output, run_stage

    for st, cfg in wired:  # before any stage runs: no stage would write over work it did not make
        try:
            check_output(st.command, cfg, field="out")
        except OutputInUse as exc:
            raise OutputInUse(f"stage {st.name!r} ({st.command}): {exc}") from None
    records: dict[str, dict[str, Any]] = {}
    wall: dict[str, float] = {}
    t0 = time.time()
    for i, (st, cfg) in enumerate(wired):
        print(f"\n== stage {i + 1}/{len(wired)}: {st.name} ({st.command}"
              + (f" from {st.input}" if st.input else "") + ") ==")
        t_stage = time.time()
        try:
            records[st.name] = run_stage(st.command, cfg, force=force or not st.cache)
            wall[st.name] = round(time.time() - t_stage, 1)
        except Exception as exc:
            done = ", ".join(f"{n} -> {r['output']}" for n, r in records.items()) or "none"
            raise StageFailed(f"stage {st.name!r} ({st.command}) failed: {type(exc).__name__}: {exc}\n"
                              f"finished stages keep their outputs ({done}); rerun the recipe to resume at "
                              f"{st.name!r}") from exc
    out_root = Path(recipe.out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"recipe": recipe.name, "stages": records, "wall_s": wall,
                               "seconds": round(time.time() - t0, 1)}
    if recipe.report is not None:
        from rlvr.stages.report import report

        summary["report"] = report(recipe, wired, records)
    (out_root / "recipe_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"{recipe.name}: {len(wired)} stages ({sum(r['cached'] for r in records.values())} cached)"
          + (" and report" if recipe.report is not None else "") + f" in {time.time() - t0:.0f}s")
    return summary
