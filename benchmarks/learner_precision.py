"""Learner throughput and memory: float32 vs bfloat16, with and without gradient checkpointing.

One run prints, for the tiny base (the demo's architecture) and a ~75M Llama, the learner's
tokens/s (prompt + completion tokens through forward and backward and an AdamW step) and the
peak resident memory of the process. Each configuration runs in its own subprocess, so its
peak RSS is its own; models are random-init (speed and memory do not depend on the values).

    python benchmarks/learner_precision.py [--steps 3] [--threads 0] [--models tiny,75m]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = {
    # the tiny base's architecture (rlvr.config.ModelArchConfig defaults, vocab of the demo tokenizer)
    "tiny": ({"model_type": "llama", "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
              "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256, "vocab_size": 384,
              "tie_word_embeddings": False}, 32, 96),  # (config, rows, tokens per row)
    "75m": (json.loads((HERE / "configs" / "llama-75m.json").read_text()), 8, 256),
}


def worker(name: str, dtype: str, checkpointing: bool, steps: int, threads: int) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlvr.algorithms import AlgorithmConfig
    from rlvr.config import OptimConfig, TrainLoopConfig
    from rlvr.train.learner import Learner, RLBatch

    if threads:
        torch.set_num_threads(threads)
    spec, B, L = MODELS[name]
    spec = dict(spec)
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, config.vocab_size, (B, L))
    mask = torch.zeros(B, L - 1)
    mask[:, L // 3 :] = 1.0  # a third prompt, the rest completion
    batch = RLBatch(ids, torch.ones(B, L, dtype=torch.long), mask, torch.randn(B, 1).expand(B, L - 1) * mask,
                    torch.zeros(B, L - 1))
    learner = Learner(model, AlgorithmConfig(), OptimConfig(lr=1e-5), TrainLoopConfig(micro_batch_size=B, dtype=dtype, gradient_checkpointing=checkpointing, shared_prefix=False))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    learner.step(batch)  # warm-up (allocates the optimizer state)
    t0 = time.perf_counter()
    for _ in range(steps):
        learner.step(batch)
    elapsed = (time.perf_counter() - t0) / steps
    return {"model": name, "params_m": params / 1e6, "dtype": dtype, "checkpointing": checkpointing,
            "tokens_per_s": B * L / elapsed, "step_s": elapsed,
            "rss_before_mib": rss_before, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--models", default="tiny,75m")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        name, dtype, ckpt = args.worker
        print(json.dumps(worker(name, dtype, ckpt == "1", args.steps, args.threads)))
        return
    import torch

    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, "
          f"threads {args.threads or torch.get_num_threads()}")
    rows = []
    for name in args.models.split(","):
        for dtype in ("float32", "bfloat16"):
            for ckpt in ("0", "1"):
                out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--threads", str(args.threads),
                                      "--worker", name, dtype, ckpt], capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'model':>6} {'params':>7} {'dtype':>9} {'ckpt':>5} {'tokens/s':>9} {'vs fp32':>8} {'step s':>7} "
          f"{'peak RSS MiB':>12} {'(+ over model)':>14}")
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["dtype"] == "float32" and not b["checkpointing"])
        print(f"{r['model']:>6} {r['params_m']:>6.1f}M {r['dtype']:>9} {'on' if r['checkpointing'] else 'off':>5} "
              f"{r['tokens_per_s']:>9.0f} {r['tokens_per_s'] / base['tokens_per_s']:>7.2f}x {r['step_s']:>7.2f} "
              f"{r['peak_rss_mib']:>12.0f} {r['peak_rss_mib'] - r['rss_before_mib']:>+14.0f}")


if __name__ == "__main__":
    main()
