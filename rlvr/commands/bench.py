"""`rlvr bench rollouts`: generation throughput of rollout engines, side by side."""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["rollouts"], help="what to benchmark")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="local Hugging Face model directory")
    src.add_argument("--random-init", metavar="CONFIG_JSON",
                     help="build a randomly initialised model of this architecture (e.g. benchmarks/configs/llama-75m.json)")
    p.add_argument("--tokenizer", default="artifacts/tiny-base", help="tokenizer directory for --random-init")
    p.add_argument("--engines", default=None,
                   help="semicolon- or comma-separated engines: vllm, static (compiled static-KV-cache loop), hf (our "
                        "KV-cache loop), hf-generate "
                        "(transformers' generate); options as kind:key=value,key=value, e.g. "
                        "'vllm:enforce_eager=false;hf' (use ';' between engines when giving options); default "
                        "static,vllm,hf-generate, with --lengths longtail 'static;static:refill=false'")
    p.add_argument("--prompts", type=int, default=64, help="prompts per run")
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens generated per sample (EOS ignored)")
    p.add_argument("--lengths", choices=["fixed", "longtail"], default="fixed",
                   help="response lengths: fixed (every sample --max-tokens long) or longtail (each prompt's length "
                        "spread log-uniformly from 8 to --max-tokens, enforced per prompt: engines that take "
                        "max_tokens_each, i.e. static; the continuous-batching comparison is "
                        "--lengths longtail --prompts 512 --max-tokens 256)")
    p.add_argument("--dtype", default="float32",
                   help="engine dtype: float32, bfloat16, or both comma-separated (one table, ratios within each dtype)")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds: each times one generate of every engine in turn (tokens/s: an engine's best "
                        "round; x HF / x HF generate: the median of the rounds' ratios)")
    p.add_argument("--turns", type=int, default=0, help="also measure multi-turn episodes: each engine's episodes/s "
                   "over this many model turns (the guess_number environment, observations appended as ids) beside "
                   "its one-turn figure, --prompts x --n episodes of --turn-tokens tokens a turn (0: off)")
    p.add_argument("--turn-tokens", type=int, default=32, help="most tokens per model turn with --turns or "
                   "--serve-sessions")
    p.add_argument("--serve-sessions", type=int, default=0, metavar="N",
                   help="instead of the engine table: N concurrent agent sessions (the example agent's shape: "
                        "--serve-turns completions calls, each history sent back as text) through the recording "
                        "server with the openai client, beside the same requests submitted in process, on the first "
                        "engine of --engines (rlvr.serve.bench; 0: off)")
    p.add_argument("--serve-turns", type=int, default=2, help="model calls per session with --serve-sessions")
    p.add_argument("--serve-http", choices=["thread", "process"], default="thread",
                   help="with --serve-sessions, the server's HTTP side on a thread of the engine's process or in a "
                        "process of its own (rlvr serve --http-process)")
    p.add_argument("--serve-layout", choices=["shared", "split"], default="shared",
                   help="with --serve-sessions: every process on every core (shared), or a GPU deployment's layout "
                        "(split): the engine pinned to half the cores, the HTTP side and the agents to the rest")
    p.add_argument("--serve-clients", choices=["process", "threads", "both"], default="process",
                   help="with --serve-sessions, where the sessions' openai clients run: a process of their own (as "
                        "a training run's agents), threads of the server's process, or both (each round times both; "
                        "the ratio is the process way's)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--plot", metavar="PNG", help="write a bar chart of tokens/s")


