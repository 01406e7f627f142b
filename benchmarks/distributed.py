"""What Ray costs, and what each weight-sync transport costs, in one run.

1. Step time on the demo config (`configs/tiny_r1zero.yaml`, the demo's base): the single-process
   loop, the Ray loop at 1 rollout worker / 1 learner rank, and at 2 workers / 1 rank. Median
   `step_s` over the steps after the first (start-up and the first sync excluded); each run in
   its own process, one after the other.
2. Weight sync to one rollout worker (vLLM, float32): in process (the default loop), through
   shared memory and through Ray's object store, for the tiny base and a ~75M Llama
   (random init, `benchmarks/configs/llama-75m.json`). Median of `--syncs` loads.

    python benchmarks/distributed.py [--steps 12] [--syncs 5] [--skip-steps] [--skip-sync]

Run it on an otherwise idle machine: two cores shared with anything else make every figure noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOPOLOGIES = [("single process", []),
              ("Ray 1 worker / 1 rank", ["cluster.rollout_workers=1"]),
              ("Ray 2 workers / 1 rank", ["cluster.rollout_workers=2"])]


def step_times(model: str, steps: int, out: Path) -> list[dict]:
    rows = []
    for name, extra in TOPOLOGIES:
        run_dir = out / name.replace(" ", "_").replace("/", "")
        cmd = [sys.executable, "-m", "rlvr.cli", "train", "--config", "configs/tiny_r1zero.yaml", f"model={model}",
               f"run_dir={run_dir}", f"train.steps={steps}", "eval.every=0", "eval.num_prompts=32", "eval.k=1",
               "checkpoint.every=0", "logging.progress=false", "--overwrite", *extra]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in recs if r["kind"] == "train"]
        rows.append({"topology": name, "step_s": statistics.median(r["step_s"] for r in train[1:]),
                     "generate_s": statistics.median(r["generate_s"] for r in train[1:]),
                     "sync_s": statistics.median(r["sync_s"] for r in train[1:]),
                     "reward_last": train[-1]["reward_mean"], "wall_s": wall})
    return rows


def sync_times(model_dir: str, syncs: int) -> list[dict]:
    """Median load time of the model's own (perturbed) weights into one vLLM engine per transport."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlvr.cluster.rollout_workers import RayRollouts
    from rlvr.cluster.runtime import connect
    from rlvr.components import build_rubric
    from rlvr.config import TrainConfig, load_config
    from rlvr.rollout_backends import LocalRollouts

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
                times.append(m)
        finally:
            backend.close()
        rest = times[1:]  # the first load also warms the worker's buffers
        rows.append({"model": Path(model_dir).name, "params_m": nbytes / 4e6, "transport": transport,
                     "sync_s": statistics.median(t["sync_s"] for t in rest),
                     "pack_s": statistics.median(t.get("sync_pack_s", 0.0) for t in rest),
                     "load_s": statistics.median(t.get("sync_load_s", t["sync_s"]) for t in rest),
                     "mb": nbytes / 2**20})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="artifacts/tiny-base", help="the demo's base (make demo builds it)")
    ap.add_argument("--big", default="benchmarks/configs/llama-75m.json", help="architecture of the large sync case")
    ap.add_argument("--steps", type=int, default=12)
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
        rows = step_times(args.model, args.steps, out)
        base = rows[0]["step_s"]
        print(f"\nstep time on {args.model}, median of steps 2..{args.steps}")
        print(f"{'topology':<24} {'step s':>7} {'vs single':>9} {'generate s':>10} {'sync s':>7} {'reward':>7}")
        for r in rows:
            print(f"{r['topology']:<24} {r['step_s']:>7.3f} {100 * (r['step_s'] / base - 1):>+8.1f}% "
                  f"{r['generate_s']:>10.3f} {r['sync_s']:>7.4f} {r['reward_last']:>7.3f}")
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
