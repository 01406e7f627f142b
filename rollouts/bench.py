"""Rollout throughput benchmark: engines side by side on the same prompts, one run.

Each engine runs in its own subprocess (clean start-up time, peak RSS and thread pools),
on identical prompts, ``n``, ``max_tokens`` and dtype, with EOS ignored so every engine
generates exactly the same number of tokens. The engines stay alive and take turns, one timed
``generate`` each per round, so the ratios between them come from the same minutes of a machine
whose speed drifts (see ``run_bench``).

Roofline: the same run times a 2048 x 2048 matmul in each benchmarked dtype on the same
threads (``measure_peak``), and every engine's tokens/s is shown as a share of what that peak
would give at ``flops_per_token`` (2 FLOPs per weight a token multiplies with, the output head
included and the embedding lookup not, plus attention's 4 x layers x width x context).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rollouts.config import ENGINES

BENCH_PROMPT = "User: Compute {a}+{b}-{c}. Show your steps.\nAssistant: <think>"
LENGTHS = ("fixed", "longtail")


def response_lengths(kind: str, prompts: int, max_tokens: int) -> list[int] | None:
    """Each prompt's response length: ``fixed``: None (every sample ``max_tokens`` long); ``longtail``:
    spread log-uniformly from 8 (or fewer, when ``max_tokens`` is smaller) to ``max_tokens``, so most
    responses are short and a few are long, in a fixed shuffled order. Enforced as per-prompt
    ``max_tokens_each`` with EOS ignored, so every engine and mode generates exactly the same tokens."""
    if kind == "fixed":
        return None
    import random

    low = min(8, max_tokens)
    lengths = [round(low * (max_tokens / low) ** (i / max(1, prompts - 1))) for i in range(prompts)]
    random.Random(0).shuffle(lengths)
    return lengths


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


def flops_per_token(model_dir: str, context: float) -> float:
    """Forward FLOPs to generate one token at an average ``context`` length (see the module
    docstring): 2 x matmul weights + 4 x layers x attention width x context."""
    from safetensors import safe_open

    config = json.loads((Path(model_dir) / "config.json").read_text())
    tied = bool(config.get("tie_word_embeddings", False))
    weights = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for name in fh.keys():
                if "embed_tokens" in name and not tied:
                    continue  # a lookup, not a matmul (a tied head multiplies with it: counted once)
                shape = fh.get_slice(name).get_shape()
                if len(shape) == 2:  # norms and biases are not matmul weights
                    weights += shape[0] * shape[1]
    heads = config["num_attention_heads"]
    width = heads * config.get("head_dim", config["hidden_size"] // heads)
    return 2.0 * weights + 4.0 * config["num_hidden_layers"] * width * context


def measure_peak(dtype: str, size: int = 2048, seconds: float = 1.0) -> float:
    """Best GFLOP/s of a ``size``-square matmul in ``dtype`` on this process's torch threads."""
    import torch

    a = torch.randn(size, size, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, dtype=getattr(torch, dtype))
    for _ in range(2):
        a @ b
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024




def parse_engine_spec(spec: str) -> tuple[str, dict]:
    """``"vllm"`` or ``"vllm:enforce_eager=false,max_num_seqs=512"`` -> (kind, constructor kwargs).
    Values are read as JSON where they parse (numbers, true/false), else kept as strings;
    ``env.NAME=value`` sets an environment variable in the worker before the engine starts."""
    kind, _, rest = spec.partition(":")
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}; choose from {', '.join(sorted(ENGINES))}")
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


READY = "@@bench "  # prefix of the worker's protocol lines on stdout (engines print their own logs there too)