def run(args: argparse.Namespace) -> int:
    import json
    import tempfile
    from pathlib import Path

    from rlvr.commands._common import fail
    from rollouts.bench import build_random_model, format_table, parse_engine_spec, plot, run_bench
    from rollouts.config import engine_class

    spec = args.engines or ("static;static:refill=false" if args.lengths == "longtail" else "static,vllm,hf-generate")
    sep = ";" if ";" in spec or ":" in spec else ","
    engines = [e.strip() for e in spec.split(sep) if e.strip()]
    for e in engines:
        try:
            kind, _ = parse_engine_spec(e)
        except ValueError as exc:
            return fail(f"--engines: {exc}")
        if args.lengths == "longtail" and not getattr(engine_class(kind), "per_prompt_max_tokens", False):
            return fail(f"--engines: {kind!r} takes one max_tokens per call; --lengths longtail needs engines that "
                        "take one per prompt (static)")
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    if not dtypes or any(d not in ("float32", "bfloat16") for d in dtypes):
        return fail(f"--dtype: {args.dtype!r}; choose float32, bfloat16 or float32,bfloat16")
    model = args.model
    tmp = None
    if args.random_init:
        if not Path(args.random_init).is_file():
            return fail(f"--random-init: no such file {args.random_init!r}")
        if not (Path(args.tokenizer) / "tokenizer.json").is_file():
            return fail(f"--tokenizer: no tokenizer in {args.tokenizer!r} (run `rlvr pretrain` first)")
        tmp = tempfile.TemporaryDirectory(prefix="rlvr-bench-")
        model = build_random_model(args.random_init, args.tokenizer, tmp.name)
    else:  # config, weights and a tokenizer, each named when absent (transformers would blame sentencepiece)
        from rlvr.models import check_model_dir

        check_model_dir(model, "--model")
    if args.serve_sessions > 0:
        code = _serve_sessions(args, model, engines[0], dtypes)
        if tmp is not None:
            tmp.cleanup()
        return code
    results = []
    for dtype in dtypes:
        results += run_bench(model, engines, args.prompts, args.n, args.max_tokens, dtype, args.repeats,
                             lengths=args.lengths)
    episodes = []
    if args.turns > 0:  # the trainable engines, in this process (the multi-turn runner drives them)
        from rlvr.rollout.episode_bench import bench_episodes, format_episode_table

        kinds = [k for k in dict.fromkeys(parse_engine_spec(e)[0] for e in engines) if k in ("static", "vllm", "hf")]
        for dtype in dtypes:
            episodes += bench_episodes(model, kinds, args.prompts, args.n, args.turns, args.turn_tokens, dtype)
    if args.json:
        print(json.dumps(results + episodes, indent=1))
    else:
        print(format_table(results))
        if episodes:
            print(f"\nmulti-turn episodes ({args.turns} turns, {args.turn_tokens} tokens a turn at most):")
            print(format_episode_table(episodes))
    if args.plot:
        plot(results, args.plot)
    if tmp is not None:
        tmp.cleanup()
    return 0


def _serve_sessions(args: argparse.Namespace, model: str, engine: str, dtypes: list[str]) -> int:
    import json

    from rlvr.commands._common import fail
    from rlvr.serve.bench import bench_sessions, format_sessions
    from rollouts.bench import parse_engine_spec

    kind, options = parse_engine_spec(engine)
    if options or kind not in ("static", "vllm", "hf"):
        return fail(f"--engines: {engine!r}: --serve-sessions serves a plain static, vllm or hf engine")
    if args.serve_turns < 1 or args.turn_tokens < 1 or args.repeats < 1:
        return fail("--serve-turns, --turn-tokens and --repeats must be >= 1 with --serve-sessions")
    if args.serve_layout == "split" and args.serve_clients != "process":
        return fail("--serve-layout split puts the agents' clients on the HTTP side's cores: use --serve-clients process")
    if args.serve_layout == "split":
        from rlvr.serve.bench import split_cores

        try:
            split_cores()
        except ValueError as exc:
            return fail(f"--serve-layout: {exc}")
    results = [bench_sessions(model, kind, args.serve_sessions, args.serve_turns, args.turn_tokens, args.repeats, d,
                              clients=args.serve_clients, http=args.serve_http, layout=args.serve_layout)
               for d in dtypes]
    print(json.dumps(results, indent=1) if args.json else "\n\n".join(format_sessions(r) for r in results))
    return 0
