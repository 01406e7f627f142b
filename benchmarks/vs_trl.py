"""rlvr vs TRL's GRPOTrainer: same tiny base, task, reward and settings; seconds per step side by side.

    .venv/bin/python benchmarks/vs_trl.py [--steps 20] [--threads 2] [--seeds N|S,S,...] [--reuse] [--trl-gen auto|vllm|cb|generate]
                                          [--model DIR | --random-init CONFIG_JSON] [--out runs/vs_trl] [--json]
                                          [--rlvr-override key.sub=value ...]

Each framework trains in its own subprocess (no shared thread pools or vLLM state), then a third
subprocess evaluates the base and both final checkpoints the same way. Prints median seconds per
step for each (and the TRL/rlvr ratio), a per-phase breakdown (generate, score, learn, weight sync,
other; medians over steps), the mean training reward of the last 5 steps, and held-out greedy
pass@1. Writes ``<out>/results.json`` (and each side's per-step records under ``<out>/rlvr`` and
``<out>/trl``). ``--json`` prints the results as JSON instead of the tables. ``--seeds N`` runs the
whole comparison for seeds 0..N-1 (or ``--seeds 3,4`` for those seeds; ``--reuse`` reads a seed already
under ``<out>`` instead of running it again) (the seed sets both sides' prompt order, sampling and
initialisation; each seed's results under ``<out>/seed<S>``) and reports held-out pass@1, training
accuracy and step time as mean ± standard error over seeds, with rlvr - TRL in standard errors of
the difference (``<out>/results.json``); later seeds reuse the TRL path the first one trained with.

Identical settings on both sides (``Settings`` below; printed in the output, checked by the test):

* model ``artifacts/tiny-base`` (1.45M-parameter Llama, float32, untied head); task rlvr ``arith``
  (``ArithTask()`` defaults, R1-Zero template), and the *same prompts in the same order*: the TRL
  dataset is rlvr's ``PromptSampler`` order for seed 0, with TRL's shuffling off;
* reward = 1.0 * ``verifiers.get("arith")`` + 0.1 * ``verifiers.get("r1_format")``: rlvr's
  ``Rubric``; TRL gets two ``reward_funcs`` calling the same verifiers, ``reward_weights=[1.0, 0.1]``;
* 16 prompts per step x 8 completions (TRL ``num_generations=8``), generated once per optimiser
  step: TRL ``per_device_train_batch_size=64``, ``gradient_accumulation_steps=2``,
  ``steps_per_generation=2`` (``generation_batch_size`` = 64 * 2 = 128 = 16 x 8), i.e. one optimiser
  step per generation batch, the same two micro-batches of 64 sequences as rlvr's
  ``train.micro_batch_size=64``;
* max completion length 48 tokens, temperature 1.0, top_p 1.0 (no top-k), float32 everywhere;
* GRPO advantage with group-std scaling (TRL ``scale_rewards="group"``; std eps 1e-4 in TRL, 1e-6
  in rlvr), PPO-clip eps 0.2 both sides, one update per batch (``num_iterations=1``), no KL
  (``beta=0``), no reference model;
* token-mean loss over the whole 128-completion batch: rlvr ``loss_agg=token-mean`` weighs each
  micro-batch by its share of the batch's tokens; TRL ``loss_type="dapo"`` divides by the token
  count of the whole generation batch (``num_items_in_batch``), which is the same number. (TRL's
  ``bnpo`` normalises per micro-batch, so it differs when the two micro-batches hold different
  token counts.);
* AdamW lr 5e-5 constant (TRL ``lr_scheduler_type="constant"``, no warm-up), betas (0.9, 0.99),
  eps 1e-8, weight decay 0, gradient-norm clip 1.0;
* seed 0; ``--threads`` torch threads on both sides (and ``VLLM_CPU_OMP_THREADS_BIND`` over the
  same cores wherever vLLM runs); no evaluation or checkpointing during training; a log line per step.
  TRL's vLLM importance-sampling correction is off (rlvr has none by default; it would also cost
  TRL an extra forward pass).

Step time. rlvr: ``step_s`` from its ``metrics.jsonl`` (prompt draw, generation, scoring, advantage,
learner step, weight sync). TRL: wall time between consecutive ``on_step_end`` callbacks (the first
from ``on_train_begin``): the dataloader, generation, scoring, forward/backward, clip, optimiser and
the previous step's log call. Phases for TRL come from a ``GRPOTrainer`` subclass that times
``_generate`` (generate), ``_calculate_rewards`` (score), ``vllm_generation.sync_weights`` (sync),
``training_step`` minus generation-and-scoring plus clip and optimiser step (learn). The medians
are over all steps, the first (warm-up) included. Start-up (model and engine construction) and the
held-out evaluations are not part of any step.

Generation paths, each side's best on CPU:

* rlvr: ``engine.kind=static``, the compiled static-KV-cache decode loop (``rollouts/static_engine.py``),
  weights copied into it after every step; ``--rlvr-override engine.kind=vllm`` runs in-process vLLM
  (CPU build, weights packed in place) instead.
* TRL (``--trl-gen auto`` tries the float32 paths in this order and keeps the first that trains;
  ``<out>/results.json`` records every attempt under ``trl_attempts``). What each did here (TRL
  1.16.0, vllm-cpu 0.32.0, transformers 5.19.0, 2 AVX2 cores):

  - ``vllm``: ``use_vllm=True, vllm_mode="colocate"``, the engine forced to float32 (see
    ``use_float32_vllm``). Fails at the first weight sync, before any step:
    ``AttributeError: 'Parameter' object has no attribute 'weight_loader'`` in vLLM's
    ``linear.py``: TRL pushes weights with ``model_runner.model.load_weights``, and the CPU backend
    has repacked float32 linear weights for oneDNN, dropping their loaders. (rlvr's engine syncs
    through the worker's ``reload_weights`` instead.)
  - ``vllm-bf16`` (only on request): the same path untouched. vLLM's ``dtype="auto"`` downcasts the
    float32 checkpoint to bfloat16 on CPU, where ``load_weights`` works (checked: after changing
    every kind of weight and syncing, vLLM's top-5 log-probs match the HF model's within 0.07 nats,
    bfloat16 rounding). It trains, and was TRL's fastest generation in 3-step probes, but its
    rollouts are bfloat16, not the compared float32 setting.
  - ``generate``: plain ``model.generate`` on the training model. Works; the fastest float32 path.
  - ``cb``: ``use_transformers_continuous_batching`` (``use_transformers_paged`` is its deprecated
    alias). Works; generation about twice as slow as ``generate`` in the same probes.

Run it on an otherwise idle machine; the two sides run one after the other, so load from other
jobs skews the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from seedstats import compare, mean_se  # noqa: E402

TRL_GEN_ORDER = ("vllm", "generate", "cb")  # auto: float32 paths, fastest first (measured)
TRL_GEN_CHOICES = (*TRL_GEN_ORDER, "vllm-bf16")
PHASES = ("generate", "score", "learn", "sync", "other")


@dataclass
class Settings:
    """The settings both frameworks train with; every value maps to one option on each side."""

    model: str = "artifacts/tiny-base"
    steps: int = 20
    prompts_per_step: int = 16
    n: int = 8
    max_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip_eps: float = 0.2
    micro_batch: int = 64
    seed: int = 0
    threads: int = 2
    reward_weights: dict[str, float] = field(default_factory=lambda: {"arith": 1.0, "r1_format": 0.1})
    eval_prompts: int = 200

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        batch = self.prompts_per_step * self.n
        if batch % self.micro_batch:
            raise ValueError(f"prompts_per_step * n = {batch} must be a multiple of micro_batch = {self.micro_batch}")


# --- rlvr side ------------------------------------------------------------------------------


def rlvr_config(s: Settings, run_dir: str, overrides: list[str] = ()):
    """rlvr's TrainConfig: configs/tiny_r1zero.yaml with every compared setting set explicitly."""
    from rlvr.config import TrainConfig, load_config

    rewards = "[" + ", ".join(f"{{verifier: {k}, weight: {w}}}" for k, w in s.reward_weights.items()) + "]"
    return load_config(TrainConfig, str(ROOT / "configs" / "tiny_r1zero.yaml"), [
        f"model={s.model}", f"run_dir={run_dir}", "engine.kind=static", "engine.dtype=float32",
        f"sampling.n={s.n}", f"sampling.temperature={s.temperature}", f"sampling.top_p={s.top_p}",
        f"sampling.max_tokens={s.max_tokens}", f"rewards={rewards}",
        "algorithm.advantage=grpo", "algorithm.scale_std=true", "algorithm.policy_loss=ppo_clip",
        "algorithm.loss_agg=token-mean", f"algorithm.clip_eps_low={s.clip_eps}", f"algorithm.clip_eps_high={s.clip_eps}",
        "algorithm.kl_coef=0.0",
        f"optim.lr={s.lr}", "optim.warmup_steps=0", f"optim.weight_decay={s.weight_decay}",
        f"optim.betas=[{s.betas[0]}, {s.betas[1]}]", f"optim.grad_clip={s.grad_clip}",
        f"train.steps={s.steps}", f"train.prompts_per_step={s.prompts_per_step}",
        f"train.micro_batch_size={s.micro_batch}", "train.updates_per_batch=1", f"train.seed={s.seed}",
        f"train.threads={s.threads}", "eval.every=0", f"eval.num_prompts={s.eval_prompts}", "eval.k=1",
        f"eval.max_tokens={s.max_tokens}", "logging.tensorboard=false", "logging.progress=false",
        *overrides,
    ])


