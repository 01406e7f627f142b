"""The RL training loop, top to bottom.

One step: take ``prompts_per_step`` prompts, sample ``n`` completions each with the rollout
engine, score them with the rubric, pack them into tensors (shaping rewards and masks as the
algorithm asks), turn rewards into advantages, take the learner's optimiser pass(es) (and the
critic's, for PPO), push the new weights into the engine, log.

Which pieces run is read from ``cfg.algorithm`` (see docs/algorithms.md); every piece that is
off costs nothing: no reference model, critic or extra forward pass unless asked for.

Simplifications of the textbook algorithms, on purpose:
* The ratio's "old" log-probs are the learner's own, recomputed on the first pass over the
  batch (identical weights to the engine's). The engine's log-probs are only compared with
  them (``logp_diff_*``), so an engine/trainer mismatch is measured, never trained on. KL in
  the reward likewise uses the learner's log-probs (one extra no-grad forward of the policy
  and the reference, only then).
* No reference model and no KL unless ``algorithm.kl_coef > 0`` (R1-Zero recipes drop it).
* DAPO dynamic sampling draws only as many extra prompts as the batch seems to need (not whole
  batches); when ``max_sampling_rounds`` runs out, dropped groups top the batch up (see
  ``sample_groups``).
  Rollout metrics (reward, accuracy, length) cover every group drawn in the step.
* PPO's critic updates after the policy, on the same batch and micro-batches; it is not
  saved with the checkpoint.
* Evaluation runs on the same engine as rollouts, with greedy decoding for pass@1.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlvr.algorithms import (
    ADVANTAGES,
    AdvantageInputs,
    AlgorithmConfig,
    dynamic_sampling_filter,
    kl_penalty,
    kl_reward_penalty,
    last_token_rewards,
    masked_mean,
    overlong_mask,
    soft_overlong_penalty,
)
from rlvr.config import TrainConfig, dump_config
from rlvr.critic import Critic
from rlvr.evaluate import evaluate
from rlvr.learner import Learner, RLBatch
from rlvr.logging import MetricsLogger, plot_reward_accuracy
from rlvr.tasks import load_task
from rollouts import Group, SamplingConfig, make_engine
from verifiers import Rubric, Score, score_batch
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


@dataclass
class ScoredGroup:
    """One prompt's group of completions with the rubric's score for each."""

    row: dict[str, Any]
    group: Group
    scores: list[Score]

    @property
    def rewards(self) -> torch.Tensor:  # [n] the verifier rewards, before any shaping
        return torch.tensor([s.reward for s in self.scores], dtype=torch.float32)


def sample_groups(draw: Callable[[int, int], list[ScoredGroup]], want: int, dynamic: bool,
                  max_rounds: int) -> tuple[list[ScoredGroup], list[ScoredGroup], dict[str, float]]:
    """The step's groups: ``(batch, drawn, stats)``; ``draw(round, k)`` generates and scores ``k`` prompts.

    Without ``dynamic`` sampling this is one round of ``want`` prompts, used as is. With it
    (DAPO), groups whose rewards are all equal (no signal for a group-relative advantage) are
    dropped, and further rounds draw the missing number of prompts, scaled up by the share of
    informative groups seen so far, until ``want`` are kept or ``max_rounds`` rounds ran; the
    excess is trimmed. If the rounds run out, dropped groups top the batch up to ``want`` (they
    carry no group-relative advantage), so a step never trains on an empty batch.
    """
    if not dynamic:
        drawn = draw(0, want)
        return drawn, drawn, {}
    kept, dropped, drawn, rounds = [], [], [], 0
    while len(kept) < want and rounds < max_rounds:
        informative_frac = len(kept) / len(drawn) if drawn else 1.0
        k = want if not drawn else min(want, math.ceil((want - len(kept)) / max(informative_frac, 1 / want)))
        new = draw(rounds, k)
        rounds += 1
        rewards = torch.cat([sg.rewards for sg in new])  # [B]
        sizes = torch.tensor([len(sg.scores) for sg in new])
        keep = dynamic_sampling_filter(rewards, torch.repeat_interleave(torch.arange(len(new)), sizes))
        first = torch.cumsum(sizes, 0) - sizes  # index of each group's first member
        for sg, informative in zip(new, keep[first].tolist()):
            (kept if informative else dropped).append(sg)
        drawn += new
    padded = max(0, want - len(kept))
    stats = {"sampling_rounds": float(rounds), "groups_drawn": float(len(drawn)), "groups_dropped": float(len(dropped)),
             "groups_padded": float(padded), "informative_frac": len(kept) / len(drawn)}
    return kept[:want] + dropped[:padded], drawn, stats


def build_batch(scored: list[ScoredGroup], pad_id: int, algo: AlgorithmConfig,
                max_tokens: int) -> tuple[RLBatch, AdvantageInputs]:
    """Pack groups into right-padded tensors in target alignment (see rlvr.learner), with
    DAPO's overlong shaping when configured; advantages are left at 0 for the caller."""
    seqs, spans, engine_lp = [], [], []
    for sg in scored:
        for comp in sg.group.completions:
            seqs.append(sg.group.prompt_ids + comp.token_ids)
            spans.append((len(sg.group.prompt_ids) - 1, len(comp.token_ids)))
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
    group_ids = torch.tensor([g for g, sg in enumerate(scored) for _ in sg.group.completions])
    rewards = torch.cat([sg.rewards for sg in scored])  # [B]
    comps = [c for sg in scored for c in sg.group.completions]
    if algo.overlong_buffer_frac > 0:  # DAPO soft overlong punishment, after the verifier's reward
        lengths = torch.tensor([len(c.token_ids) for c in comps])
        rewards = rewards + soft_overlong_penalty(lengths, max_tokens, round(algo.overlong_buffer_frac * max_tokens),
                                                  algo.overlong_penalty_factor)
    if algo.overlong_filter:  # DAPO overlong filtering: truncated completions carry no loss
        mask = mask * overlong_mask([c.finish_reason for c in comps])[:, None]
    return RLBatch(ids, attn, mask, torch.zeros_like(mask), elp), AdvantageInputs(rewards, group_ids, mask)


