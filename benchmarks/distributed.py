"""What Ray costs, and what each weight-sync transport costs, in one run.

1. Step time on the demo config (`configs/tiny_r1zero.yaml`, the demo's base): the single-process
   loop, the Ray loop at 1 rollout worker / 1 learner rank, and at 2 workers / 1 rank. Each run is
   its own `rlvr train` process; its figure is the median `step_s` over the steps after the first
   (start-up and the first sync excluded). The topologies run interleaved, `--rounds` times
   (A B C A B C ...), because a shared machine's speed drifts between runs by more than the
   differences measured: the table gives each topology's median over the rounds and the median of
   its per-round ratio to the single process (each ratio from runs minutes apart, not tens).
2. Weight sync to one rollout worker (vLLM, float32): in process (the default loop), through
   shared memory and through Ray's object store, for the tiny base and a ~75M Llama
   (random init, `benchmarks/configs/llama-75m.json`). Median of `--syncs` loads.

    python benchmarks/distributed.py [--steps 12] [--rounds 3] [--syncs 5] [--skip-steps] [--skip-sync]

Run it on an otherwise idle machine: two cores shared with anything else make every figure noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TOPOLOGIES = [("single process", []),
              ("Ray 1 worker / 1 rank", ["cluster.rollout_workers=1"]),
              ("Ray 2 workers / 1 rank", ["cluster.rollout_workers=2"])]


PHASES = ("step_s", "wait_rollouts_s", "generate_s", "learn_s", "sync_s")


def one_run(model: str, steps: int, run_dir: Path, extra: list[str]) -> dict:
    """Medians over the steps after the first of one `rlvr train` run."""
    cmd = [sys.executable, "-m", "rlvr.cli", "train", "--config", "configs/tiny_r1zero.yaml", f"model={model}",
           f"run_dir={run_dir}", f"train.steps={steps}", "eval.every=0", "eval.num_prompts=32", "eval.k=1",
           "checkpoint.every=0", "logging.progress=false", "--overwrite", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"][1:]
    return {k: statistics.median(r[k] for r in train) for k in PHASES}


def step_times(model: str, steps: int, rounds: int, out: Path) -> list[dict]:
    runs: dict[str, list[dict]] = {name: [] for name, _ in TOPOLOGIES}
    for rnd in range(rounds):
        for name, extra in TOPOLOGIES:
            runs[name].append(one_run(model, steps, out / f"{name.replace(' ', '_').replace('/', '')}-{rnd}", extra))
        print(f"round {rnd + 1}: " + ", ".join(f"{name} {r[-1]['step_s']:.3f} s" for name, r in runs.items()), flush=True)
    single = runs[TOPOLOGIES[0][0]]
    return [{"topology": name, **{k: statistics.median(r[k] for r in rs) for k in PHASES},
             "ratios": [r["step_s"] / s["step_s"] for r, s in zip(rs, single)]} for name, rs in runs.items()]


def sync_times(model_dir: str, syncs: int) -> list[dict]:
    """Median load time of the model's own (perturbed) weights into one vLLM engine per transport."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlvr.cluster.runtime import connect
    from rlvr.components import build_rubric
    from rlvr.config import TrainConfig, load_config
    from rlvr.rollout import LocalRollouts
    from rlvr.rollout.ray import RayRollouts

    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    named = list(policy.named_parameters())
    nbytes = sum(p.numel() * p.element_size() for _, p in named)
    rows = []
    for transport in ("in process", "shm", "object_store"):
        extra = [] if transport == "in process" else ["cluster.rollout_workers=1", f"cluster.weight_sync={transport}"]
        cfg = load_config(TrainConfig, "configs/tiny_r1zero.yaml", [f"model={model_dir}", *extra])
        if transport == "in process":
            backend = LocalRollouts(cfg, model_dir, build_rubric(cfg), 0)
        else:
            backend = RayRollouts(cfg, model_dir, connect(cfg.cluster))
        times = []
        try:
            for i in range(syncs + 1):
                with torch.no_grad():
                    for _, p in named:
                        p.add_(1e-6 * (i + 1))
                m = backend.load_weights([(n, p.detach()) for n, p in named])
                times.append({"sync_s": m["sync_s"], "pack_s": m.get("sync_pack_s", 0.0),
                              "load_s": m.get("sync_load_s", m["sync_s"])})
        finally:
            backend.close()
        rest = times[1:]  # the first load also warms the worker's buffers
        rows.append({"model": Path(model_dir).name, "params_m": nbytes / 4e6, "transport": transport,
                     **{k: statistics.median(t[k] for t in rest) for k in ("sync_s", "pack_s", "load_s")},
                     "mb": nbytes / 2**20})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="artifacts/tiny-base", help="the demo's base (make demo builds it)")
    ap.add_argument("--big", default="benchmarks/configs/llama-75m.json", help="architecture of the large sync case")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the step-time runs")
    ap.add_argument("--syncs", type=int, default=5)
    ap.add_argument("--skip-steps", action="store_true")
    ap.add_argument("--skip-sync", action="store_true")
    args = ap.parse_args()
    if not Path(args.model, "config.json").exists():
        sys.exit(f"{args.model}: no model there; run `make demo` (or `rlvr pretrain`) first")
    import torch

    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}, threads: {torch.get_num_threads()}")
    out = Path(tempfile.mkdtemp(prefix="rlvr-dist-bench-"))
    if not args.skip_steps:
        rows = step_times(args.model, args.steps, args.rounds, out)
        print(f"\nstep time on {args.model}: per run the median of steps 2..{args.steps}; median of {args.rounds} "
              "interleaved rounds")
        print(f"{'topology':<24} {'step s':>7} {'vs single':>9}  {'per round':<24} {'wait ro s':>9} {'generate s':>10} "
              f"{'learn s':>7} {'sync s':>7}")
        for r in rows:
            per_round = " ".join(f"{100 * (x - 1):+.1f}%" for x in r["ratios"])
            print(f"{r['topology']:<24} {r['step_s']:>7.3f} {100 * (statistics.median(r['ratios']) - 1):>+8.1f}%  "
                  f"{per_round:<24} {r['wait_rollouts_s']:>9.3f} {r['generate_s']:>10.3f} {r['learn_s']:>7.3f} "
                  f"{r['sync_s']:>7.4f}")
    if not args.skip_sync:
        from rollouts.bench import build_random_model

        big = build_random_model(args.big, args.model, str(out / "big"))
        rows = sync_times(args.model, args.syncs) + sync_times(big, args.syncs)
        print(f"\nweight sync into one vLLM engine, median of {args.syncs}")
        print(f"{'model':<12} {'MiB':>6} {'transport':<13} {'sync s':>7} {'pack s':>7} {'load s':>7}")
        for r in rows:
            print(f"{r['model']:<12} {r['mb']:>6.0f} {r['transport']:<13} {r['sync_s']:>7.3f} {r['pack_s']:>7.3f} "
                  f"{r['load_s']:>7.3f}")


if __name__ == "__main__":
    main()
