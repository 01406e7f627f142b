"""Does the server cost throughput? The same completion requests sent concurrently through `rlvr serve`'s
server with the `openai` client, and submitted in process to the same engine in one call.

    .venv/bin/python benchmarks/serve.py [--model artifacts/tiny-base] [--engine static] [--requests 64]
        [--max-tokens 128] [--repeats 3] [--max-batch 64] [--window-ms 50] [--max-wait-ms 500] [--random-weights]
        [--json]

Each round times both, in turn, on one engine: in process, one ``engine.generate`` of every prompt (one
completion each, seeded); through the server, one thread per request, each a
``client.completions.create(prompt=..., max_tokens=..., seed=...)`` over HTTP on localhost, all started
together, timed from the first send to the last reply. The prompts are the demo's arithmetic questions in
the R1 template; tokens/s counts the sampled tokens (each completion stops at EOS or ``--max-tokens``; the
server's count is its ``usage.completion_tokens``). Reported: each side's best round and the median of
the rounds' ratios (server / in process; the issue's target is >= 0.8).

A pretrained tiny base ends most answers after a dozen tokens, so one round samples for a fraction of a
second and the fixed cost of 64 HTTP requests weighs heavily; ``--random-weights`` serves the same
architecture and tokenizer with random weights instead, whose completions run to ``--max-tokens`` (as an
agent's long turns would).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prompts(n: int, seed: int = 0) -> list[str]:
    from rlvr.tasks.base import R1_TEMPLATE

    rng = random.Random(seed)
    return [R1_TEMPLATE.format(question=f"What is {rng.randint(2, 99)} + {rng.randint(2, 99)}?") for _ in range(n)]


def random_copy(model_dir: str, out: str) -> str:
    """``model_dir``'s architecture and tokenizer with random weights, saved in ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)).save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def in_process(engine, ids: list[list[int]], seeds: list[int], max_tokens: int) -> tuple[int, float]:
    from rollouts import SamplingConfig

    t0 = time.perf_counter()
    groups = engine.generate(ids, SamplingConfig(max_tokens=max_tokens, seeds=seeds))
    return sum(len(g.completions[0].token_ids) for g in groups), time.perf_counter() - t0


def through_server(client, model: str, texts: list[str], seeds: list[int], max_tokens: int) -> tuple[int, float]:
    tokens = [0] * len(texts)
    errors: list[BaseException] = []
    start = threading.Barrier(len(texts) + 1)

    def ask(i: int) -> None:
        start.wait()
        try:
            r = client.completions.create(model=model, prompt=texts[i], max_tokens=max_tokens, seed=seeds[i])
            tokens[i] = r.usage.completion_tokens
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(tokens), time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="artifacts/tiny-base")
    p.add_argument("--engine", default="static")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--window-ms", type=float, default=50.0)
    p.add_argument("--max-wait-ms", type=float, default=500.0)
    p.add_argument("--random-weights", action="store_true",
                   help="the model's architecture and tokenizer with random weights (completions run to --max-tokens)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import httpx
    import openai
    from transformers import AutoTokenizer

    from rlvr.models import check_model_dir, context_length
    from rlvr.serve import Limits, Server
    from rollouts import SamplingConfig, engine_config

    check_model_dir(args.model, "--model")
    model = args.model
    tmp = tempfile.TemporaryDirectory(prefix="rlvr-serve-bench-")
    if args.random_weights:
        model = random_copy(args.model, tmp.name)
    engine = engine_config(args.engine).build(model)
    tok = AutoTokenizer.from_pretrained(model)
    texts = prompts(args.requests)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    engine.generate(ids[:2], SamplingConfig(max_tokens=4, seed=0))  # compile / warm up before timing
    limits = Limits(context=context_length(model), max_tokens=args.max_tokens)
    rounds = []
    with Server(engine, tok, "bench", limits=limits, max_batch=args.max_batch, window_s=args.window_ms / 1000,
                max_wait_s=args.max_wait_ms / 1000) as server:
        http = httpx.Client(limits=httpx.Limits(max_connections=args.requests, max_keepalive_connections=args.requests))
        client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=600,
                               http_client=http)
        client.completions.create(model="bench", prompt=texts[0], max_tokens=4)  # connections and the thread warm
        for r in range(args.repeats):
            seeds = [1000 * r + i for i in range(args.requests)]
            calls_before = server.batcher.calls
            local = in_process(engine, ids, seeds, args.max_tokens)
            served = through_server(client, "bench", texts, seeds, args.max_tokens)
            rounds.append({"in_process_tokens": local[0], "in_process_s": local[1], "server_tokens": served[0],
                           "server_s": served[1], "engine_calls": server.batcher.calls - calls_before,
                           "batch_sizes": server.batcher.batch_sizes[-(server.batcher.calls - calls_before):]})
    engine.close()
    tmp.cleanup()
    for r in rounds:
        r["in_process_tps"] = r["in_process_tokens"] / r["in_process_s"]
        r["server_tps"] = r["server_tokens"] / r["server_s"]
        r["ratio"] = r["server_tps"] / r["in_process_tps"]
    summary = {"model": args.model, "random_weights": args.random_weights, "engine": args.engine, "requests": args.requests, "max_tokens": args.max_tokens,
               "in_process_tps_best": max(r["in_process_tps"] for r in rounds),
               "server_tps_best": max(r["server_tps"] for r in rounds),
               "ratio_median": statistics.median(r["ratio"] for r in rounds), "rounds": rounds}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    weights = " (random weights)" if args.random_weights else ""
    print(f"{args.requests} concurrent completions, {args.engine} engine, {args.model}{weights}, "
          f"max_tokens {args.max_tokens}")
    print(f"{'round':>5} {'in process tok/s':>17} {'server tok/s':>13} {'ratio':>6}  server batches")
    for i, r in enumerate(rounds):
        print(f"{i:>5} {r['in_process_tps']:>17,.0f} {r['server_tps']:>13,.0f} {r['ratio']:>6.2f}  {r['batch_sizes']}")
    print(f"best: in process {summary['in_process_tps_best']:,.0f} tok/s, server {summary['server_tps_best']:,.0f} "
          f"tok/s; median ratio {summary['ratio_median']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
