"""Does a tied-head model train on vLLM as an untied one does? One run, side by side.

For Qwen2 with an untied and a tied output head: pretrain a base with the demo's own pretraining
config (configs/tiny_pretrain.yaml: same sizes, corpus, steps and seed; only `model.arch`
differs), then RL-Zero it with the demo's own RL config (configs/tiny_r1zero.yaml: GRPO, 16
prompts x 8, lr 5e-5, vLLM CPU engine with in-place weight sync after every step, held-out
evaluation on 200 prompts every 40 steps). Prints held-out greedy pass@1, pass@k and the format
rates before and after, the held-out pass@1 curve, the largest engine/learner log-prob gap seen
(the parity gate's quantity: a stale tied head would show up here as nats) and the times.

    python benchmarks/tied_vs_untied.py [--steps 120] [--out runs/tied-vs-untied]

Bases are cached (by pretraining config hash) under --out, so a rerun only redoes the RL.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=120, help="RL steps (the demo's: 120)")
    ap.add_argument("--pretrain-config", default="configs/tiny_pretrain.yaml")
    ap.add_argument("--config", default="configs/tiny_r1zero.yaml", help="RL config")
    ap.add_argument("--out", default="runs/tied-vs-untied")
    ap.add_argument("--archs", default="qwen2,qwen2-tied")
    ap.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides of the RL config")
    args = ap.parse_args()

    from transformers import AutoConfig

    from rlvr.config import PretrainConfig, TrainConfig, load_config
    from rlvr.logging import read_metrics
    from rlvr.loop import train
    from rlvr.pretrain import pretrain

    out = Path(args.out)
    rows = []
    for arch in args.archs.split(","):
        t0 = time.perf_counter()
        pcfg = load_config(PretrainConfig, args.pretrain_config, [f"model.arch={arch}", f"out_dir={out / f'base-{arch}'}"])
        base = pretrain(pcfg, progress=False)
        t_pre = time.perf_counter() - t0
        run_dir = out / f"rl-{arch}"
        cfg = load_config(TrainConfig, args.config, [
            f"model={base}", f"run_dir={run_dir}", "engine.kind=vllm", f"train.steps={args.steps}",
            "logging.progress=false", "checkpoint.every=0", *args.overrides])
        t1 = time.perf_counter()
        summary = train(cfg, overwrite=True)
        t_rl = time.perf_counter() - t1
        records = read_metrics(run_dir / "metrics.jsonl")
        recs = [r for r in records if r["kind"] == "train"]
        curve = [(r["step"], r["pass@1"]) for r in records if r["kind"] == "eval"]
        b, a, k = summary["before"], summary["after"], cfg.eval.k
        hf = AutoConfig.from_pretrained(base)
        rows.append({"arch": arch, "tied": bool(hf.tie_word_embeddings), "model_type": hf.model_type,
                     "params": _params(base), "pretrain_s": round(t_pre, 1), "rl_s": round(t_rl, 1), "k": k,
                     "before": b, "after": a, "curve": curve,
                     "train_acc_first5": sum(r["accuracy"] for r in recs[:5]) / 5,
                     "train_acc_last5": sum(r["accuracy"] for r in recs[-5:]) / 5,
                     "logp_diff_max": max(r["logp_diff_max"] for r in recs)})
    k = rows[0]["k"]
    print(f"\n{'head':>7} {'params':>7} {'pass@1':>13} {f'pass@{k}':>13} {'format':>13} {'sampled format':>15} "
          f"{'train acc':>13} {'max |dlogp|':>11} {'pretrain s':>10} {'RL s':>5}")
    for r in rows:
        b, a = r["before"], r["after"]

        def ba(key: str, b=b, a=a) -> str:
            return f"{b.get(key, float('nan')):.3f}->{a.get(key, float('nan')):.3f}"

        print(f"{'tied' if r['tied'] else 'untied':>7} {r['params'] / 1e6:>6.2f}M {ba('pass@1'):>13} {ba(f'pass@{k}'):>13} "
              f"{ba('format_rate'):>13} {ba('sampled_format_rate'):>15} "
              f"{r['train_acc_first5']:.3f}->{r['train_acc_last5']:.3f} {r['logp_diff_max']:>11.2e} "
              f"{r['pretrain_s']:>10.0f} {r['rl_s']:>5.0f}")
        print(f"{'':>7} held-out pass@1 by step: " + ", ".join(f"{s}: {p:.3f}" for s, p in r["curve"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))


def _params(model_dir: Path) -> int:
    """Parameter count of a saved model (a tied head counted once)."""
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())


if __name__ == "__main__":
    main()
