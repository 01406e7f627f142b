"""Does the server cost throughput? Agent sessions through the recording server against the same requests
submitted in process (``rlvr bench rollouts --serve-sessions 64``).

A session has the shape of the example agent (examples/agents/calculator_agent.py): ``turns`` model calls
on the completions API, each of at most ``turn_tokens`` tokens and stopped at ``</python>``; after a
call the agent appends the reply and a tool's output (``OBSERVATION``) to the text it was given and sends
the whole history back, so the server continues from the sampled ids (rlvr.serve.app). Each session is
opened in the server's records with a seed, as rlvr.agents opens them, and its calls give no seed (the
server derives each call's seed from the session's).

Each round times each way, in turn, on one engine:

* **in process**: turn by turn, one ``engine.generate`` of every session's prompt ids (turn ``t + 1``'s
  ids are turn ``t``'s ids, its sampled ids, and the observation encoded), with the seeds the server
  gives the same calls: every turn one batch with no HTTP at all;
* **in process, pipelined** (an engine that decodes token by token, ``steps_tokens``): the same calls
  through the engine's request API, stepped on the calling thread, each session's next call submitted
  as soon as its last one finished, so it joins the running batch (what the server does with such an
  engine, rlvr.serve.batcher, without HTTP);
* **through the server**: one thread per session, each with its own ``openai`` client on its session
  URL (what rlvr.agents gives a sync agent), all started together, timed
  from the first call to the last reply. The threads run in a process of their own (``ClientProcess``,
  ``clients="process"``, the default): the agents are the server's clients, not part of it, and their
  clients' Python (about 1.3 ms a call) would otherwise share the GIL of the engine and the HTTP side.
  ``clients="threads"`` runs them in the server's process (as rlvr.agents runs a training run's agents
  today); ``"both"`` times both each round.

Tokens/s counts sampled tokens (the server's ``usage.completion_tokens``). Reported: each side's best
round and the median of the rounds' ratios (server / in process, against the faster in-process way of
the round).
"""

from __future__ import annotations

import random
import statistics
import sys
import threading
import time
from typing import Any

STOP = ("</python>",)  # the example agent stops the model at the end of a tool call
OBSERVATION = "</python>\n<output>\n42\n</output>\n"  # what it appends before the next call
MODEL_NAME = "bench"
CLIENTS = ("process", "threads", "both")  # where the sessions' clients run (bench_sessions)
LAYOUTS = ("shared", "split")  # how the machine's cores are shared (bench_sessions)


def split_cores() -> tuple[set[int], set[int]]:
    """The cores this process may use, cut in two: (the engine's first half, the rest for the HTTP side and
    the agents); one core each on a 2-core machine."""
    import os

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise ValueError("layout 'split' needs at least 2 cores; this process may use 1")
    half = len(cores) // 2
    return set(cores[:half]), set(cores[half:])


def pin_process(pid: int, cores: set[int]) -> None:
    """Every thread of process ``pid`` onto ``cores`` (Linux: its threads are /proc/PID/task/*); the threads
    they start later inherit it."""
    import os

    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (ProcessLookupError, FileNotFoundError):  # a thread that ended meanwhile
            pass


def questions(n: int, seed: int = 0) -> list[str]:
    """``n`` prompts of the arithmetic task in the R1 template (what the tools base was trained on)."""
    from rlvr.tasks.base import R1_TEMPLATE

    rng = random.Random(seed)
    return [R1_TEMPLATE.format(question=f"{rng.randint(2, 99)} + {rng.randint(2, 99)} - {rng.randint(2, 99)}")
            for _ in range(n)]


def _session_seeds(base: int, sessions: int, turns: int) -> list[list[int]]:
    """The seed of each session's calls: session ``i`` is opened with ``base + i``; its ``t``-th call
    gets the server's derived seed (rlvr.serve.records.session_seed)."""
    from rlvr.serve.records import session_seed

    return [[session_seed(base + i, t) for t in range(turns)] for i in range(sessions)]


def in_process(engine, tokenizer, texts: list[str], seeds: list[list[int]], turns: int,
               turn_tokens: int) -> tuple[int, float]:
    """Every session's turns sampled turn by turn in one engine call each: (sampled tokens, seconds)."""
    from rollouts import SamplingConfig

    after = _after(tokenizer)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    tokens = 0
    t0 = time.perf_counter()
    for turn in range(turns):
        sampling = SamplingConfig(max_tokens=turn_tokens, stop=STOP, seeds=[s[turn] for s in seeds])
        groups = engine.generate(ids, sampling)
        for i, group in enumerate(groups):
            sampled = list(group.completions[0].token_ids)
            tokens += len(sampled)
            ids[i] = ids[i] + after(sampled)
    return tokens, time.perf_counter() - t0


