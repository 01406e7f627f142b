"""What several test modules share: paths, the small-run config (`tiny_config`, also the `tiny_cfg`
fixture), and the run, learner and cluster helpers. Test modules import from here, never from each
other (`tests/` is on ``sys.path``: tests/conftest.py puts it there)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

    from rlvr.config import TrainConfig
    from rlvr.pipeline import ScoredGroup
    from rlvr.train.learner import RLBatch

ROOT = Path(__file__).resolve().parents[1]  # the repository
DATA = Path(__file__).resolve().parent / "data"
TINY_R1ZERO = "configs/tiny_r1zero.yaml"

# The small run most tests train: the HF engine, 4 prompts x 4 completions of 16 tokens, evaluation only
# at the start and the end on 8 prompts (SMALL_EVAL), quiet logs, one thread (learner and engine: a micro
# model gains nothing from an OpenMP team, and on shared cores each tiny op waits for the team's second
# thread). A test that compares two runs gives both sides this; one that checks more threads says so.
SMALL_EVAL = ["eval.every=0", "eval.num_prompts=8", "eval.k=2", "eval.max_tokens=16"]
TINY = ["engine.kind=hf", "train.prompts_per_step=4", "sampling.n=4", "sampling.max_tokens=16", *SMALL_EVAL,
        "train.micro_batch_size=8", "optim.lr=3e-4", "train.threads=1", "logging.progress=false",
        "logging.tensorboard=false"]


def override(key: str, value: Any) -> str:
    """``key=value`` as the command line spells it (YAML flow style for anything but a string)."""
    if isinstance(value, str):
        return f"{key}={value}"
    import yaml

    return f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"


def tiny_config(*overrides: str | Iterable[str], model: str | Path = "m", run_dir: str | Path | None = None,
                base: str = TINY_R1ZERO, small_eval: bool = True, **dotted: Any) -> TrainConfig:
    """``base`` (configs/tiny_r1zero.yaml) with ``model=``, ``run_dir=`` (when given), the small run
    (``TINY``; without ``SMALL_EVAL`` when ``small_eval=False``: the eval section stays the file's) and then
    the caller's overrides: ``key=value`` strings or lists of them, and dotted keys as keyword arguments
    (``**{"train.steps": 2}``), applied in that order (a later one wins)."""
    from rlvr.config import TrainConfig, load_config

    small = TINY if small_eval else [o for o in TINY if o not in SMALL_EVAL]
    items = [f"model={model}"] + ([f"run_dir={run_dir}"] if run_dir is not None else []) + small
    for o in overrides:
        items.extend([o] if isinstance(o, str) else o)
    items.extend(override(k, v) for k, v in dotted.items())
    return load_config(TrainConfig, base, items)


# --- whole runs (resume, cluster end to end) -----------------------------------------------------

SMALL = [*TINY, "checkpoint.every=3"]  # the resume tests' run, as command-line overrides


def run_config(model: str, run_dir: Path, steps: int, *more: str, base: str = TINY_R1ZERO) -> TrainConfig:
    """A small run of ``steps`` steps that checkpoints every 3 (``SMALL``)."""
    return tiny_config("checkpoint.every=3", f"train.steps={steps}", *more, model=model, run_dir=run_dir, base=base)


def train_records(run_dir: Path) -> list[dict]:
    """Per-step metrics without wall-clock timings (which differ between any two runs)."""
    from rlvr.logging import read_metrics

    timing = {"generate_share", "score_hidden_share"}
    return [{k: v for k, v in r.items() if not k.endswith("_s") and k not in timing}
            for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "final" / "model.safetensors")


def assert_same_run(a: Path, b: Path, steps: int) -> None:
    """Two runs logged the same metrics (timings aside) at every step and ended with equal weights."""
    import torch

    ra, rb = train_records(a), train_records(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, steps + 1))
    for x, y in zip(ra, rb):
        assert x == y, {k: (x[k], y.get(k)) for k in x if x[k] != y.get(k)}
    pa, pb = final_params(a), final_params(b)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def rlvr_cli() -> list[str]:
    """The ``rlvr`` command of this interpreter (the tests' tree, whatever .venv/bin/rlvr points at)."""
    return [sys.executable, "-c", "import sys; from rlvr.cli import main; sys.exit(main())"]


def kill_when(run_dir: Path, step: int, key: str, index: int, killed: list[int]) -> threading.Thread:
    """Kill process ``cluster.json[key][index]`` with SIGKILL once the run logged ``step``."""
    from rlvr.logging import read_metrics

    def watch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            metrics, topo = run_dir / "metrics.jsonl", run_dir / "cluster.json"
            if metrics.exists() and topo.exists() and any(
                    r["kind"] == "train" and r["step"] >= step for r in read_metrics(metrics)):
                pid = json.loads(topo.read_text())[key][index]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


# --- the learner on real scored groups (data-parallel and FSDP tests) ------------------------------

def learner_config(model: str, *more: str, base: str = TINY_R1ZERO) -> TrainConfig:
    """The small run's learner on one thread at lr 1e-4 (these tests never evaluate: the file's eval section)."""
    return tiny_config("optim.lr=1e-4", "train.threads=1", *more, model=model, base=base, small_eval=False)


# every loss_agg mode (the key); two updates per batch, KL to a reference, an entropy bonus and
# several micro-batches per rank along the way
CASES = {
    "token-mean": ["train.updates_per_batch=2", "algorithm.entropy_coef=0.01"],
    "seq-mean-token-mean": ["algorithm.kl_coef=0.05", "train.micro_batch_size=4"],
    "seq-mean-token-sum": [],
    "seq-mean-token-sum-norm": ["algorithm.advantage=dr_grpo", "train.updates_per_batch=2"],  # Dr.GRPO
}


def sample_scored(model_dir: str) -> list[ScoredGroup]:
    """Two steps of 4 groups x 4 completions sampled by the micro model and scored by the task's rubric,
    each step with a group whose rewards differ (a real update). What the micro model samples depends on
    the CPU that pretrained it, so the first of seeds 11, 12, ... whose draw gives both steps that spread."""
    from transformers import AutoTokenizer

    from rlvr.components import build_engine, build_rubric, load_rows
    from rlvr.pipeline import ScoredGroup
    from rlvr.scoring import Scorer, generate_and_score
    from rollouts import SamplingConfig

    cfg = learner_config(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rubric = build_rubric(cfg)
    rows = load_rows(cfg, tokenizer, rubric, model_dir, verbose=False).train[:8]
    engine = build_engine(cfg, model_dir)
    scorer = Scorer(rubric, cfg.rewards.workers)
    try:
        for seed in range(11, 31):
            sampling = SamplingConfig(n=4, temperature=1.0, top_p=1.0, max_tokens=16, seed=seed)
            groups, scores, _ = generate_and_score(engine, rows, sampling, scorer)
            scored = [ScoredGroup(r, g, s) for r, g, s in zip(rows, groups, scores)]
            if all(any(len(set(sg.rewards.tolist())) > 1 for sg in scored[a : a + 4]) for a in (0, 4)):
                return scored
    finally:
        scorer.close()
        engine.close()
    raise AssertionError("seeds 11-30: in every draw a step had no group whose rewards differ")


def batches(cfg: TrainConfig, scored: list[ScoredGroup], critic=None) -> list[tuple[RLBatch, object]]:
    """The two steps' batches, packed and given advantages as the loop does (PPO: critic values first)."""
    from rlvr.algorithms import ADVANTAGES
    from rlvr.train.batch import build_batch

    out = []
    for step in range(2):
        batch, adv_in = build_batch(scored[4 * step: 4 * step + 4], 1, cfg.algorithm, cfg.sampling.max_tokens)
        if critic is not None:
            adv_in.values = critic.values(batch)
        batch.advantages = ADVANTAGES[cfg.algorithm.advantage](adv_in, cfg.algorithm)  # [B, T]
        out.append((batch, adv_in))
    assert all(b.advantages.abs().sum() > 0 for b, _ in out)  # rewards differ within groups: a real update
    return out


# --- a local OpenAI-compatible judge (the judge verifier's tests) ------------------------------------

class JudgeServer:
    """An OpenAI-compatible endpoint on 127.0.0.1 served from a thread: ``/v1/chat/completions`` and
    ``/v1/completions`` answer as a deterministic judge would, reading the prompt written from
    examples/judge/arith_rubric.txt: "Score: 10" when the last ``<answer>`` of the graded text is the
    reference, "Score: 3" for another answer, "Score: 0" for none. ``mode`` injects a fault: ``slow``
    (sleeps ``delay`` seconds before answering), ``500`` (answers HTTP 500), ``flaky`` (500 on the first
    request of each prompt, then the judge), ``garbage`` (a reply without a score), ``401``. Every request
    is recorded (``requests``: the JSON bodies; ``max_in_flight``: the most handled at once)."""

    def __init__(self, mode: str = "ok", delay: float = 0.0):
        import http.server

        self.mode, self.delay = mode, delay
        self.requests: list[dict] = []
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                body["_path"], body["_auth"] = self.path, self.headers.get("Authorization")
                with server.lock:
                    server.requests.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, reply = server.answer(body)
                    if server.delay:
                        time.sleep(server.delay)
                    payload = json.dumps(reply).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        # a short poll: shutdown() waits up to one poll interval (0.5 s by default, at every test's teardown)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @staticmethod
    def grade(prompt: str) -> str:
        import re

        reference = re.search(r"Reference answer: (.*)", prompt).group(1).strip()
        graded = prompt.split("<<<", 1)[1].rsplit(">>>", 1)[0]
        answers = re.findall(r"<answer>(.*?)</answer>", graded, re.DOTALL)
        score = 0 if not answers else 10 if answers[-1].strip() == reference else 3
        return f"The answer is {'right' if score == 10 else 'not right'}.\nScore: {score}"

    def answer(self, body: dict) -> tuple[int, dict]:
        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        with self.lock:
            self.seen[prompt] = self.seen.get(prompt, 0) + 1
            first = self.seen[prompt] == 1
        if self.mode == "500" or (self.mode == "flaky" and first):
            return 500, {"error": {"message": "judge overloaded"}}
        if self.mode == "401":
            return 401, {"error": {"message": "bad key"}}
        text = "I cannot decide." if self.mode == "garbage" else self.grade(prompt)
        if "messages" in body:
            return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}]}
        return 200, {"choices": [{"index": 0, "text": text, "finish_reason": "stop"}]}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url() -> str:
    """The URL of a port on 127.0.0.1 that nothing listens on (a judge that is down)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


JUDGE_TEMPLATE = ROOT / "examples" / "judge" / "arith_rubric.txt"


def byte_tokenizer(template: str | None = None, merges: tuple[tuple[str, str], ...] = ()) -> PreTrainedTokenizerFast:
    """A real (fast) tokenizer built in memory: one token per byte, then one token per pair in ``merges``
    (``("a", "b")`` makes "ab" one token), an ``<eos>``, and ``template`` as its chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    fast.chat_template = template
    return fast


def train_and_read(cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    """Train ``cfg`` in this process; its train records (checked to be steps 1..train.steps) and eval records."""
    from rlvr.logging import read_metrics
    from rlvr.loop import train

    train(cfg)
    records = read_metrics(Path(cfg.run_dir) / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in steps] == list(range(1, cfg.train.steps + 1))
    return steps, [r for r in records if r["kind"] == "eval"]