def run_rlvr(s: Settings, out: Path, overrides: list[str]) -> dict[str, Any]:
    from rlvr.logging import read_metrics
    from rlvr.loop import train

    cfg = rlvr_config(s, str(out), overrides)
    t0 = time.perf_counter()
    summary = train(cfg, overwrite=True)  # a benchmark/demo run always starts afresh
    wall = time.perf_counter() - t0
    records = read_metrics(out / "metrics.jsonl")
    steps = []
    for r in (r for r in records if r["kind"] == "train"):
        phases = {p: r.get(f"{p}_s", 0.0) for p in ("generate", "score", "learn", "sync")}
        phases["other"] = r["step_s"] - sum(phases.values())
        steps.append({"step": int(r["step"]), "step_s": r["step_s"], **{f"{p}_s": v for p, v in phases.items()},
                      "reward": r["reward_mean"], "accuracy": r["accuracy"]})
    return {"framework": "rlvr", "generation": f"rlvr engine.kind={cfg.engine.kind}", "steps": steps,
            "wall_s": wall, "eval_s": sum(r.get("eval_s", 0.0) for r in records if r["kind"] == "eval"),
            "checkpoint": summary["checkpoint"], "overrides": list(overrides)}


# --- TRL side -------------------------------------------------------------------------------


