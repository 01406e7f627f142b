"""Every algorithm preset on the tiny R1-Zero task, same steps, same seeds, one table.

    .venv/bin/python benchmarks/algorithms.py [--steps 40] [--seeds 1] [--presets grpo,dapo] [--quick]

Each preset trains from ``configs/<preset>.yaml`` (the tiny R1-Zero demo with only its
``algorithm`` section changed) for ``--steps`` RL steps per seed, with the held-out set
evaluated every ``--eval-every`` steps (greedy decoding: pass@1, format rate, response length).
Prints a markdown table (final held-out pass@1, format rate, mean response length, wall time,
divergence flags), writes it to ``<out>/table.md`` with the raw numbers in ``results.json``,
and plots the curves to ``<out>/algorithms.png``.

A run is flagged ``nan`` if any training metric is not finite and ``empty`` if it collapsed to
empty answers (final greedy response under 2 tokens on average). Wall time is the whole run,
evaluations included. Run it on an otherwise idle machine: timings of concurrent jobs mean little.
``--quick`` (10 steps, 50 held-out prompts) checks the script, not the algorithms.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESET_ORDER = ("grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce_pp", "ppo")


def run_one(preset: str, seed: int, args: argparse.Namespace) -> dict:
    from rlvr.config import TrainConfig, load_config
    from rlvr.logging import read_metrics
    from rlvr.loop import train

    run_dir = Path(args.out) / f"{preset}-s{seed}"
    cfg = load_config(TrainConfig, str(ROOT / "configs" / f"{preset}.yaml"), [
        f"model={args.model}", f"run_dir={run_dir}", f"train.steps={args.steps}", f"train.seed={seed}",
        f"train.threads={args.threads}", f"eval.every={args.eval_every}", f"eval.num_prompts={args.eval_prompts}",
        "eval.k=1", "logging.progress=false", "logging.tensorboard=false", *args.override,
    ])
    t0 = time.perf_counter()
    summary = train(cfg, overwrite=True)  # a benchmark/demo run always starts afresh
    wall = time.perf_counter() - t0
    records = read_metrics(run_dir / "metrics.jsonl")
    trains = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    nan = any(not math.isfinite(v) for r in trains for k, v in r.items() if k != "kind")
    after = summary["after"]
    return {
        "preset": preset, "seed": seed, "wall_s": wall,
        "pass@1_before": summary["before"]["pass@1"], "pass@1": after["pass@1"],
        "format_rate": after["format_rate"], "response_len": after["response_len"],
        "flags": (["nan"] if nan else []) + (["empty"] if after["response_len"] < 2 else []),
        "curves": {
            "eval_step": [r["step"] for r in evals], "pass@1": [r["pass@1"] for r in evals],
            "format_rate": [r["format_rate"] for r in evals],
            "train_step": [r["step"] for r in trains], "reward_mean": [r["reward_mean"] for r in trains],
            "response_len_mean": [r["response_len_mean"] for r in trains],
        },
    }


def _mean_sd(xs: list[float], fmt: str) -> str:
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(statistics.mean(xs), fmt)} ± {format(statistics.stdev(xs), fmt)}"


def table(results: list[dict], presets: list[str]) -> str:
    lines = ["| preset | held-out pass@1 (start → end) | format rate | response length (tokens) | wall time | flags |",
             "|---|---|---|---|---|---|"]
    for p in presets:
        rs = [r for r in results if r["preset"] == p]
        flags = sorted({f for r in rs for f in r["flags"]}) or ["—"]
        lines.append(
            f"| `{p}` | {_mean_sd([r['pass@1_before'] for r in rs], '.3f')} → {_mean_sd([r['pass@1'] for r in rs], '.3f')} "
            f"| {_mean_sd([r['format_rate'] for r in rs], '.2f')} | {_mean_sd([r['response_len'] for r in rs], '.1f')} "
            f"| {_mean_sd([r['wall_s'] / 60 for r in rs], '.1f')} min | {', '.join(flags)} |")
    return "\n".join(lines)


def plot(results: list[dict], presets: list[str], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("eval_step", "pass@1", "held-out greedy pass@1"), ("eval_step", "format_rate", "held-out format rate"),
              ("train_step", "reward_mean", "train reward (mean)"),
              ("train_step", "response_len_mean", "train response length (tokens)")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for ax, (x_key, y_key, title) in zip(axes.flat, panels):
        for p in presets:
            rs = [r["curves"] for r in results if r["preset"] == p]
            if not rs:
                continue
            ys = [statistics.mean(vals) for vals in zip(*(c[y_key] for c in rs))]  # mean over seeds
            ax.plot(rs[0][x_key], ys, "o-" if x_key == "eval_step" else "-", label=p, ms=3, alpha=0.85)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("RL step")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="artifacts/tiny-base", help="pretrained tiny base (rlvr pretrain)")
    ap.add_argument("--steps", type=int, default=40, help="RL steps per run (configs/tiny_r1zero.yaml: 40)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per preset")
    ap.add_argument("--presets", default=",".join(PRESET_ORDER), help="comma-separated preset names")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--eval-prompts", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (1: no OpenMP oversubscription)")
    ap.add_argument("--out", default="runs/bench-algorithms")
    ap.add_argument("--quick", action="store_true", help="10 steps, 50 held-out prompts: a check of the script")
    ap.add_argument("override", nargs="*", help="extra key.sub=value config overrides for every run")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.eval_prompts, args.eval_every = min(args.steps, 10), 50, 5
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"no model at {args.model!r}: run `rlvr pretrain --config configs/tiny_pretrain.yaml` or pass --model")

    import torch

    torch.set_num_threads(args.threads)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in range(args.seeds):
        for p in presets:
            r = run_one(p, seed, args)
            results.append(r)
            print(f"{p:13s} seed {seed}: pass@1 {r['pass@1_before']:.3f} -> {r['pass@1']:.3f}, "
                  f"format {r['format_rate']:.2f}, len {r['response_len']:.1f}, {r['wall_s'] / 60:.1f} min "
                  f"{' '.join(r['flags'])}", flush=True)
    md = table(results, presets)
    header = (f"{args.steps} steps × {args.seeds} seed(s), model {args.model}, "
              f"{args.eval_prompts} held-out prompts, torch threads {args.threads}")
    print(f"\n{header}\n\n{md}")
    (out / "table.md").write_text(f"{header}\n\n{md}\n")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    plot(results, presets, out / "algorithms.png")
    print(f"\nwrote {out / 'table.md'}, {out / 'results.json'}, {out / 'algorithms.png'}")


if __name__ == "__main__":
    main()
