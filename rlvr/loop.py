"""The RL training loop, top to bottom.

One step: take ``prompts_per_step`` prompts, sample ``n`` completions each with the rollout
engine, score them with the rubric, turn rewards into advantages, take the learner's
optimiser pass(es), push the new weights into the engine, log.

Simplifications of the textbook algorithm, on purpose:
* The ratio's "old" log-probs are the learner's own, recomputed on the first pass over the
  batch (identical weights to the engine's). The engine's log-probs are only compared with
  them (``logp_diff_*``), so an engine/trainer mismatch is measured, never trained on.
* No reference model and no KL unless ``algorithm.kl_coef > 0`` (R1-Zero recipes drop it).
* Evaluation runs on the same engine as rollouts, with greedy decoding for pass@1.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from rlvr.algorithms import ADVANTAGES, AdvantageInputs
from rlvr.config import TrainConfig, dump_config
from rlvr.evaluate import evaluate
from rlvr.learner import Learner, RLBatch
from rlvr.logging import MetricsLogger, plot_reward_accuracy
from rlvr.tasks import load_task
from rollouts import Group, SamplingConfig, make_engine
from verifiers import Rubric, score_batch
from verifiers import get as get_verifier


def check_model_dir(path: str) -> None:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"model: no such directory {path!r} (run `rlvr pretrain` first?)")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"model: {path!r} is not a Hugging Face model directory (no config.json)")


class PromptSampler:
    """Shuffled epochs over the training rows; its position is plain state (for resume)."""

    def __init__(self, n_rows: int, seed: int):
        self.n_rows, self.seed, self.epoch, self.pos = n_rows, seed, 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(self.n_rows))
        random.Random(self.seed * 1000 + self.epoch).shuffle(order)
        return order

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos == self.n_rows:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            take = min(k - len(out), self.n_rows - self.pos)
            out += self._order[self.pos : self.pos + take]
            self.pos += take
        return out


def build_batch(groups: list[Group], advantages_fn, pad_id: int, rewards: torch.Tensor) -> tuple[RLBatch, torch.Tensor]:
    """Pack groups into right-padded tensors in target alignment (see rlvr.learner)."""
    seqs, spans, engine_lp = [], [], []
    for group in groups:
        for comp in group.completions:
            seqs.append(group.prompt_ids + comp.token_ids)
            spans.append((len(group.prompt_ids) - 1, len(comp.token_ids)))
            engine_lp.append(comp.logprobs)
    B, L = len(seqs), max(map(len, seqs))
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    mask = torch.zeros((B, L - 1))
    elp = torch.zeros((B, L - 1))
    for i, (seq, (start, n), lp) in enumerate(zip(seqs, spans, engine_lp)):
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        mask[i, start : start + n] = 1.0
        elp[i, start : start + n] = torch.tensor(lp)
    group_ids = torch.tensor([g for g, group in enumerate(groups) for _ in group.completions])
    adv = advantages_fn(AdvantageInputs(rewards, group_ids, mask))  # [B, T]
    return RLBatch(ids, attn, mask, adv, elp), adv


def rollout_metrics(groups: list[Group], scores, rewards: torch.Tensor) -> dict[str, float]:
    comps = [c for g in groups for c in g.completions]
    lengths = [len(c.token_ids) for c in comps]
    per_group = rewards.view(len(groups), -1)
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "accuracy": sum(bool(s.correct) for s in scores) / len(scores),
        "format_rate": sum(s.metrics.get("r1_format", 0.0) for s in scores) / len(scores),
        "response_len_mean": sum(lengths) / len(lengths),
        "response_len_max": float(max(lengths)),
        "truncated_frac": sum(c.finish_reason == "length" for c in comps) / len(comps),
        "solved_none_frac": float((per_group.max(1).values == per_group.min(1).values).float().mean()),
        "verifier_errors": float(sum(s.error is not None for s in scores)),
    }


def train(cfg: TrainConfig, progress: bool | None = None) -> dict[str, Any]:
    """Run RL training as configured; returns {"before": eval, "after": eval, ...}."""
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_dir(cfg.model)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)

    data = load_task(cfg.task)
    train_rows, test_rows = list(data["train"]), list(data["test"])[: cfg.eval.num_prompts]
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    policy = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
    ref = None
    if cfg.algorithm.loss_agg == "seq-mean-token-sum-norm" and cfg.algorithm.loss_agg_norm is None:
        cfg.algorithm.loss_agg_norm = float(cfg.sampling.max_tokens)  # Dr.GRPO: a constant, not the batch width
    if cfg.algorithm.needs_reference:
        ref = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32).eval().requires_grad_(False)
    engine = make_engine(cfg.engine.kind, cfg.model, **engine_kwargs(cfg))
    rubric = Rubric([(get_verifier(t.verifier, **t.kwargs), t.weight) for t in cfg.rewards])
    if cfg.algorithm.advantage not in ADVANTAGES:
        raise KeyError(f"algorithm.advantage: unknown {cfg.algorithm.advantage!r}; known: {sorted(ADVANTAGES)}")
    advantage_fn = ADVANTAGES[cfg.algorithm.advantage]
    learner = Learner(policy, cfg.algorithm, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                      betas=cfg.optim.betas, grad_clip=cfg.optim.grad_clip, warmup_steps=cfg.optim.warmup_steps,
                      micro_batch_size=tc.micro_batch_size, updates_per_batch=tc.updates_per_batch, ref_model=ref)
    logger = MetricsLogger(run_dir, cfg.logging.tensorboard)
    sampler = PromptSampler(len(train_rows), tc.seed)
    ev = cfg.eval

    def run_eval(step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        m = evaluate(engine, test_rows, k=ev.k, temperature=ev.temperature, max_tokens=ev.max_tokens, seed=tc.seed + 7)
        m["eval_s"] = time.perf_counter() - t0
        logger.log(step, m, kind="eval")
        return m

    before = run_eval(0)
    show = cfg.logging.progress if progress is None else progress
    bar = tqdm(range(1, tc.steps + 1), desc="rl", disable=not show, mininterval=1)
    evals = {0: before}
    for step in bar:
        t0 = time.perf_counter()
        rows = [train_rows[i] for i in sampler.next(tc.prompts_per_step)]
        sampling = SamplingConfig(n=cfg.sampling.n, temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                                  max_tokens=cfg.sampling.max_tokens, seed=tc.seed * 100_003 + step)
        groups = engine.generate([r["prompt"] for r in rows], sampling)
        t1 = time.perf_counter()
        texts = [c.text for g in groups for c in g.completions]
        tasks = [row for row, g in zip(rows, groups) for _ in g.completions]
        scores = score_batch(rubric, texts, tasks)
        rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32)
        t2 = time.perf_counter()
        batch, adv = build_batch(groups, lambda inp: advantage_fn(inp, cfg.algorithm), tokenizer.pad_token_id, rewards)
        metrics = learner.step(batch)
        t3 = time.perf_counter()
        engine.load_weights(policy.named_parameters())
        t4 = time.perf_counter()
        metrics.update(rollout_metrics(groups, scores, rewards))
        step_s = t4 - t0
        metrics.update(generate_s=t1 - t0, score_s=t2 - t1, learn_s=t3 - t2, sync_s=t4 - t3, step_s=step_s,
                       generate_share=(t1 - t0) / step_s)
        logger.log(step, metrics)
        bar.set_postfix(reward=f"{metrics['reward_mean']:.2f}", acc=f"{metrics['accuracy']:.2f}",
                        len=f"{metrics['response_len_mean']:.0f}")
        if ev.every and step % ev.every == 0 and step != tc.steps:
            evals[step] = run_eval(step)
    after = run_eval(tc.steps)
    evals[tc.steps] = after

    final = run_dir / "final"
    policy.save_pretrained(final, safe_serialization=True)
    tokenizer.save_pretrained(final)
    plot = plot_reward_accuracy(run_dir / "metrics.jsonl", run_dir / "reward_accuracy.png")
    logger.close()
    engine.close()
    summary = {"before": before, "after": after, "checkpoint": str(final), "plot": str(plot)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def engine_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    e = cfg.engine
    if e.kind == "hf":
        return {"dtype": e.dtype}
    return {"dtype": e.dtype, "kv_cache_gib": e.kv_cache_gib, "gpu_memory_utilization": e.gpu_memory_utilization,
            "enforce_eager": e.enforce_eager, "seed": cfg.train.seed}