def trl_config(s: Settings, gen: str, output_dir: str):
    """TRL's GRPOConfig for ``s``; ``gen`` picks the generation path (vllm, cb, generate)."""
    from trl import GRPOConfig

    batch = s.prompts_per_step * s.n
    accum = batch // s.micro_batch
    return GRPOConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, fp16=False, seed=s.seed, data_seed=s.seed,
        report_to=[], logging_steps=1, save_strategy="no", eval_strategy="no", disable_tqdm=True,
        max_steps=s.steps, per_device_train_batch_size=s.micro_batch, gradient_accumulation_steps=accum,
        steps_per_generation=accum, num_generations=s.n, num_iterations=1, shuffle_dataset=False,
        max_completion_length=s.max_tokens, temperature=s.temperature, top_p=s.top_p, top_k=0,
        learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=s.weight_decay,
        adam_beta1=s.betas[0], adam_beta2=s.betas[1], adam_epsilon=1e-8, max_grad_norm=s.grad_clip,
        beta=0.0, epsilon=s.clip_eps, loss_type="dapo", scale_rewards="group",
        reward_weights=list(s.reward_weights.values()), mask_truncated_completions=False,
        log_completions=False, dataloader_num_workers=0,
        use_vllm=gen.startswith("vllm"), vllm_mode="colocate", vllm_importance_sampling_correction=False,
        use_transformers_continuous_batching=gen == "cb",
    )


def reward_funcs(names: list[str]) -> list:
    """One TRL reward function per rlvr verifier (TRL weights and sums them)."""
    from verifiers import get as get_verifier
    from verifiers import score_batch

    funcs = []
    for name in names:
        verifier = get_verifier(name)

        def func(prompts, completions, answer, question, _v=verifier, **_):
            tasks = [{"prompt": p, "answer": a, "question": q} for p, a, q in zip(prompts, answer, question)]
            return [sc.reward for sc in score_batch(_v, completions, tasks)]

        func.__name__ = f"{name}_reward"
        funcs.append(func)
    return funcs


def trl_dataset(s: Settings):
    """rlvr's training prompts in the order rlvr's PromptSampler draws them (TRL does not shuffle)."""
    from datasets import Dataset

    from rlvr.draw import PromptSampler
    from rlvr.tasks import ArithTask, load_task, render

    cfg = ArithTask()
    train = [dict(r, prompt=render(r["question"], cfg)) for r in load_task(cfg).train]
    order = PromptSampler(len(train), s.seed).next(s.steps * s.prompts_per_step)
    return Dataset.from_list([train[i] for i in order])


