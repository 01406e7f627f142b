"""Do the engines learn alike? The demo's RL stage on each rollout engine over several seeds, held-out
greedy pass@1 as mean ± standard error, and every pair's difference in standard errors.

    .venv/bin/python benchmarks/engines_learning.py [--engines static,vllm,hf] [--seeds 0,1,2]
        [--base artifacts/tiny-base] [--steps N] [--out runs/engines_learning] [--json] [override ...]

Each run is ``rlvr train --config configs/tiny_r1zero.yaml`` (the demo's RL stage) from the demo's
pretrained base with ``engine.kind=E train.seed=S`` and the overrides, in a subprocess of its own; the
base is pretrained first (``configs/tiny_pretrain.yaml``) when ``--base`` does not exist. The seed sets
the prompt order and every sampling seed, so the runs of one engine differ as two users' runs would.
A pair of engines is "within noise" when their mean held-out pass@1 after RL differ by less than two
standard errors of the difference (sqrt(se_a² + se_b²)); the before column is the base, the same for all.
Results: ``<out>/results.json`` and one run directory per engine and seed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from seedstats import compare, mean_se  # noqa: E402


def run(cmd: list[str], log: Path) -> None:
    with log.open("w") as fh:
        done = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n  log: {log}\n  " + log.read_text()[-2000:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default="static,vllm,hf")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values")
    p.add_argument("--base", default="artifacts/tiny-base", help="the demo's pretrained base (built if missing)")
    p.add_argument("--steps", type=int, default=None, help="train.steps (default: the demo config's)")
    p.add_argument("--out", default="runs/engines_learning")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("overrides", nargs="*", help="key.sub=value for every run")
    args = p.parse_args()
    engines, seeds = args.engines.split(","), [int(s) for s in args.seeds.split(",")]
    out, base = Path(args.out), Path(args.base)
    out.mkdir(parents=True, exist_ok=True)
    rlvr = [sys.executable, "-m", "rlvr.cli"]
    if not (base / "config.json").is_file():
        print(f"pretraining the base into {base} ...", flush=True)
        run([*rlvr, "pretrain", "--config", "configs/tiny_pretrain.yaml", f"out_dir={base}"], out / "pretrain.log")
    runs = []
    for engine, seed in itertools.product(engines, seeds):
        run_dir = out / f"{engine}-seed{seed}"
        steps = [f"train.steps={args.steps}"] if args.steps else []
        t0 = time.perf_counter()
        print(f"{engine} seed {seed} ...", end=" ", flush=True)
        run([*rlvr, "train", "--config", "configs/tiny_r1zero.yaml", "--overwrite", f"model={base}",
             f"run_dir={run_dir}", f"engine.kind={engine}", f"train.seed={seed}", "logging.progress=false",
             *steps, *args.overrides], out / f"{engine}-seed{seed}.log")
        summary = json.loads((run_dir / "summary.json").read_text())
        runs.append({"engine": engine, "seed": seed, "before": summary["before"]["pass@1"],
                     "after": summary["after"]["pass@1"], "wall_s": round(time.perf_counter() - t0, 1)})
        print(f"pass@1 {runs[-1]['before']:.3f} -> {runs[-1]['after']:.3f} ({runs[-1]['wall_s']} s)", flush=True)
    table = {}
    for engine in engines:
        after = [r["after"] for r in runs if r["engine"] == engine]
        gain = [r["after"] - r["before"] for r in runs if r["engine"] == engine]
        table[engine] = {"after": mean_se(after), "gain": mean_se(gain), "n": len(after)}
    pairs = []
    for a, b in itertools.combinations(engines, 2):
        pairs.append({"a": a, "b": b, **compare(table[a]["after"], table[b]["after"])})
    results = {"runs": runs, "engines": table, "pairs": pairs, "seeds": seeds, "overrides": args.overrides}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results))
        return
    print(f"\nheld-out greedy pass@1 after RL, mean ± SE over seeds {seeds}")
    for engine, row in table.items():
        (m, s), (g, gs) = row["after"], row["gain"]
        print(f"  {engine:<8} {m:.3f} ± {s:.3f}   gain over the base {g:+.3f} ± {gs:.3f}   (n={row['n']})")
    for pr in pairs:
        verdict = "within noise" if pr["within_noise"] else "DIFFERENT"
        print(f"  {pr['a']} - {pr['b']}: {pr['diff']:+.3f} ({pr['z']:.1f} SE of the difference): {verdict}")


if __name__ == "__main__":
    main()
