"""Synchronous, one-step-off and in-flight training side by side: steps per second, generated tokens per
second, the staleness histogram, and held-out pass@1 at equal steps and at equal wall time.

    .venv/bin/python benchmarks/async.py [--config configs/tiny_r1zero.yaml] [--base artifacts/tiny-base]
        [--modes sync,off1,flight1,flight2] [--layout pinned|shared] [--steps N] [--evals 4]
        [--out runs/async] [--json] [override ...]

Modes (every run: the static engine, ``train.threads=1``, the same seed and steps):
    sync      the synchronous loop
    off1      ``train.async=true``: one-step-off (the engine draws step s + 1 while the learner trains s)
    flightK   ``train.async: {in_flight: true, max_staleness: K}``: the engine runs up to K steps ahead and
              loads each new version between two decode steps
    dflightK  the same, ``deterministic: true`` (each load at a fixed decode step)

``--layout pinned`` (default) is the GPU-shaped layout: one Ray rollout worker pinned to its own core and the
learner on the other (``cluster.rollout_workers=1 cluster.pin_cores=true``); ``shared`` runs the engine in the
trainer's process. Each run evaluates ``--evals`` times (``eval.every``); the train time at an evaluation is the
sum of ``step_s`` up to it (evaluation time left out). "Equal wall time" is the shortest run's train time: each
mode's latest evaluation at or before it. The base is pretrained (``configs/tiny_pretrain.yaml``) when ``--base``
does not exist. Results: ``<out>/results.json`` and one run directory per mode.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODES = {
    "sync": [],
    "off1": ["train.async=true"],
    "flight1": ["train.async.in_flight=true", "train.async.max_staleness=1"],
    "flight2": ["train.async.in_flight=true", "train.async.max_staleness=2"],
    "dflight1": ["train.async.in_flight=true", "train.async.max_staleness=1", "train.async.deterministic=true"],
    "dflight2": ["train.async.in_flight=true", "train.async.max_staleness=2", "train.async.deterministic=true"],
}
LAYOUTS = {"pinned": ["cluster.rollout_workers=1", "cluster.pin_cores=true"], "shared": []}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(run_dir: Path, prompts: int, n: int) -> dict:
    """One run's figures from its metrics.jsonl: train lines (``kind`` absent or "train") and eval lines."""
    lines = read_jsonl(run_dir / "metrics.jsonl")
    train = [m for m in lines if m.get("kind", "train") == "train"]
    evals = [m for m in lines if m.get("kind") == "eval"]
    train_s = sum(m["step_s"] for m in train)
    tokens = sum(m["response_len_mean"] * prompts * n for m in train)
    clock, at = 0.0, {}
    for m in train:  # the train time at the end of each step
        clock += m["step_s"]
        at[m["step"]] = clock
    keys = sorted({k for m in train for k in m if k.startswith("staleness/tokens_")})
    return {
        "steps": len(train), "train_s": round(train_s, 2), "steps_per_s": len(train) / train_s,
        "gen_tokens_per_s": tokens / train_s,
        "staleness": {k.removeprefix("staleness/tokens_"): sum(m.get(k, 0.0) for m in train) / len(train) for k in keys},
        "stale_dropped": sum(m.get("stale_dropped", 0.0) for m in train),
        "evals": [{"step": e["step"], "train_s": at.get(e["step"], 0.0), "pass@1": e["pass@1"]} for e in evals],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/tiny_r1zero.yaml")
    p.add_argument("--base", default="artifacts/tiny-base", help="the pretrained base (built if missing)")
    p.add_argument("--modes", default="sync,off1,flight1,flight2")
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="pinned")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--evals", type=int, default=4, help="evaluations per run (eval.every = steps / evals)")
    p.add_argument("--out", default="runs/async")
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", help="key.sub=value for every run")
    args = p.parse_args()
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        sys.exit(f"--modes: unknown {unknown}; known: {', '.join(MODES)}")
    out, base = Path(args.out), Path(args.base)
    out.mkdir(parents=True, exist_ok=True)
    rlvr = [sys.executable, "-m", "rlvr.cli"]
    if not (base / "config.json").is_file():
        print(f"pretraining the base into {base} ...", flush=True)
        subprocess.run([*rlvr, "pretrain", "--config", "configs/tiny_pretrain.yaml", f"out_dir={base}"], cwd=ROOT,
                       check=True)
    every = max(1, args.steps // max(args.evals, 1))
    common = [f"model={base}", "engine.kind=static", "train.threads=1", "engine.threads=1", f"train.steps={args.steps}",
              f"eval.every={every}", "logging.progress=false", *LAYOUTS[args.layout], *args.overrides]
    from rlvr.config import TrainConfig, load_config

    cfg = load_config(TrainConfig, args.config, common)
    runs = {}
    for mode in modes:
        run_dir = out / mode
        log = out / f"{mode}.log"
        print(f"{mode} ...", end=" ", flush=True)
        with log.open("w") as fh:
            done = subprocess.run([*rlvr, "train", "--config", args.config, "--overwrite", f"run_dir={run_dir}",
                                   *common, *MODES[mode]], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        if done.returncode:
            sys.exit(f"{mode} failed ({done.returncode}); log: {log}\n" + log.read_text()[-3000:])
        runs[mode] = summarise(run_dir, cfg.train.prompts_per_step, cfg.sampling.n)
        r = runs[mode]
        print(f"{r['steps_per_s']:.3f} steps/s, pass@1 {r['evals'][-1]['pass@1']:.3f}", flush=True)
    shortest = min(r["train_s"] for r in runs.values())
    ref = runs[modes[0]]
    for r in runs.values():
        r["x_first"] = r["steps_per_s"] / ref["steps_per_s"]
        r["pass@1_steps"] = r["evals"][-1]["pass@1"]
        reached = [e for e in r["evals"] if e["train_s"] <= shortest + 1e-9]
        r["pass@1_wall"] = reached[-1]["pass@1"] if reached else None
    results = {"modes": runs, "layout": args.layout, "steps": args.steps, "equal_wall_s": shortest,
               "config": args.config, "overrides": args.overrides}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results))
        return
    print(f"\n{args.config}, {args.steps} steps, layout {args.layout}; equal wall time = {shortest:.0f} s of training")
    print(f"{'mode':<9} {'steps/s':>8} {'x ' + modes[0]:>9} {'gen tok/s':>10} {'pass@1':>7} {'@wall':>6}  staleness "
          "(share of tokens at 0, 1, ...)")
    for mode, r in runs.items():
        wall = "-" if r["pass@1_wall"] is None else f"{r['pass@1_wall']:.3f}"
        hist = " ".join(f"{v:.2f}" for _, v in sorted(r["staleness"].items()))
        print(f"{mode:<9} {r['steps_per_s']:>8.3f} {r['x_first']:>9.2f} {r['gen_tokens_per_s']:>10.0f} "
              f"{r['pass@1_steps']:>7.3f} {wall:>6}  {hist}")


if __name__ == "__main__":
    main()
