"""Does a tied-head model train on vLLM as an untied one does? One run, side by side.

For Qwen2 with an untied and a tied output head (same sizes, corpus, seed): pretrain a small
base on the arithmetic corpus, then RL-Zero it on vLLM (CPU build) with in-place weight sync (the demo's GRPO config),
and print held-out greedy pass@1 before and after, the largest engine/learner log-prob gap seen
(the parity gate's quantity: a stale tied head would show up here as nats) and the time.

    python benchmarks/tied_vs_untied.py [--steps 30] [--out runs/tied-vs-untied]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--out", default="runs/tied-vs-untied")
    ap.add_argument("--archs", default="qwen2,qwen2-tied")
    args = ap.parse_args()

    from rlvr.config import PretrainConfig, TrainConfig, load_config
    from rlvr.logging import read_metrics
    from rlvr.loop import train
    from rlvr.pretrain import pretrain

    out = Path(args.out)
    rows = []
    for arch in args.archs.split(","):
        t0 = time.perf_counter()
        pcfg = PretrainConfig(out_dir=str(out / f"base-{arch}"))
        m = pcfg.model
        m.arch, m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size = arch, 128, 2, 2, 384
        pcfg.corpus.num_docs = 6000
        pcfg.train.steps, pcfg.train.batch_size, pcfg.train.warmup_steps, pcfg.train.lr = args.pretrain_steps, 32, 20, 5e-3
        base = pretrain(pcfg, progress=False)
        t_pre = time.perf_counter() - t0
        run_dir = out / f"rl-{arch}"
        cfg = load_config(TrainConfig, "configs/tiny_r1zero.yaml", [
            f"model={base}", f"run_dir={run_dir}", "engine.kind=vllm", f"train.steps={args.steps}",
            "train.prompts_per_step=16", "sampling.n=8", "sampling.max_tokens=48", "eval.every=0",
            "eval.num_prompts=100", "eval.k=4", "eval.max_tokens=48", "logging.progress=false",
            "checkpoint.every=0", "alarms.zero_reward_steps=0"])
        summary = train(cfg, overwrite=True)
        recs = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]
        rows.append({"arch": arch, "tied": arch.endswith("tied"), "pretrain_s": t_pre,
                     "pass@1_before": summary["before"]["pass@1"], "pass@1_after": summary["after"]["pass@1"],
                     "reward_first": recs[0]["reward_mean"], "reward_last": sum(r["reward_mean"] for r in recs[-5:]) / 5,
                     "logp_diff_max": max(r["logp_diff_max"] for r in recs),
                     "rl_s": sum(r["step_s"] for r in recs)})
    print(f"\n{'arch':>11} {'pass@1 before':>13} {'after':>6} {'reward first':>12} {'last 5':>7} "
          f"{'max |dlogp|':>11} {'RL s':>6}")
    for r in rows:
        print(f"{r['arch']:>11} {r['pass@1_before']:>13.3f} {r['pass@1_after']:>6.3f} {r['reward_first']:>12.3f} "
              f"{r['reward_last']:>7.3f} {r['logp_diff_max']:>11.2e} {r['rl_s']:>6.0f}")
    (out / "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