def in_process_pipelined(engine, tokenizer, texts: list[str], seeds: list[list[int]], turns: int,
                         turn_tokens: int) -> tuple[int, float]:
    """The same calls through the engine's request API, stepped on this thread: each session's next call
    is submitted as soon as its last one finished, as the agents do through the server (an engine that
    decodes token by token takes it into the running batch): (sampled tokens, seconds)."""
    from rollouts import SamplingConfig

    after = _after(tokenizer)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    sampling = SamplingConfig(max_tokens=turn_tokens, stop=STOP)
    tokens = 0
    t0 = time.perf_counter()
    running = {engine.submit(ids[i], sampling, seeds[i][0]): (i, 0) for i in range(len(texts))}
    while running:
        engine.step()
        for future in [f for f in running if f.done()]:
            i, turn = running.pop(future)
            sampled = list(future.result().completions[0].token_ids)
            tokens += len(sampled)
            if turn + 1 < turns:
                ids[i] = ids[i] + after(sampled)
                running[engine.submit(ids[i], sampling, seeds[i][turn + 1])] = (i, turn + 1)
    return tokens, time.perf_counter() - t0


def _after(tokenizer):
    """What follows a call's sampled ids in the session's next prompt: the ids (less a final EOS, which
    the server leaves out too), then the observation; a call cut at the stop string sampled its tokens
    (the text leaves it out), so the server continues after them with the rest of the observation."""
    obs = tokenizer(OBSERVATION, add_special_tokens=False)["input_ids"]
    after_stop = tokenizer(OBSERVATION.removeprefix(STOP[0]), add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)

    def after(sampled: list[int]) -> list[int]:
        if sampled and sampled[-1] in special:
            sampled = sampled[:-1]
        stopped = tokenizer.decode(sampled).endswith(STOP[0])
        return sampled + (after_stop if stopped else obs)

    return after


def _sessions(root_url: str, api_key: str, names: list[str], texts: list[str], turns: int,
              turn_tokens: int) -> tuple[list[int], float]:
    """Every session run as an agent would, one thread each, each with its own ``openai`` client on its
    session URL, all started together: (each session's sampled tokens, seconds from the first call to the
    last reply)."""
    import openai

    from rlvr.serve.clients import plain_http

    tokens = [0] * len(texts)
    errors: list[BaseException] = []
    start = threading.Barrier(len(texts) + 1)

    def session(i: int) -> None:
        client = openai.OpenAI(base_url=f"{root_url}/s/{names[i]}/v1", api_key=api_key, max_retries=0,
                               timeout=600, http_client=plain_http(600.0))
        try:
            start.wait()
            text = texts[i]
            for _ in range(turns):
                reply = client.completions.create(model=MODEL_NAME, prompt=text, max_tokens=turn_tokens,
                                                  stop=list(STOP))
                tokens[i] += reply.usage.completion_tokens
                text += reply.choices[0].text + OBSERVATION
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=session, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return tokens, seconds