def kl_token_rewards(learner: Learner, batch: RLBatch, inp: AdvantageInputs,
                     algo: AlgorithmConfig) -> tuple[torch.Tensor, float]:
    """Token rewards [B, T] with ``reward_kl_coef * KL_t`` subtracted, and the mean KL_t."""
    mask = inp.mask
    old_logp, ref_logp = learner.policy_and_reference_logp(batch)  # [B, T] each, no gradient
    token_rewards = kl_reward_penalty(last_token_rewards(inp.rewards, mask), old_logp, ref_logp, mask,
                                      algo.reward_kl_coef, algo.kl_kind)
    return token_rewards, float(masked_mean(kl_penalty(old_logp, ref_logp, algo.kl_kind), mask))


def rollout_metrics(scored: list[ScoredGroup]) -> dict[str, float]:
    comps = [c for sg in scored for c in sg.group.completions]
    scores = [s for sg in scored for s in sg.scores]
    rewards = torch.cat([sg.rewards for sg in scored])
    lengths = [len(c.token_ids) for c in comps]
    per_group = rewards.view(len(scored), -1)
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
    algo = cfg.algorithm
    if algo.loss_agg == "seq-mean-token-sum-norm" and algo.loss_agg_norm is None:
        algo.loss_agg_norm = float(cfg.sampling.max_tokens)  # Dr.GRPO: a constant, not the batch width
    ref = None
    if algo.needs_reference:  # KL to a frozen copy of the starting policy
        ref = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32).eval().requires_grad_(False)
    engine = make_engine(cfg.engine.kind, cfg.model, **engine_kwargs(cfg))
    rubric = Rubric([(get_verifier(t.verifier, **t.kwargs), t.weight) for t in cfg.rewards])
    if algo.advantage not in ADVANTAGES:
        raise KeyError(f"algorithm.advantage: unknown {algo.advantage!r}; known: {sorted(ADVANTAGES)}")
    advantage_fn = ADVANTAGES[algo.advantage]
    optim_kw = dict(weight_decay=cfg.optim.weight_decay, betas=cfg.optim.betas, grad_clip=cfg.optim.grad_clip,
                    micro_batch_size=tc.micro_batch_size, updates_per_batch=tc.updates_per_batch)
    learner = Learner(policy, algo, lr=cfg.optim.lr, warmup_steps=cfg.optim.warmup_steps, ref_model=ref, **optim_kw)
    critic = Critic.for_policy(policy, algo, **optim_kw) if algo.needs_critic else None
    logger = MetricsLogger(run_dir, cfg.logging.tensorboard)
    sampler = PromptSampler(len(train_rows), tc.seed)
    ev = cfg.eval
    timer: dict[str, float] = {}

    def draw(step: int, rnd: int, k: int) -> list[ScoredGroup]:
        """One generation round: sample ``n`` completions for ``k`` fresh prompts and score them."""
        t0 = time.perf_counter()
        rows = [train_rows[i] for i in sampler.next(k)]
        sampling = SamplingConfig(n=cfg.sampling.n, temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                                  max_tokens=cfg.sampling.max_tokens, seed=tc.seed * 100_003 + step + rnd * 1_000_003)
        groups = engine.generate([r["prompt"] for r in rows], sampling)
        t1 = time.perf_counter()
        texts = [c.text for g in groups for c in g.completions]
        tasks = [row for row, g in zip(rows, groups) for _ in g.completions]
        scores = score_batch(rubric, texts, tasks)
        timer["generate_s"] = timer.get("generate_s", 0.0) + t1 - t0
        timer["score_s"] = timer.get("score_s", 0.0) + time.perf_counter() - t1
        ends = list(itertools.accumulate(len(g.completions) for g in groups))
        return [ScoredGroup(row, g, scores[end - len(g.completions) : end]) for row, g, end in zip(rows, groups, ends)]

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
        timer.clear()
        scored, drawn, metrics = sample_groups(lambda rnd, k: draw(step, rnd, k), tc.prompts_per_step,
                                               algo.dynamic_sampling, algo.max_sampling_rounds)
        t1 = time.perf_counter()
        batch, adv_in = build_batch(scored, tokenizer.pad_token_id, algo, cfg.sampling.max_tokens)
        if algo.reward_kl_coef > 0:  # KL in the reward (PPO, REINFORCE++): per-token rewards before advantages
            adv_in.token_rewards, metrics["kl"] = kl_token_rewards(learner, batch, adv_in, algo)
        if critic is not None:  # PPO: the sampling-time values V(s_t) feed GAE and value clipping
            adv_in.values = critic.values(batch)
        batch.advantages = advantage_fn(adv_in, algo)  # [B, T]
        metrics.update(learner.step(batch))
        check_logprob_parity(metrics, cfg)
        if critic is not None:
            metrics.update(critic.step(batch, adv_in))
        t3 = time.perf_counter()
        engine.load_weights(policy.named_parameters())
        t4 = time.perf_counter()
        metrics.update(rollout_metrics(drawn))
        step_s = t4 - t0
        metrics.update(**timer, learn_s=t3 - t1, sync_s=t4 - t3, step_s=step_s,
                       generate_share=timer["generate_s"] / step_s)
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


