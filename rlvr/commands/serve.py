"""`rlvr serve MODEL`: the OpenAI-compatible server in front of a rollout engine, without training."""

from __future__ import annotations

import argparse
import os

API_KEY_ENV = "RLVR_API_KEY"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="Hugging Face model directory (or hub id) to serve")
    p.add_argument("--port", type=int, default=0, help="port to listen on (default 0: a free port, printed)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only); any other host is reachable "
                        "by others and still needs the token")
    p.add_argument("--api-key", default=None,
                   help=f"the bearer token clients must send (default: ${API_KEY_ENV}, else a random token, printed)")
    p.add_argument("--engine", default="hf", help="rollout engine kind: static, hf, vllm, or a registered kind "
                   "(default hf)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="engine dtype")
    p.add_argument("--threads", type=int, default=0, help="engine threads (0: all cores)")
    p.add_argument("--max-batch", type=int, default=64,
                   help="most sequences (prompts x n) one engine call samples together (default 64; the static "
                        "engine batches by itself and ignores this and the two below)")
    p.add_argument("--batch-window-ms", type=float, default=50.0,
                   help="a batch takes requests until none arrives for this long (default 50)")
    p.add_argument("--batch-max-wait-ms", type=float, default=500.0,
                   help="the longest a batch waits for requests before sampling (default 500)")
    p.add_argument("--max-tokens", type=int, default=1024,
                   help="most tokens one completion may ask for; also a chat request's default (default 1024, at "
                        "most the model's context)")
    p.add_argument("--http-process", action="store_true",
                   help="run the HTTP side (routes, tokenizer, records) in a process of its own, so that its Python "
                        "does not share the engine's GIL (about 3 s more to start; docs/agents.md)")
    p.add_argument("--served-model-name", default=None,
                   help="the model id clients send and /v1/models lists (default: MODEL as given)")


def run(args: argparse.Namespace) -> int:
    import json
    import signal
    import sys
    import threading
    from pathlib import Path

    from rlvr.commands._common import fail

    if not 0 <= args.port <= 65535:
        return fail(f"--port: {args.port} is not a port (0 to 65535; 0 picks a free one)")
    if args.max_batch < 1 or args.max_tokens < 1 or args.batch_window_ms < 0 or args.batch_max_wait_ms < 0:
        return fail("--max-batch and --max-tokens must be >= 1, --batch-window-ms and --batch-max-wait-ms >= 0")
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    if api_key is not None and not api_key.strip():
        return fail("--api-key: an empty token would let anyone in; leave it out to generate one")
    from rollouts.config import engine_config

    try:
        engine_cfg = engine_config(args.engine, dtype=args.dtype)
    except ValueError as exc:
        return fail(f"--engine: {str(exc).removeprefix('engine.kind: ')}")

    from transformers import AutoTokenizer

    from rlvr.models import context_length, resolve_model
    from rlvr.serve import Limits, Server, is_loopback
    from rollouts.types import SamplingConfig

    model_dir = resolve_model(args.model, "MODEL")
    context = context_length(model_dir)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    vocab = config.get("text_config", config).get("vocab_size")
    limits = Limits(context=context, max_tokens=min(args.max_tokens, context or args.max_tokens), vocab_size=vocab)
    engine = engine_cfg.build(model_dir, threads=args.threads)
    server = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)  # the HTTP side's own copy (rlvr.serve.app.Backend)
        # one short call first: an engine that compiles on first use (static) does it before clients wait on it
        engine.generate([tokenizer("Hello", add_special_tokens=False)["input_ids"] or [0]],
                        SamplingConfig(max_tokens=2, seed=0))
        server = Server(engine, tokenizer, args.served_model_name or args.model, api_key=api_key, host=args.host,
                        port=args.port, limits=limits, max_batch=args.max_batch, window_s=args.batch_window_ms / 1000,
                        max_wait_s=args.batch_max_wait_ms / 1000, http="process" if args.http_process else "thread")
        if not is_loopback(args.host):
            print(f"rlvr serve: listening on {args.host}, reachable from other machines: every request needs the "
                  "token, and traffic is plain HTTP (no TLS)", file=sys.stderr)
        print(f"rlvr serve: {server.model_name} on the {args.engine} engine, context {context or 'unknown'} tokens",
              flush=True)
        print(f"base_url: {server.base_url}", flush=True)
        print(f"api_key: {server.api_key}" + ("" if api_key else "  (generated; --api-key to choose one)"), flush=True)
        print("Ctrl-C stops it.", flush=True)
        stop = threading.Event()
        # both set explicitly: a process started with SIGINT ignored (a background job of a script, a parent
        # that ignores it) would otherwise never see Ctrl-C
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        print("rlvr serve: stopped", file=sys.stderr)
        return 0
    finally:
        if server is not None:
            server.close()
        engine.close()