def serve_worker(spec: str, model_dir: str, prompts: int, n: int, max_tokens: int, dtype: str,
                 lengths: str = "fixed") -> None:
    """One engine in this process, kept alive for the whole benchmark: after start-up and a warm-up
    it answers each ``run`` line on stdin with one timed ``generate`` and ``finish`` with the weight
    sync timings and its summary (each answer one ``READY``-prefixed JSON line on stdout)."""
    import torch
    from safetensors.torch import load_file

    from rollouts import SamplingConfig, make_engine

    def say(obj: dict) -> None:
        print(READY + json.dumps(obj), flush=True)

    kind, options = parse_engine_spec(spec)
    for key in [k for k in options if k.startswith("env.")]:  # e.g. env.VLLM_CPU_SGL_KERNEL=1
        os.environ[key[4:]] = str(options.pop(key))
    t0 = time.perf_counter()
    engine = make_engine(kind, model_dir, dtype=dtype, **options)
    startup = time.perf_counter() - t0
    texts = [BENCH_PROMPT.format(a=i % 20 + 1, b=i % 9 + 1, c=i % 7 + 1) for i in range(prompts)]
    sampling = SamplingConfig(n=n, temperature=1.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False, seed=0,
                              max_tokens_each=response_lengths(lengths, prompts, max_tokens))
    engine.generate(texts[: min(4, prompts)], SamplingConfig(n=2, max_tokens=8, ignore_eos=True, detokenize=False))
    say({"ready": True, "startup_s": startup})
    context = 0.0
    for line in sys.stdin:
        if line.strip() == "run":
            t, c = time.perf_counter(), time.process_time()
            groups = engine.generate(texts, sampling)
            wall, cpu = time.perf_counter() - t, time.process_time() - c  # cpu: all threads
            tokens = sum(len(c.token_ids) for g in groups for c in g.completions)
            context = statistics.mean(len(g.prompt_ids) for g in groups) + (tokens / (prompts * n) + 1) / 2
            digest = hashlib.sha256(json.dumps([c.token_ids for g in groups for c in g.completions]).encode())
            say({"wall_s": wall, "cpu_s": cpu, "tokens": tokens, "latencies": engine.last_group_latencies,
                 "samples_sha256": digest.hexdigest()})
        elif line.strip() == "finish":
            break
    weights = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        weights.update(load_file(str(f)))
    syncs = []
    for _ in range(3):
        engine.load_weights([(k, v.clone()) for k, v in weights.items()])  # fresh tensors, as a learner sends
        syncs.append(engine.last_sync_s)
    sync_path = getattr(engine, "last_sync_path", "") or "-"
    engine.close()
    say({"startup_s": startup, "sync_s": statistics.median(syncs), "sync_path": sync_path, "peak_rss_mib": _rss_mib(),
         "threads": torch.get_num_threads(), "flops_per_token": flops_per_token(model_dir, context),
         "cpu_capability": torch.backends.cpu.get_cpu_capability()})


class _Worker:
    """A ``serve_worker`` subprocess and its line protocol (stderr kept in a file for errors)."""

    def __init__(self, args: list[str], what: str):
        self.what = what
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "rollouts.bench", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(READY):
                return json.loads(line[len(READY):])
        self.proc.wait()
        self.err.seek(0)
        raise RuntimeError(f"bench worker for {self.what} failed (exit {self.proc.returncode}):\n{self.err.read()[-4000:]}")

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.err.close()