class LogprobParityError(RuntimeError):
    """The rollout engine's log-probs disagree with the learner's: training would be off-policy."""


def check_logprob_parity(metrics: dict[str, float], cfg: TrainConfig) -> None:
    worst, bound = metrics["logp_diff_max"], cfg.engine.max_logprob_diff
    if worst > bound:
        raise LogprobParityError(
            f"engine/learner log-prob mismatch: max |delta| = {worst:.3g} nats > engine.max_logprob_diff = {bound} "
            f"(engine.kind={cfg.engine.kind}, engine.dtype={cfg.engine.dtype}, learner float32, "
            f"sampling.temperature={cfg.sampling.temperature}, sampling.top_p={cfg.sampling.top_p}). "
            + ("A bfloat16 engine samples from different numbers than the float32 learner: use engine.dtype=float32, "
               "or keep bfloat16 with algorithm.is_cap set and a larger engine.max_logprob_diff."
               if cfg.engine.dtype != "float32" else
               "Both sides run float32, so the weights differ: check that the weight sync covers every parameter.")
        )


def engine_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    e = cfg.engine
    if e.kind == "hf":
        return {"dtype": e.dtype}
    return {"dtype": e.dtype, "kv_cache_gib": e.kv_cache_gib, "gpu_memory_utilization": e.gpu_memory_utilization,
            "enforce_eager": e.enforce_eager, "seed": cfg.train.seed, "threads": cfg.train.threads}