def timed_trainer_class():
    """GRPOTrainer that records per-step phase times (see the module docstring)."""
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    class TimedGRPOTrainer(GRPOTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.phase = {p: 0.0 for p in ("generate", "score", "gen_and_score", "train_step", "sync", "opt")}
            self.records: list[dict[str, float]] = []
            self._last_mark = None
            self._last_train_end = None
            self.add_callback(_StepTimer(self))
            if getattr(self, "vllm_generation", None) is not None:
                original = self.vllm_generation.sync_weights

                def timed_sync():
                    t0 = time.perf_counter()
                    original()
                    self.phase["sync"] += time.perf_counter() - t0

                self.vllm_generation.sync_weights = timed_sync

        def _timed(self, key, fn, *a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.phase[key] += time.perf_counter() - t0

        def _generate(self, prompts):
            return self._timed("generate", super()._generate, prompts)

        def _calculate_rewards(self, *a, **kw):
            return self._timed("score", super()._calculate_rewards, *a, **kw)

        def _generate_and_score_completions(self, inputs):
            return self._timed("gen_and_score", super()._generate_and_score_completions, inputs)

        def training_step(self, *a, **kw):
            try:
                return self._timed("train_step", super().training_step, *a, **kw)
            finally:
                self._last_train_end = time.perf_counter()

    class _StepTimer(TrainerCallback):
        def __init__(self, trainer):
            self.t = trainer

        def on_train_begin(self, args, state, control, **kw):
            self.t._last_mark = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kw):
            self.t.phase["opt"] += time.perf_counter() - self.t._last_train_end  # clip + optimizer.step

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            ph = self.t.phase
            step_s = now - self.t._last_mark
            gen = ph["generate"] - ph["sync"]  # sync runs inside _generate
            learn = ph["train_step"] - ph["gen_and_score"] + ph["opt"]
            rec = {"step": state.global_step, "step_s": step_s, "generate_s": gen, "score_s": ph["score"],
                   "learn_s": learn, "sync_s": ph["sync"]}
            rec["other_s"] = step_s - gen - ph["score"] - learn - ph["sync"]
            self.t.records.append(rec)
            for k in ph:
                ph[k] = 0.0
            self.t._last_mark = now

    return TimedGRPOTrainer


def use_float32_vllm() -> None:
    """Make TRL's colocated ``vllm.LLM`` run in float32, like the learner and like rlvr's engine.

    TRL 1.16 builds the engine without a ``dtype`` (and has no option for it), so vLLM's "auto"
    downcasts a float32 checkpoint to bfloat16 on CPU: off the float32 setting this benchmark
    compares, and several times slower on CPUs without AVX-512 BF16/AMX. This is the only
    change to TRL's code path; ``--trl-gen vllm-bf16`` runs it untouched.
    """
    import functools

    import trl.generation.vllm_generation as vg

    vg.LLM = functools.partial(vg.LLM, dtype="float32")


def run_trl(s: Settings, gen: str, out: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(s.threads)
    if gen == "vllm":
        use_float32_vllm()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{s.threads - 1}" if s.threads > 1 else "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(s.model)
    model = AutoModelForCausalLM.from_pretrained(s.model, dtype=torch.float32)
    args = trl_config(s, gen, str(out / "trainer"))
    trainer = timed_trainer_class()(model=model, args=args, processing_class=tokenizer, train_dataset=trl_dataset(s),
                                    reward_funcs=reward_funcs(list(s.reward_weights)))
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t1
    logs = [h for h in trainer.state.log_history if "reward" in h]
    steps = trainer.records
    for rec, log in zip(steps, logs):
        rec["reward"] = log["reward"]
        rec["accuracy"] = log.get("rewards/arith_reward/mean", float("nan"))
    final = out / "final"
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    return {"framework": "trl", "generation": gen, "steps": steps, "wall_s": setup_s + train_s, "setup_s": setup_s,
            "checkpoint": str(final)}


# --- held-out evaluation of every checkpoint, one engine ---------------------------------------


def run_eval(s: Settings, checkpoints: dict[str, str]) -> dict[str, dict[str, float]]:
    """Greedy pass@1 / format rate / length on the held-out split, the same vLLM engine for all."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.evaluate import evaluate
    from rlvr.tasks import ArithTask, Splits, load_task, prepare_rows
    from rollouts import make_engine
    from verifiers import Rubric, get

    torch.set_num_threads(s.threads)
    cfg = ArithTask()
    data = load_task(cfg)
    data = Splits(data.train[:1], data.test[: s.eval_prompts])
    prepare_rows(data, cfg, AutoTokenizer.from_pretrained(s.model), 1 << 30)
    rows = data.test
    rubric = Rubric([(get(k), w) for k, w in s.reward_weights.items()])
    engine = make_engine("vllm", s.model, dtype="float32", seed=s.seed, threads=s.threads)
    out = {}
    for name, path in checkpoints.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        engine.load_weights(model.named_parameters())
        out[name] = evaluate(engine, rows, rubric, k=1, max_tokens=s.max_tokens, seed=s.seed + 7)
    engine.close()
    return out


# --- driver ---------------------------------------------------------------------------------


def _subprocess(kind: str, s: Settings, out: Path, extra: list[str], timeout: float) -> tuple[dict | None, str]:
    """Run one worker in a fresh interpreter; returns (result or None, error text)."""
    out.mkdir(parents=True, exist_ok=True)
    result_file = out / "result.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", kind, "--_settings", json.dumps(asdict(s)),
           "--_out", str(out), *extra]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    with (out / "log.txt").open("w") as log:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout:.0f} s"
    if proc.returncode != 0 or not result_file.is_file():
        tail = (out / "log.txt").read_text().strip().splitlines()[-15:]
        return None, f"exit {proc.returncode}: " + "\n".join(tail)
    return json.loads(result_file.read_text()), ""


def _worker(args: argparse.Namespace) -> None:
    s = Settings(**json.loads(args._settings))
    out = Path(args._out)
    if args._worker == "rlvr":
        res = run_rlvr(s, out, args.rlvr_override)
    elif args._worker.startswith("trl-"):
        res = run_trl(s, args._worker.removeprefix("trl-"), out)
    elif args._worker == "eval":
        res = run_eval(s, json.loads(args._checkpoints))
    else:
        raise SystemExit(f"unknown worker {args._worker!r}")
    (out / "result.json").write_text(json.dumps(res, indent=1))


def summarize(res: dict[str, Any], last: int = 5) -> dict[str, float]:
    steps = res["steps"]
    out = {"step_s": statistics.median(r["step_s"] for r in steps)}
    for p in PHASES:
        out[f"{p}_s"] = statistics.median(r[f"{p}_s"] for r in steps)
    out["reward_last5"] = statistics.mean(r["reward"] for r in steps[-last:])
    out["accuracy_last5"] = statistics.mean(r["accuracy"] for r in steps[-last:])
    out["reward_first"] = steps[0]["reward"]
    out["steps_total_s"] = sum(r["step_s"] for r in steps)
    return out


def settings_table(s: Settings, trl_args, cfg) -> list[tuple[str, Any, Any]]:
    """(setting, TRL value, rlvr value) for every compared setting, read back from the built configs."""
    per_step = trl_args.generation_batch_size // trl_args.num_generations
    return [
        ("model", s.model, cfg.model),
        ("prompts per optimiser step", per_step * trl_args.gradient_accumulation_steps // trl_args.steps_per_generation,
         cfg.train.prompts_per_step),
        ("completions per prompt", trl_args.num_generations, cfg.sampling.n),
        ("sequences per micro-batch", trl_args.per_device_train_batch_size, cfg.train.micro_batch_size),
        ("max completion tokens", trl_args.max_completion_length, cfg.sampling.max_tokens),
        ("temperature", trl_args.temperature, cfg.sampling.temperature),
        ("top_p", trl_args.top_p, cfg.sampling.top_p),
        ("learning rate (constant)", trl_args.learning_rate, cfg.optim.lr),
        ("warm-up steps", trl_args.warmup_steps, cfg.optim.warmup_steps),
        ("AdamW betas", (trl_args.adam_beta1, trl_args.adam_beta2), tuple(cfg.optim.betas)),
        ("weight decay", trl_args.weight_decay, cfg.optim.weight_decay),
        ("grad-norm clip", trl_args.max_grad_norm, cfg.optim.grad_clip),
        ("ratio clip eps", trl_args.epsilon, cfg.algorithm.clip_eps_low),
        ("updates per batch", trl_args.num_iterations, cfg.train.updates_per_batch),
        ("KL coefficient", trl_args.beta, cfg.algorithm.kl_coef),
        ("reward weights", tuple(trl_args.reward_weights), tuple(t.weight for t in cfg.rewards.terms)),
        ("steps", trl_args.max_steps, cfg.train.steps),
        ("seed", trl_args.seed, cfg.train.seed),
    ]


def print_tables(res: dict[str, Any]) -> None:
    r, trls = res["rlvr"], res["trl"]
    print(f"\nsettings (TRL | rlvr); {res['settings_note']}:")
    for name, a, b in res["settings"]:
        print(f"  {name:28s} {str(a):>22s} | {b}")
    print("\nTRL generation paths: " + "; ".join(f"{k}: {v}" for k, v in res["trl_attempts"].items()))
    if not trls:
        print("\nno TRL generation path trained; see above")
        return
    rlvr_engine = r["generation"].rsplit("=", 1)[-1]  # "rlvr engine.kind=static"
    cols = [(f"TRL {g}", t["summary"]) for g, t in trls.items()] + [(f"rlvr {rlvr_engine}", r["summary"])]
    best = trls[res["trl_best"]]["summary"]
    rs = r["summary"]
    w = max(12, *(len(c) + 1 for c, _ in cols))
    print(f"\nseconds per step, median over {len(r['steps'])} steps ({res['threads']} torch threads each):")
    print(f"  {'phase':10s}" + "".join(f"{c:>{w}s}" for c, _ in cols) + f"{'TRL/rlvr':>{w}s}")
    for p in (*PHASES, "step"):
        a, b = best[f"{p}_s"], rs[f"{p}_s"]
        ratio = f"{a / b:.2f}x" if b > 1e-3 else "-"
        print(f"  {'STEP' if p == 'step' else p:10s}" + "".join(f"{m[f'{p}_s']:>{w}.3f}" for _, m in cols)
              + f"{ratio:>{w}s}")
    print(f"\n  TRL/rlvr median step time: {res['speedup']:.2f}x (TRL's fastest path here: {res['trl_best']}; "
          "> 1 means rlvr is faster)")
    print("  time in steps (s): " + ", ".join(f"{c} {m['steps_total_s']:.1f}" for c, m in cols))
    print("\nreward (1.0 x arith + 0.1 x r1_format), training batches:")
    print(f"  {'':28s}" + "".join(f"{c:>{w}s}" for c, _ in cols))
    for key, label in (("reward_first", "step 1"), ("reward_last5", "mean of last 5 steps"),
                       ("accuracy_last5", "accuracy, last 5 steps")):
        print(f"  {label:28s}" + "".join(f"{m[key]:>{w}.3f}" for _, m in cols))
    ev = res.get("eval") or {}
    if ev:
        names = list(ev)
        print(f"\nheld-out ({res['eval_prompts']} prompts, greedy), one float32 vLLM engine for every checkpoint:")
        print(f"  {'':16s}" + "".join(f"{n:>{w}s}" for n in names))
        for key in ("pass@1", "format_rate", "response_len"):
            print(f"  {key:16s}" + "".join(f"{ev[n][key]:>{w}.3f}" for n in names))


def _gen_list(text: str) -> str:
    bad = [g for g in text.split(",") if g not in ("auto", *TRL_GEN_CHOICES)]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown TRL generation path(s) {bad}; choose from auto, {', '.join(TRL_GEN_CHOICES)}")
    return text


def _seed_list(text: str) -> list[int]:
    """``--seeds``: a count N (seeds 0..N-1) or a comma-separated list of seeds."""
    try:
        seeds = list(range(int(text))) if "," not in text else [int(t) for t in text.split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes a count or a comma-separated list of seeds, not {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give a positive count or distinct non-negative seeds")
    return seeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="artifacts/tiny-base", help="HF model directory (default: the tiny base)")
    ap.add_argument("--random-init", metavar="CONFIG_JSON",
                    help="train a randomly initialised model of this architecture instead (e.g. "
                    "benchmarks/configs/llama-25m.json; --model's tokenizer; built under --out): a speed "
                    "comparison at a larger size, where neither side can learn arithmetic in a few steps")
    ap.add_argument("--steps", type=int, default=20, help="training steps per framework")
    ap.add_argument("--seeds", type=_seed_list, default=[0], metavar="N|S,S,...",
                    help="run both sides for seeds 0..N-1, or for the listed seeds (each under <out>/seed<S> when "
                    "more than one) and report held-out pass@1 as mean ± SE over them")
    ap.add_argument("--reuse", action="store_true",
                    help="with several seeds: a seed whose <out>/seed<S>/results.json exists is read, not run again "
                    "(so seeds can be added to a finished comparison: --seeds 5 --reuse runs only 3 and 4 after --seeds 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for each side")
    ap.add_argument("--trl-gen", default="auto", type=_gen_list,
                    help="comma-separated TRL generation paths, each trained in turn (auto: the first of "
                    "vllm, generate, cb that trains; also vllm-bf16: TRL's vLLM untouched, bfloat16 rollouts)")
    ap.add_argument("--rlvr-override", action="append", default=[], metavar="KEY=VALUE",
                    help="extra rlvr config override (repeatable), e.g. an async mode")
    ap.add_argument("--eval-prompts", type=int, default=200, help="held-out prompts for the final evaluation (0: skip)")
    ap.add_argument("--out", default="runs/vs_trl")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_settings", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    ap.add_argument("--_checkpoints", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        return _worker(args)
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"no model at {args.model!r}: run `rlvr pretrain --config configs/tiny_pretrain.yaml` or pass --model")
    if args.random_init:
        from rollouts.bench import build_random_model

        args.model = build_random_model(args.random_init, args.model, str(Path(args.out) / "random-init-model"))

    seeds = args.seeds
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    runs, trl_gen = [], args.trl_gen
    for seed in seeds:
        s = Settings(model=args.model, steps=args.steps, threads=args.threads, eval_prompts=max(1, args.eval_prompts),
                     seed=seed)
        out = Path(args.out) if len(seeds) == 1 else Path(args.out) / f"seed{seed}"
        if len(seeds) > 1 and args.reuse and (out / "results.json").is_file():
            kept = json.loads((out / "results.json").read_text())
            # a file from before "model" and "rlvr_override" were recorded ran the defaults
            ran = {"steps": kept.get("steps"), "threads": kept.get("threads"), "eval_prompts": kept.get("eval_prompts"),
                   "model": kept.get("model", s.model), "rlvr_override": kept.get("rlvr_override", [])}
            want = {"steps": s.steps, "threads": s.threads, "eval_prompts": s.eval_prompts, "model": s.model,
                    "rlvr_override": list(args.rlvr_override)}
            if ran != want:
                differ = ", ".join(f"{k} {ran[k]!r} (this call: {want[k]!r})" for k in want if ran[k] != want[k])
                sys.exit(f"--reuse: {out / 'results.json'} ran with other settings: {differ}; "
                         "give another --out or the same --steps/--threads/--eval-prompts/--model/--rlvr-override")
            log(f"\n=== seed {seed}: reusing {out / 'results.json'} ===")
            runs.append(kept)
            continue
        if len(seeds) > 1:
            log(f"\n=== seed {seed} ({out}) ===")
        res = one_seed(s, args, out, trl_gen, log)
        if res["trl_best"]:
            trl_gen = res["trl_best"]  # later seeds skip the paths that failed (they fail before any step)
        if args.json and len(seeds) == 1:
            print(json.dumps(res, indent=1, default=str))
        elif not args.json:
            print_tables(res)
            print(f"\nseed {seed}: {res['wall_s'] / 60:.1f} min; wrote {out / 'results.json'}")
        runs.append(res)
    if len(seeds) > 1:
        agg = over_seeds(runs, seeds)
        (Path(args.out) / "results.json").write_text(json.dumps(agg, indent=1, default=str))
        if args.json:
            print(json.dumps(agg, indent=1, default=str))
        else:
            print_over_seeds(agg)
            print(f"\nwrote {Path(args.out) / 'results.json'}")


def one_seed(s: Settings, args: argparse.Namespace, out: Path, trl_gen: str, log) -> dict[str, Any]:
    """TRL, then rlvr, then the held-out evaluation of both, for one seed; writes ``out/results.json``."""
    t0 = time.perf_counter()
    attempts: dict[str, str] = {}
    trls: dict[str, dict] = {}
    for item in trl_gen.split(","):
        for gen in (TRL_GEN_ORDER if item == "auto" else (item,)):
            if gen in attempts:
                break
            log(f"TRL GRPOTrainer, generation path {gen!r}: training {s.steps} steps ...")
            res, err = _subprocess(f"trl-{gen}", s, out / f"trl-{gen}", [], args.timeout)
            if res is not None:
                attempts[gen] = "trained"
                res["summary"] = summarize(res)
                trls[gen] = res
                break
            attempts[gen] = f"failed: {err.splitlines()[-1] if err else 'no result'}"
            log(f"  {gen} {attempts[gen]} (full log: {out / f'trl-{gen}' / 'log.txt'})")
    log(f"rlvr{' (' + ' '.join(args.rlvr_override) + ')' if args.rlvr_override else ''}: training {s.steps} steps ...")
    extra = [f"--rlvr-override={o}" for o in args.rlvr_override]
    rlvr, err = _subprocess("rlvr", s, out / "rlvr", extra, args.timeout)
    if rlvr is None:
        sys.exit(f"rlvr run failed: {err}")
    rlvr["summary"] = summarize(rlvr)
    trl = min(trls.values(), key=lambda r: r["summary"]["step_s"]) if trls else None  # TRL's fastest path

    evals = None
    if args.eval_prompts:
        log("held-out evaluation of base, TRL and rlvr checkpoints ...")
        ckpts = {"base": s.model, **{f"trl-{g}": r["checkpoint"] for g, r in trls.items()}, "rlvr": rlvr["checkpoint"]}
        evals, err = _subprocess("eval", s, out / "eval", ["--_checkpoints", json.dumps(ckpts)], args.timeout)
        if evals is None:
            log(f"  evaluation failed: {err}")

    cfg = rlvr_config(s, str(out / "rlvr"), args.rlvr_override)
    trl_args = trl_config(s, trl["generation"] if trl else "generate", str(out / "trainer-settings"))
    sys.stdout.flush()
    res = {
        "settings": [(n, a, b) for n, a, b in settings_table(s, trl_args, cfg)],
        "settings_note": "loss token-mean (TRL dapo), GRPO std-scaled advantages, float32, no KL",
        "threads": s.threads, "steps": s.steps, "eval_prompts": s.eval_prompts, "seed": s.seed,
        "model": s.model, "rlvr_override": list(args.rlvr_override), "trl_attempts": attempts, "trl": trls, "trl_best": trl["generation"] if trl else None, "rlvr": rlvr,
        "eval": evals,
        "speedup": (trl["summary"]["step_s"] / rlvr["summary"]["step_s"]) if trl else None,
        "wall_s": time.perf_counter() - t0,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    return res


def over_seeds(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Mean ± SE over seeds of held-out greedy pass@1 (base, TRL's path, rlvr), training accuracy of the
    last 5 steps and median step time; rlvr - TRL in standard errors of the difference."""
    sides: dict[str, dict[str, list[float]]] = {}
    for res in runs:
        for name, ev in (res.get("eval") or {}).items():
            label = "TRL " + name.removeprefix("trl-") if name.startswith("trl-") else name
            sides.setdefault(label, {}).setdefault("pass@1", []).append(ev["pass@1"])
        for label, side in [(f"TRL {g}", t) for g, t in res["trl"].items()] + [("rlvr", res["rlvr"])]:
            row = sides.setdefault(label, {})
            row.setdefault("accuracy_last5", []).append(side["summary"]["accuracy_last5"])
            row.setdefault("step_s", []).append(side["summary"]["step_s"])
    table = {label: {k: mean_se(v) for k, v in row.items()} | {"n": len(row.get("pass@1", row.get("step_s", [])))}
             for label, row in sides.items()}
    pairs = []
    for label in table:
        if label.startswith("TRL ") and "pass@1" in table[label] and "pass@1" in table.get("rlvr", {}):
            pairs.append({"a": "rlvr", "b": label, **compare(table["rlvr"]["pass@1"], table[label]["pass@1"])})
    return {"seeds": seeds, "steps": runs[0]["steps"], "threads": runs[0]["threads"],
            "eval_prompts": runs[0]["eval_prompts"], "table": table, "pairs": pairs,
            "per_seed": [{"seed": s, "pass@1": {k: v["pass@1"] for k, v in (r.get("eval") or {}).items()},
                          "trl_best": r["trl_best"]} for s, r in zip(seeds, runs)]}


def print_over_seeds(agg: dict[str, Any]) -> None:
    print(f"\nover seeds {agg['seeds']} ({agg['steps']} steps, {agg['threads']} torch threads, "
          f"{agg['eval_prompts']} held-out prompts, greedy), mean ± SE:")
    print(f"  {'':14s}{'held-out pass@1':>18s}{'train acc last 5':>20s}{'median step s':>18s}")
    for label, row in agg["table"].items():
        cells = [f"{row[k][0]:.3f} ± {row[k][1]:.3f}" if k in row else "-"
                 for k in ("pass@1", "accuracy_last5", "step_s")]
        print(f"  {label:14s}{cells[0]:>18s}{cells[1]:>20s}{cells[2]:>18s}")
    for pr in agg["pairs"]:
        verdict = "within noise" if pr["within_noise"] else "DIFFERENT"
        print(f"  {pr['a']} - {pr['b']}: {pr['diff']:+.3f} ({pr['z']:.1f} SE of the difference): {verdict}")

if __name__ == "__main__":
    main()
