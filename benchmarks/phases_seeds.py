"""`make phases` over several seeds: every path's held-out greedy pass@1 as mean ± standard error, and
what each stage changed against the model it started from, in standard errors.

    .venv/bin/python benchmarks/phases_seeds.py [--seeds 0,1,2] [--recipe configs/recipes/phases.yaml]
        [--threads 1] [--out runs/phases-seeds] [--json] [recipe override ...]

Each seed is ``rlvr run <out>/seed<S>.yaml``: the recipe with ``seed: S`` (every stage after the shared
base, and the report's evaluation, take it; see `rlvr.stages.recipe.Recipe.seed`), ``out_root:
<out>/seed<S>`` and, with ``--threads``, every stage's torch threads set (so runs beside other jobs
do not oversubscribe the cores), in a subprocess of its own. Stages are cached, so a rerun resumes.
A stage's change is paired: the per-seed difference between its model and its input's (the same
seed's), mean ± SE over seeds; "beyond noise" when the mean is at least two standard errors from 0.
Results: ``<out>/results.json``, each seed's recipe output under ``<out>/seed<S>``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from seedstats import compare, mean_se  # noqa: E402

THREADS_FIELD = {"pretrain": "train.threads", "train": "train.threads"}  # the TRL stages: "threads"


def seed_recipe(recipe: str, seed: int, out_root: Path, threads: int) -> dict:
    """The recipe as a mapping, with its seed, out_root and (threads > 0) every stage's threads set."""
    from rlvr.stages.recipe import read_recipe

    data = read_recipe(recipe)
    data["seed"], data["out_root"] = seed, str(out_root)
    if threads:
        for st in data["stages"]:
            st["overrides"] = [*st.get("overrides", []), f"{THREADS_FIELD.get(st['command'], 'threads')}={threads}"]
        if data.get("report"):
            data["report"]["overrides"] = [*data["report"].get("overrides", []), f"train.threads={threads}"]
    return data


def stage_changes(data: dict) -> list[tuple[str, str, str]]:
    """(path, its parent path, the stage between them) for each report path whose stages minus the last
    are the base or another path: what that one stage changed."""
    paths = {label: tuple(stages) for label, stages in data["report"]["paths"].items()}
    by_stages = {(): "base", **{stages: label for label, stages in paths.items()}}
    return [(label, by_stages[stages[:-1]], stages[-1]) for label, stages in paths.items() if stages[:-1] in by_stages]


def summarize(per_seed: dict[int, dict[str, float]], changes: list[tuple[str, str, str]]) -> dict:
    """Mean ± SE of every path's pass@1 over seeds, and each stage's paired change over its parent."""
    labels = list(next(iter(per_seed.values())))
    table = {label: mean_se([p[label] for p in per_seed.values()]) for label in labels}
    steps = []
    for path, parent, stage in changes:
        diffs = [p[path] - p[parent] for p in per_seed.values()]
        m, se = mean_se(diffs)
        steps.append({"path": path, "over": parent, "stage": stage, "diffs": diffs, "mean": m, "se": se,
                      "z": abs(m) / se if se > 0 else (0.0 if m == 0 else float("inf")),
                      "unpaired": compare(table[path], table[parent])})
        steps[-1]["beyond_noise"] = steps[-1]["z"] >= 2
    return {"table": table, "changes": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated recipe seeds")
    ap.add_argument("--recipe", default="configs/recipes/phases.yaml")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of every stage (0: each config's own)")
    ap.add_argument("--out", default="runs/phases-seeds")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("overrides", nargs="*", help="recipe overrides (key.sub=value) for every seed")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per_seed: dict[int, dict[str, float]] = {}
    data = None
    for seed in seeds:
        data = seed_recipe(args.recipe, seed, out / f"seed{seed}", args.threads)
        path = out / f"seed{seed}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        log = out / f"seed{seed}.log"
        print(f"seed {seed}: rlvr run {path} {' '.join(args.overrides)} (log: {log}) ...", flush=True)
        with log.open("w") as fh:
            done = subprocess.run([sys.executable, "-m", "rlvr.cli", "run", str(path), *args.overrides], cwd=ROOT,
                                  stdout=fh, stderr=subprocess.STDOUT)
        if done.returncode:
            sys.exit(f"seed {seed} failed ({done.returncode}); log {log}:\n" + log.read_text()[-2000:])
        rows = json.loads((out / f"seed{seed}" / "table.json").read_text())
        per_seed[seed] = {r["path"]: r["pass@1"] for r in rows}
        print("  " + ", ".join(f"{k} {v:.3f}" for k, v in per_seed[seed].items()), flush=True)
    results = {"seeds": seeds, "recipe": args.recipe, "threads": args.threads, "overrides": args.overrides,
               "per_seed": per_seed, **summarize(per_seed, stage_changes(data))}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results))
        return
    print(f"\nheld-out greedy pass@1, mean ± SE over seeds {seeds}")
    for label, (m, se) in results["table"].items():
        print(f"  {label:<16} {m:.3f} ± {se:.3f}")
    print("what each stage changed over its input (paired by seed):")
    for c in results["changes"]:
        verdict = "beyond noise" if c["beyond_noise"] else "within noise"
        print(f"  {c['path']} over {c['over']} ({c['stage']}): {c['mean']:+.3f} ± {c['se']:.3f} "
              f"({c['z']:.1f} SE): {verdict}")


if __name__ == "__main__":
    main()
