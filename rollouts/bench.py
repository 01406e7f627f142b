"""Rollout throughput benchmark: engines side by side on the same prompts, one run.

Each engine runs in its own subprocess (clean start-up time, peak RSS and thread pools),
on identical prompts, ``n``, ``max_tokens`` and dtype, with EOS ignored so every engine
generates exactly the same number of tokens.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_PROMPT = "User: Compute {a}+{b}-{c}. Show your steps.\nAssistant: <think>"


def build_random_model(config_json: str, tokenizer_dir: str, out_dir: str) -> str:
    """A randomly initialised model of a real architecture (config JSON), with a small local
    tokenizer. Its vocabulary may be larger than the tokenizer's; benchmarks then skip
    detokenisation (token ids only)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = json.loads(Path(config_json).read_text())
    model_type = spec.pop("model_type")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    spec.setdefault("vocab_size", len(tokenizer))
    spec["vocab_size"] = max(spec["vocab_size"], len(tokenizer))
    spec.update(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = AutoConfig.for_model(model_type, **spec)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


ENGINE_KINDS = ("vllm", "hf", "hf-generate")


def parse_engine_spec(spec: str) -> tuple[str, dict]:
    """``"vllm"`` or ``"vllm:enforce_eager=false,max_num_seqs=512"`` -> (kind, constructor kwargs).
    Values are read as JSON where they parse (numbers, true/false), else kept as strings;
    ``env.NAME=value`` sets an environment variable in the worker before the engine starts."""
    kind, _, rest = spec.partition(":")
    if kind not in ENGINE_KINDS:
        raise ValueError(f"unknown engine {kind!r}; choose from {', '.join(ENGINE_KINDS)}")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"engine option {item!r} in {spec!r} is not key=value")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kind, kwargs


def run_worker(spec: str, model_dir: str, prompts: int, n: int, max_tokens: int, dtype: str, repeats: int) -> dict:
    """Measure one engine in this process; returns a JSON-able dict."""
    import torch
    from safetensors.torch import load_file

    from rollouts import SamplingConfig, make_engine

    kind, options = parse_engine_spec(spec)
    for key in [k for k in options if k.startswith("env.")]:  # e.g. env.VLLM_CPU_SGL_KERNEL=1
        os.environ[key[4:]] = str(options.pop(key))
    t0 = time.perf_counter()
    engine = make_engine(kind, model_dir, dtype=dtype, **options)
    startup = time.perf_counter() - t0
    texts = [BENCH_PROMPT.format(a=i % 20 + 1, b=i % 9 + 1, c=i % 7 + 1) for i in range(prompts)]
    sampling = SamplingConfig(n=n, temperature=1.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False, seed=0)
    engine.generate(texts[: min(4, prompts)], SamplingConfig(n=2, max_tokens=8, ignore_eos=True, detokenize=False))
    runs, latencies, tokens = [], [], 0
    cpu = []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        groups = engine.generate(texts, sampling)
        runs.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)  # all threads; on a shared machine a steadier gauge than wall time
        latencies += engine.last_group_latencies
        tokens = sum(len(c.token_ids) for g in groups for c in g.completions)
    weights = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        weights.update(load_file(str(f)))
    syncs = []
    for _ in range(3):
        engine.load_weights([(k, v.clone()) for k, v in weights.items()])  # fresh tensors, as a learner sends
        syncs.append(engine.last_sync_s)
    engine.close()
    best = min(runs)
    lat = sorted(latencies)
    return {
        "engine": spec, "dtype": dtype, "prompts": prompts, "n": n, "max_tokens": max_tokens,
        "generated_tokens": tokens, "tokens_per_s": tokens / best, "requests_per_s": prompts * n / best,
        "wall_s": best, "cpu_s": min(cpu), "tokens_per_cpu_s": tokens / min(cpu), "p50_group_latency_s": statistics.median(lat),
        "p95_group_latency_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))], "startup_s": startup,
        "sync_s": statistics.median(syncs), "peak_rss_mib": _rss_mib(), "threads": torch.get_num_threads(),
    }


def run_bench(model_dir: str, engines: list[str], prompts: int, n: int, max_tokens: int, dtype: str,
              repeats: int = 2, progress: bool = True) -> list[dict]:
    """Run each engine in a fresh subprocess; add ``ratio_vs_hf`` (our KV-cache loop) and
    ``ratio_vs_hf_generate`` (transformers' ``generate``) when those engines are among them."""
    results = []
    for kind in engines:
        if progress:
            print(f"bench: {kind} ({prompts} prompts x n={n} x {max_tokens} tokens, {dtype}) ...", file=sys.stderr, flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            out = fh.name
        cmd = [sys.executable, "-m", "rollouts.bench", "--worker", kind, model_dir, str(prompts), str(n),
               str(max_tokens), dtype, str(repeats), out]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if proc.returncode != 0:
            raise RuntimeError(f"bench worker for {kind!r} failed:\n{proc.stderr[-4000:]}")
        results.append(json.loads(Path(out).read_text()))
        os.unlink(out)
    for ref, key in (("hf", "ratio_vs_hf"), ("hf-generate", "ratio_vs_hf_generate")):
        base = next((r for r in results if r["engine"] == ref), None)
        for r in results:
            r[key] = r["tokens_per_s"] / base["tokens_per_s"] if base else None
    return results


def format_table(results: list[dict]) -> str:
    cols = [("engine", "engine", "{}"), ("tokens/s", "tokens_per_s", "{:.0f}"), ("tokens/cpu-s", "tokens_per_cpu_s", "{:.0f}"), ("req/s", "requests_per_s", "{:.1f}"),
            ("p50 group s", "p50_group_latency_s", "{:.2f}"), ("p95 group s", "p95_group_latency_s", "{:.2f}"),
            ("startup s", "startup_s", "{:.1f}"), ("sync s", "sync_s", "{:.3f}"), ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
            ("x HF", "ratio_vs_hf", "{:.2f}"), ("x HF generate", "ratio_vs_hf_generate", "{:.2f}")]
    rows = [[name for name, _, _ in cols]]
    for r in results:
        rows.append([fmt.format(r[key]) if r.get(key) is not None else "-" for _, key, fmt in cols])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
    ax.bar([r["engine"] for r in results], [r["tokens_per_s"] for r in results],
           color=[palette[i % len(palette)] for i in range(len(results))])
    for i, r in enumerate(results):
        label = " / ".join(f"{r[k]:.2f}x {name}" for k, name in (("ratio_vs_hf", "HF"), ("ratio_vs_hf_generate", "gen"))
                           if r.get(k))
        if label:
            ax.text(i, r["tokens_per_s"], label, ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"{results[0]['prompts']} prompts x n={results[0]['n']} x {results[0]['max_tokens']} tok, {results[0]['dtype']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--worker":
    _, _, kind, model_dir, prompts, n, max_tokens, dtype, repeats, out = sys.argv
    res = run_worker(kind, model_dir, int(prompts), int(n), int(max_tokens), dtype, int(repeats))
    Path(out).write_text(json.dumps(res))
