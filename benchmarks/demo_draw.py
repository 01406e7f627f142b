"""The demo's draw on the static engine, two source trees side by side: is generation at the demo's
shape faster or slower than on another commit?

    git worktree add /tmp/old 75d9121
    .venv/bin/python benchmarks/demo_draw.py /tmp/old . [--rounds 5] [--calls 12] [--threads 2]

The draw is the one `make demo`'s RL stage makes every step: 16 arith prompts (the R1-Zero template)
x 8 samples, at most 48 tokens, temperature 1, on ``artifacts/tiny-base``. Each round runs every tree
once, in turn, in a fresh process (``PYTHONPATH=TREE``): it builds the engine, makes ``calls`` draws of
16 new prompts each (seeds 100 + i) and reports the median seconds of a draw, the first two (compile,
warm-up) left out. Prints each round's medians, the median over rounds per tree and the rounds'
ratios against the first tree. Same seeds in every tree: the sampled token count is printed per tree,
so a build that samples other tokens shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_DRAW = """
import json, statistics, sys, time, torch
torch.set_num_threads({threads})
from rollouts import SamplingConfig, make_engine
from rlvr.tasks import ArithTask, load_task, render
cfg = ArithTask()
prompts = [render(r["question"], cfg) for r in load_task(cfg).train[: 16 * {calls}]]
engine = make_engine("static", {model!r}, dtype="float32")
times, tokens = [], 0
for i in range({calls}):
    sampling = SamplingConfig(n=8, temperature=1.0, max_tokens=48, seed=100 + i)
    t0 = time.perf_counter()
    groups = engine.generate(prompts[16 * i : 16 * i + 16], sampling)
    times.append(time.perf_counter() - t0)
    tokens += sum(len(c.token_ids) for g in groups for c in g.completions)
print(json.dumps({{"median_s": statistics.median(times[2:]), "tokens": tokens}}))
"""


def one_draw_run(tree: Path, model: str, calls: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "TOKENIZERS_PARALLELISM": "false"}
    code = _DRAW.format(threads=threads, calls=calls, model=model)
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"the draw failed in {tree}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="+", help="source trees (a checkout or git worktree each); the first is the baseline")
    ap.add_argument("--model", default=str(ROOT / "artifacts" / "tiny-base"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=12, help="draws per process (the first two not counted)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.calls < 3:
        ap.error("--calls must be at least 3 (the first two are warm-up)")
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"no model at {args.model!r}: run `rlvr pretrain --config configs/tiny_pretrain.yaml` first")
    trees = [Path(t).resolve() for t in args.trees]
    runs: dict[Path, list[dict]] = {t: [] for t in trees}
    for r in range(args.rounds):
        cells = []
        for t in trees:
            res = one_draw_run(t, args.model, args.calls, args.threads)
            runs[t].append(res)
            cells.append(f"{res['median_s']:.4f} s")
        print(f"round {r}: " + "  ".join(cells), flush=True)
    base = trees[0]
    print(f"\nmedian seconds a draw (16 prompts x 8, <= 48 tokens), {args.rounds} rounds, {args.threads} threads:")
    for t in trees:
        med = statistics.median(x["median_s"] for x in runs[t])
        ratios = [x["median_s"] / b["median_s"] for x, b in zip(runs[t], runs[base])]
        print(f"  {str(t):50s} {med:.4f} s   x{statistics.median(ratios):.2f} of the first (rounds "
              f"{', '.join(f'{q:.2f}' for q in ratios)})   tokens sampled {runs[t][0]['tokens']}")


if __name__ == "__main__":
    main()