def _subprocess_json(args: list[str], what: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    cmd = [sys.executable, "-m", "rollouts.bench", *args, out]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker for {what} failed:\n{proc.stderr[-4000:]}")
    res = json.loads(Path(out).read_text())
    os.unlink(out)
    return res


def run_bench(model_dir: str, engines: list[str], prompts: int, n: int, max_tokens: int, dtype: str,
              repeats: int = 2, progress: bool = True, roofline: bool = True, lengths: str = "fixed") -> list[dict]:
    """Each engine in a subprocess of its own (clean start-up time, peak RSS and thread pools),
    started one after the other and then kept alive; ``repeats`` rounds, each timing one
    ``generate`` of every engine in turn, so a machine whose speed drifts (shared cores) moves
    every engine of a round alike. Reports each engine's best round (``tokens_per_s``) and, where
    those engines are among them, ``ratio_vs_hf`` / ``ratio_vs_hf_generate``: the median over rounds
    of the round's ratio; ``ratio_vs_shrink_only`` likewise against a static engine with ``refill=false``.
    ``roofline``: the machine's matmul peak in ``dtype`` and each engine's share. ``lengths``: see
    ``response_lengths``. ``same_samples_as``: the first engine whose samples (token ids of every round)
    were identical to this one's."""
    peak = None
    if roofline:
        if progress:
            print(f"bench: {dtype} matmul peak (2048^2) ...", file=sys.stderr, flush=True)
        peak = _subprocess_json(["--peak", dtype], f"the {dtype} matmul peak")["gflops"]
    workers: dict[str, _Worker] = {}
    rounds: dict[str, list[dict]] = {kind: [] for kind in engines}
    try:
        for kind in engines:
            if progress:
                print(f"bench: starting {kind} ({dtype}) ...", file=sys.stderr, flush=True)
            workers[kind] = _Worker(["--serve", kind, model_dir, str(prompts), str(n), str(max_tokens), dtype, lengths],
                                    repr(kind))
            workers[kind].read()
        for r in range(repeats):
            order = engines[r % len(engines):] + engines[: r % len(engines)]  # each engine leads a round in turn
            for kind in order:
                if progress:
                    print(f"bench: round {r + 1}/{repeats}: {kind} ({prompts} prompts x n={n} x {max_tokens} tokens "
                          f"{lengths}, {dtype}) ...", file=sys.stderr, flush=True)
                rounds[kind].append(workers[kind].ask("run"))
        summaries = {kind: workers[kind].ask("finish") for kind in engines}
    finally:
        for w in workers.values():
            w.close()
    results = []
    for kind in engines:
        runs = rounds[kind]
        best = min(runs, key=lambda x: x["wall_s"])
        lat = sorted(x for run in runs for x in run["latencies"])
        tokens = best["tokens"]
        results.append({
            "engine": kind, "dtype": dtype, "prompts": prompts, "n": n, "max_tokens": max_tokens, "lengths": lengths,
            "rounds": len(runs), "samples_sha256": sorted({x["samples_sha256"] for x in runs}),
            "generated_tokens": tokens, "tokens_per_s": tokens / best["wall_s"], "requests_per_s": prompts * n / best["wall_s"],
            "wall_s": best["wall_s"], "cpu_s": min(x["cpu_s"] for x in runs),
            "tokens_per_cpu_s": tokens / min(x["cpu_s"] for x in runs),
            "round_tokens_per_s": [x["tokens"] / x["wall_s"] for x in runs],
            "p50_group_latency_s": statistics.median(lat), "p95_group_latency_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
            **summaries[kind]})
    shrink_only = next((e for e in engines if e.startswith("static") and parse_engine_spec(e)[1].get("refill") is False),
                       None)
    for ref, key in (("hf", "ratio_vs_hf"), ("hf-generate", "ratio_vs_hf_generate"), (shrink_only, "ratio_vs_shrink_only")):
        base = next((r for r in results if r["engine"] == ref), None)
        for r in results:
            r[key] = (statistics.median(a / b for a, b in zip(r["round_tokens_per_s"], base["round_tokens_per_s"]))
                      if base else None)
    for r in results:
        r["same_samples_as"] = next(o["engine"] for o in results if o["samples_sha256"] == r["samples_sha256"])
        r["gflops"] = r["tokens_per_s"] * r["flops_per_token"] / 1e9
        r["peak_gflops"] = peak
        r["roofline"] = r["gflops"] / peak if peak else None
    return results


def format_table(results: list[dict]) -> str:
    cols = [("engine", "engine", "{}"), ("dtype", "dtype", "{}"), ("tokens/s", "tokens_per_s", "{:.0f}"),
            ("tokens/cpu-s", "tokens_per_cpu_s", "{:.0f}"), ("req/s", "requests_per_s", "{:.1f}"),
            ("p50 group s", "p50_group_latency_s", "{:.2f}"), ("p95 group s", "p95_group_latency_s", "{:.2f}"),
            ("startup s", "startup_s", "{:.1f}"), ("sync s", "sync_s", "{:.3f}"), ("sync path", "sync_path", "{}"),
            ("peak RSS MiB", "peak_rss_mib", "{:.0f}"), ("GFLOP/s", "gflops", "{:.1f}"),
            ("% roofline", "roofline", "{:.0%}"),
            ("x HF", "ratio_vs_hf", "{:.2f}"), ("x HF generate", "ratio_vs_hf_generate", "{:.2f}"),
            ("x shrink-only", "ratio_vs_shrink_only", "{:.2f}"), ("same samples as", "same_samples_as", "{}")]
    rows = [[name for name, _, _ in cols]]
    for r in results:
        rows.append([fmt.format(r[key]) if r.get(key) is not None else "-" for _, key, fmt in cols])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    table = "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)
    peaks = {r["dtype"]: r["peak_gflops"] for r in results if r.get("peak_gflops")}
    if not peaks:
        return table
    r0 = results[0]
    head = (f"machine: {r0['cpu_capability']}, {r0['threads']} threads; 2048^2 matmul peak "
            + ", ".join(f"{d} {p:.0f} GFLOP/s" for d, p in peaks.items())
            + f"; {r0['flops_per_token'] / 1e6:.1f} MFLOP per token (2 x matmul weights + attention at the mean context)")
    return head + "\n" + table


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
    several = len({r["dtype"] for r in results}) > 1
    ax.bar([f"{r['engine']}\n{r['dtype']}" if several else r["engine"] for r in results], [r["tokens_per_s"] for r in results],
           color=[palette[i % len(palette)] for i in range(len(results))])
    for i, r in enumerate(results):
        label = " / ".join(f"{r[k]:.2f}x {name}" for k, name in (("ratio_vs_hf", "HF"), ("ratio_vs_hf_generate", "gen"))
                           if r.get(k))
        if label:
            ax.text(i, r["tokens_per_s"], label, ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("generated tokens / s")
    dtypes = ", ".join(dict.fromkeys(r["dtype"] for r in results))
    ax.set_title(f"{results[0]['prompts']} prompts x n={results[0]['n']} x {results[0]['max_tokens']} tok, {dtypes}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--serve":
    _, _, kind, model_dir, prompts, n, max_tokens, dtype, lengths = sys.argv
    serve_worker(kind, model_dir, int(prompts), int(n), int(max_tokens), dtype, lengths)
elif __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--peak":
    _, _, dtype, out = sys.argv
    Path(out).write_text(json.dumps({"dtype": dtype, "gflops": measure_peak(dtype)}))