class ClientProcess:
    """The agents' side in a process of its own (``python -m rlvr.serve.bench --clients``), as a training
    run's agent runner has it (rlvr.agents.runner): their ``openai`` clients' Python (about 1.3 ms a call)
    runs on that process's interpreter, not on the GIL the server's engine and HTTP side hold. Kept alive
    for the whole bench; each ``run`` sends one round's sessions as a JSON line and reads the result."""

    def __init__(self) -> None:
        import os
        import subprocess
        import sys
        import tempfile

        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "rlvr.serve.bench", "--clients"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})

    def run(self, root_url: str, api_key: str, names: list[str], texts: list[str], turns: int,
            turn_tokens: int) -> tuple[list[int], float]:
        import json

        self.proc.stdin.write(json.dumps({"root_url": root_url, "api_key": api_key, "names": names, "texts": texts,
                                          "turns": turns, "turn_tokens": turn_tokens}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.err.seek(0)
            raise RuntimeError(f"the bench's client process died (exit {self.proc.returncode}):\n"
                               f"{self.err.read()[-4000:]}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"an agent session of the bench failed: {answer['error']}")
        return answer["tokens"], answer["seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except Exception:  # noqa: BLE001 - a stuck child is killed
                self.proc.kill()
                self.proc.wait()
        self.err.close()


def _client_main() -> None:
    """``python -m rlvr.serve.bench --clients``: each line on stdin a round (``ClientProcess.run``), each
    answer a line on stdout."""
    import json
    import sys

    for line in sys.stdin:
        job = json.loads(line)
        try:
            tokens, seconds = _sessions(job["root_url"], job["api_key"], job["names"], job["texts"], job["turns"],
                                        job["turn_tokens"])
            answer: dict[str, Any] = {"tokens": tokens, "seconds": seconds}
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


def through_server(server, texts: list[str], base_seed: int, turns: int, turn_tokens: int,
                   tag: str, clients: ClientProcess | None = None) -> tuple[int, float]:
    """Every session run as an agent would, one thread each, in ``clients``' process (None: threads of this
    one): (sampled tokens, seconds). The sessions are opened here, in the server's records, with seeds."""
    names = [f"bench-{tag}-{i}" for i in range(len(texts))]
    for i, name in enumerate(names):
        server.records.open(name, base_seed + i)
    try:
        if clients is None:
            tokens, seconds = _sessions(server.root_url, server.api_key, names, texts, turns, turn_tokens)
        else:
            tokens, seconds = clients.run(server.root_url, server.api_key, names, texts, turns, turn_tokens)
    finally:
        for name in names:
            server.records.close(name)
            server.records.pop(name)
    return sum(tokens), seconds


def bench_sessions(model_dir: str, engine: str = "static", sessions: int = 64, turns: int = 2,
                   turn_tokens: int = 48, repeats: int = 3, dtype: str = "float32", max_batch: int = 64,
                   window_s: float = 0.05, max_wait_s: float = 0.5, clients: str = "process", http: str = "thread",
                   layout: str = "shared") -> dict[str, Any]:
    """``repeats`` rounds of ``sessions`` agent sessions through the server and in process (the module doc).
    ``clients``: where the sessions' ``openai`` clients run: "process" (a process of their own, as a training
    run's agents do), "threads" (threads of the server's process), or "both" (each round also times the
    threads way, reported beside the ratio, which is always the first way's). ``http``: the server's HTTP
    side on a thread of the engine's process or in a process of its own (rlvr.serve.server.Server).
    ``layout``: "shared" (every process on every core, the engine with torch's threads) or "split" (the
    layout of a GPU deployment, where the engine has a device of its own: the engine's process and its
    threads pinned to the first half of the cores with one torch thread per core, the HTTP side and the
    agents' clients to the rest; in process, the engine runs on its half alone)."""
    import torch

    from rlvr.serve.server import HTTP_MODES

    if clients not in CLIENTS:
        raise ValueError(f"clients: {clients!r}; choose one of {', '.join(CLIENTS)}")
    if http not in HTTP_MODES:
        raise ValueError(f"http: {http!r}; choose one of {', '.join(HTTP_MODES)}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout: {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "split" and clients != "process":
        raise ValueError("layout 'split' puts the agents' clients on the HTTP side's cores: it needs clients='process'")
    threads_before = torch.get_num_threads()
    if layout == "split":
        import os

        engine_cores, other_cores = split_cores()
        torch.set_num_threads(len(engine_cores))
    from transformers import AutoTokenizer

    from rlvr.models import context_length
    from rlvr.serve.protocol import Limits
    from rlvr.serve.server import Server
    from rollouts import SamplingConfig
    from rollouts.config import engine_config

    eng = engine_config(engine, dtype=dtype).build(model_dir)
    rounds = []
    helper = ClientProcess() if clients != "threads" else None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        texts = questions(sessions)
        warm = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[:2]]
        eng.generate(warm, SamplingConfig(max_tokens=4, seed=0))  # compile / warm up before timing
        limits = Limits(context=context_length(model_dir), max_tokens=turn_tokens)
        with Server(eng, AutoTokenizer.from_pretrained(model_dir), MODEL_NAME, limits=limits, max_batch=max_batch,
                    window_s=window_s, max_wait_s=max_wait_s, http=http) as server:
            if layout == "split":
                pin_process(os.getpid(), engine_cores)
                if http == "process":
                    pin_process(server._child.proc.pid, other_cores)
                else:
                    os.sched_setaffinity(server._thread.native_id, other_cores)
                pin_process(helper.proc.pid, other_cores)
            through_server(server, texts[:2], 0, 1, 4, "warm")  # the HTTP side's first request
            if helper is not None:
                through_server(server, texts[:2], 0, 1, 4, "warm-process", helper)  # the client process's first
            pipelined = getattr(eng, "steps_tokens", False)
            for r in range(repeats):
                base = 10_000 * (r + 1)
                seeds = _session_seeds(base, sessions, turns)
                calls_before, prompts_before = server.batcher.calls, server.batcher.prompts
                local = in_process(eng, tokenizer, texts, seeds, turns, turn_tokens)
                piped = in_process_pipelined(eng, tokenizer, texts, seeds, turns, turn_tokens) if pipelined else None
                served = through_server(server, texts, base, turns, turn_tokens, str(r), helper)
                made = server.batcher.calls - calls_before
                rounds.append({"in_process_tokens": local[0], "in_process_s": local[1], "server_tokens": served[0],
                               "server_s": served[1], "engine_calls": made,
                               "engine_prompts": server.batcher.prompts - prompts_before,
                               "continuous": server.batcher.continuous,
                               "batch_sizes": server.batcher.batch_sizes[-made:] if made else []})
                if piped is not None:
                    rounds[-1].update(pipelined_tokens=piped[0], pipelined_s=piped[1])
                if clients == "both":
                    threaded = through_server(server, texts, base, turns, turn_tokens, f"{r}-threads")
                    rounds[-1].update(threads_tokens=threaded[0], threads_s=threaded[1])
    finally:
        if helper is not None:
            helper.close()
        eng.close()
        torch.set_num_threads(threads_before)
        if layout == "split":
            pin_process(os.getpid(), engine_cores | other_cores)
    for r in rounds:
        r["in_process_tps"] = r["in_process_tokens"] / r["in_process_s"]
        r["server_tps"] = r["server_tokens"] / r["server_s"]
        if "pipelined_s" in r:
            r["pipelined_tps"] = r["pipelined_tokens"] / r["pipelined_s"]
        if "threads_s" in r:
            r["threads_tps"] = r["threads_tokens"] / r["threads_s"]
            r["threads_ratio"] = r["threads_tps"] / max(r["in_process_tps"], r.get("pipelined_tps", 0.0))
        r["best_in_process_tps"] = max(r["in_process_tps"], r.get("pipelined_tps", 0.0))
        r["ratio"] = r["server_tps"] / r["best_in_process_tps"]
    return {"bench": "serve_sessions", "model": model_dir, "engine": engine, "dtype": dtype, "sessions": sessions,
            "turns": turns, "turn_tokens": turn_tokens, "window_s": window_s, "max_wait_s": max_wait_s,
            "clients": clients, "http": http, "layout": layout,
            "in_process_tps_best": max(r["best_in_process_tps"] for r in rounds),
            "server_tps_best": max(r["server_tps"] for r in rounds),
            "ratio_median": statistics.median(r["ratio"] for r in rounds),
            **({"threads_ratio_median": statistics.median(r["threads_ratio"] for r in rounds)}
               if clients == "both" else {}), "rounds": rounds}


def format_sessions(result: dict[str, Any]) -> str:
    """The rounds as a table, then the best and the median ratio."""
    piped = any("pipelined_tps" in r for r in result["rounds"])
    both = result.get("clients") == "both"
    where = {"process": "clients in a process of their own", "threads": "clients in the server's process",
             "both": "clients in a process of their own (ratio) and in the server's process (threads)"}
    lines = [f"{result['sessions']} concurrent agent sessions of {result['turns']} calls (<= {result['turn_tokens']} "
             f"tokens each, stop at </python>), {result['engine']} engine, {result['dtype']}, {result['model']}; "
             f"{where[result.get('clients', 'threads')]}; HTTP side in a {result.get('http', 'thread')}"
             + ("; split layout: the engine on its own cores, the HTTP side and the clients on the others"
                if result.get("layout") == "split" else ""),
             f"{'round':>5} {'in process tok/s':>17} " + (f"{'pipelined':>10} " if piped else "")
             + f"{'server tok/s':>13} {'ratio':>6} " + (f"{'threads':>8} {'ratio':>6} " if both else "")
             + " server batches"]
    for i, r in enumerate(result["rounds"]):
        batches = (f"continuous ({r['engine_prompts']} prompts joined the engine's running batch)" if r["continuous"]
                   else str(r["batch_sizes"]))
        lines.append(f"{i:>5} {r['in_process_tps']:>17,.0f} " + (f"{r['pipelined_tps']:>10,.0f} " if piped else "")
                     + f"{r['server_tps']:>13,.0f} {r['ratio']:>6.2f} "
                     + (f"{r['threads_tps']:>8,.0f} {r['threads_ratio']:>6.2f} " if both else "") + f" {batches}")
    lines.append(f"best: in process {result['in_process_tps_best']:,.0f} tok/s, server "
                 f"{result['server_tps_best']:,.0f} tok/s; server / in process, median {result['ratio_median']:.2f}"
                 + (f" (threads {result['threads_ratio_median']:.2f})" if both else "")
                 + (" (in process: the faster of the two ways, each round)" if piped else ""))
    ways = [k for k in ("in_process_tokens", "pipelined_tokens", "server_tokens", "threads_tokens")
            if k in result["rounds"][0]]
    counts = [[r[k] for k in ways] for r in result["rounds"]]
    same = all(len(set(c)) == 1 for c in counts)
    lines.append(f"sampled tokens per round, every way: {[c[0] for c in counts]}" if same else
                 f"sampled tokens differ between the ways ({', '.join(w.removesuffix('_tokens') for w in ways)}): "
                 f"{counts}")
    return "\n".join(lines)


if __name__ == "__main__" and sys.argv[1:] == ["--clients"]:
    _client_main()
