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
* Each group is scored the moment the engine finishes it, on ``rewards.workers`` threads
  (rlvr.scoring), so only the scoring left when generation ends is on the step's path.
* Evaluation runs on the same engine as rollouts and is scored by the run's own rubric, with
  greedy decoding for pass@1.
* Prompts are tokenized once when the task loads (rlvr.tasks.prepare_rows); the engine gets
  the ids, so the learner trains on exactly the prompt tokens the engine saw.
* A run whose rewards are all 0 for ``alarms.zero_reward_steps`` steps, or whose verifier
  fails too often, stops itself (rlvr.alarms) instead of training on nothing.
* ``train.async``: the step's rollouts come from a pipeline that runs one step ahead
  (rlvr.pipeline); a stale batch's log-prob gap to the learner is its policy's drift, so the
  parity gate only judges fresh batches, and truncated IS (``algorithm.is_cap``) reweights.
* Checkpoints (rlvr.checkpoint) hold the full state, including rollouts already drawn ahead,
  so ``--resume`` continues bit-identically on CPU.
* ``cluster:`` changes where the work runs, not what it is (docs/distributed.md): rollouts come
  from the engine in this process or from Ray actors (rlvr.rollout_backends), with every row and
  seed chosen here; the learner steps on one process or on M data-parallel ranks
  (rlvr.cluster.learner_group), rank 0 being this process, so the checkpoint has one writer.
  The policy's weights, log-probs and state are read through that group, because under FSDP
  (``cluster.learner_sharding: fsdp``) each rank holds only a shard of them.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from rlvr import lora, parity, preflight
from rlvr.alarms import Alarms
from rlvr.algorithms import (
    ADVANTAGES,
    AdvantageInputs,
    AlgorithmConfig,
    dynamic_sampling_filter,
    kl_penalty,
    kl_reward_penalty,
    last_token_rewards,
    masked_mean,
)
from rlvr.archs import read_config as read_model_config
from rlvr.checkpoint import (
    checkpoints_dir,
    config_changes,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rlvr.cluster.learner_group import LearnerGroup, LearnerRankError
from rlvr.cluster.runtime import ClusterError, connect, disconnect
from rlvr.components import build_policy_side, build_rubric, load_rows, thread_split
from rlvr.config import ConfigError, TrainConfig, config_yaml
from rlvr.learner import RLBatch
from rlvr.logging import MetricsLogger, SampleLogger, plot_reward_accuracy
from rlvr.models import resolve_model
from rlvr.pipeline import RolloutPipeline, ScoredGroup, StepRollouts
from rlvr.precision import check_learner_dtype
from rlvr.rollout import make_rollouts
from rlvr.trackers import check_trackers, open_trackers
from rlvr.train.batch import build_batch
from rollouts import SamplingConfig
from verifiers import get as get_verifier


class PromptSampler:
    """Shuffled epochs over the training rows; its position is plain state (for resume)."""

    def __init__(self, n_rows: int, seed: int):
        if n_rows < 1:
            raise ValueError("the training split is empty: nothing to sample prompts from")
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

    def state(self) -> dict[str, int]:
        return {"n_rows": self.n_rows, "seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict[str, int]) -> None:
        if (state["n_rows"], state["seed"]) != (self.n_rows, self.seed):
            raise ValueError(f"resume: the checkpoint's prompt sampler saw {state['n_rows']} rows with seed "
                             f"{state['seed']}, this run has {self.n_rows} rows with seed {self.seed}")
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffle()


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


def kl_token_rewards(learners: LearnerGroup, batch: RLBatch, inp: AdvantageInputs,
                     algo: AlgorithmConfig) -> tuple[torch.Tensor, float]:
    """Token rewards [B, T] with ``reward_kl_coef * KL_t`` subtracted, and the mean KL_t."""
    mask = inp.mask
    old_logp, ref_logp = learners.policy_and_reference_logp(batch)  # [B, T] each, no gradient
    token_rewards = kl_reward_penalty(last_token_rewards(inp.rewards, mask), old_logp, ref_logp, mask,
                                      algo.reward_kl_coef, algo.kl_kind)
    return token_rewards, float(masked_mean(kl_penalty(old_logp, ref_logp, algo.kl_kind), mask))


def rollout_metrics(scored: list[ScoredGroup]) -> dict[str, float]:
    """Rollout statistics of every group drawn; the format rate is the strict R1 check whatever the rewards are."""
    fmt = get_verifier("r1_format")
    comps = [c for sg in scored for c in sg.group.completions]
    scores = [s for sg in scored for s in sg.scores]
    rewards = torch.cat([sg.rewards for sg in scored])
    lengths = [len(c.token_ids) for c in comps]
    per_group = rewards.view(len(scored), -1)
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "accuracy": sum(bool(s.correct) for s in scores) / len(scores),
        "format_rate": sum(fmt.score(c.text, {}).reward for c in comps) / len(comps),
        "response_len_mean": sum(lengths) / len(lengths),
        "response_len_max": float(max(lengths)),
        "truncated_frac": sum(c.finish_reason == "length" for c in comps) / len(comps),
        "solved_none_frac": float((per_group.max(1).values == per_group.min(1).values).float().mean()),
        "verifier_errors": float(sum(s.error is not None for s in scores)),
        "verifier_error_rate": sum(s.error is not None for s in scores) / len(scores),
    }


def train(cfg: TrainConfig, progress: bool | None = None, resume: bool = False,
          overwrite: bool = False) -> dict[str, Any]:
    """Run RL training as configured; returns {"before": eval, "after": eval, ...}.

    ``resume``: continue from the newest checkpoint in ``cfg.run_dir`` (see rlvr.checkpoint).
    ``overwrite``: start afresh in a ``run_dir`` that holds an earlier run's checkpoints
    (otherwise that is an error, so a forgotten ``--resume`` never deletes a run).
    Everything that can be checked is checked before anything is written or any model loads.
    """
    from tqdm import tqdm
    from transformers import AutoTokenizer

    tc, algo, ev = cfg.train, cfg.algorithm, cfg.eval
    model_dir = resolve_model(cfg.model)
    rubric = build_rubric(cfg)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = load_rows(cfg, tokenizer, rubric, model_dir)
    check_before_loading(cfg, model_dir, data.train)
    cluster = connect(cfg.cluster) if cfg.cluster.uses_ray else None  # Ray: joined and checked before any model loads
    train_rows, test_rows = data.train, data.test
    run_dir = Path(cfg.run_dir)
    cfg_yaml = config_yaml(cfg)
    ckpt = find_resume_point(run_dir, cfg_yaml, resume, overwrite, tc.steps)
    prepare_run_dir(run_dir, cfg_yaml, ckpt)  # the first write

    staleness = tc.max_staleness if tc.async_ else 0
    learner_threads, engine_threads = thread_split(cfg)
    if learner_threads:
        torch.set_num_threads(learner_threads)
    random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the learner's; the engine places itself
    # the policy (LoRA-wrapped if asked), the reference for a KL, the learner, PPO's critic
    side = build_policy_side(cfg, model_dir, device)
    critic = side.critic
    # learner_ranks > 1: data-parallel over Ray actors; the policy is then read and written through the group
    learners = LearnerGroup(cfg, model_dir, side.learner, critic)
    rollouts = make_rollouts(cfg, model_dir, rubric, engine_threads, cluster)  # this process, or Ray actors
    if cluster is not None:  # which process is which (for operators, and the fault tests)
        (run_dir / "cluster.json").write_text(json.dumps({"rollout_workers": getattr(rollouts, "pids", []),
                                                          "learner_ranks": learners.pids()}))
    advantage_fn = ADVANTAGES[algo.advantage]
    sampler = PromptSampler(len(train_rows), tc.seed)
    alarms = Alarms(cfg.alarms, [v.name for v, _ in rubric.parts])

    def draw_step(step: int) -> StepRollouts:
        """The rollouts of one step (every dynamic-sampling round), generated and scored as groups finish."""
        timings = {"generate_s": 0.0, "score_s": 0.0, "score_wait_s": 0.0, "score_hidden_s": 0.0}

        def draw(rnd: int, k: int) -> list[ScoredGroup]:
            rows = [train_rows[i] for i in sampler.next(k)]
            sampling = SamplingConfig(n=cfg.sampling.n, temperature=cfg.sampling.temperature,
                                      top_p=cfg.sampling.top_p, max_tokens=cfg.sampling.max_tokens,
                                      seed=tc.seed * 100_003 + step + rnd * 1_000_003)
            groups, scores, t = rollouts.generate_and_score(rows, sampling)
            for key in timings:
                timings[key] += t[key]
            return [ScoredGroup(row, g, sc) for row, g, sc in zip(rows, groups, scores)]

        batch, drawn, stats = sample_groups(draw, tc.prompts_per_step, algo.dynamic_sampling, algo.max_sampling_rounds)
        return StepRollouts(step, batch, drawn, stats, timings)

    pipe = RolloutPipeline(draw_step, staleness, worker_threads=engine_threads if cfg.engine.computes_on_caller_thread else 0)
    show = cfg.logging.progress if progress is None else progress
    try:
        trackers = open_trackers(cfg.logging.report_to, run_dir, yaml.safe_load(cfg_yaml), cfg.logging.project,
                                 resume=ckpt is not None)
        logger = MetricsLogger(run_dir, cfg.logging.tensorboard, purge_step=None if ckpt is None else ckpt.step + 1,
                               trackers=trackers)
        samples = SampleLogger(run_dir, cfg.logging.samples_every, cfg.logging.samples_per_step, logger)

        def run_eval(step: int) -> dict[str, float]:
            t0 = time.perf_counter()
            m = pipe.call(lambda: rollouts.evaluate(test_rows, k=ev.k, temperature=ev.temperature,
                                                    max_tokens=ev.max_tokens, seed=tc.seed + 7,
                                                    progress=show and cluster is None))
            m["eval_s"] = time.perf_counter() - t0
            logger.log(step, m, kind="eval")
            return m

        def save(step: int) -> None:
            # model (LoRA: the adapter), optimisers, critic, reference: rank 0's, or gathered from FSDP shards
            tensors = {**learners.checkpoint_tensors(), "rng": rng_state()}
            pending = pipe.pending()  # async: rollouts already drawn for the next steps travel along
            state = {"sampler": sampler.state(), "evals": {str(k): v for k, v in evals.items()},
                     "pending": [r.to_json() for r in pending]}
            save_checkpoint(run_dir, step, tensors=tensors, state=state, config_yaml=cfg_yaml, keep=cfg.checkpoint.keep)

        if ckpt is not None:
            start, evals = ckpt.step, restore_state(ckpt, learners, sampler, pipe)
            weights = learners.policy_weights()
            pipe.call(lambda: rollouts.load_weights(weights))
            set_rng_state(ckpt.tensors["rng"])
        learners.broadcast_state()  # every learner rank starts from rank 0's state (no-op with one rank)
        # a few tokens against the learner before anything is evaluated or trained (rlvr.parity)
        probe = parity.probe(lambda rows, s: pipe.call(lambda: rollouts.generate_and_score(rows, s)),
                             learners.policy_logp, train_rows, cfg, tokenizer.pad_token_id)
        print(f"parity probe: engine and learner log-probs agree within {probe['probe_logp_diff_max']:.2g} nats")
        if ckpt is None:
            start, evals = 0, {0: run_eval(0)}
        for s in range(start + 1, min(start + staleness, tc.steps) + 1):  # async: fill the pipeline
            if not pipe.has(s):  # (a resumed run brings the rollouts it had drawn)
                pipe.submit_draw(s, version=start)
        synced_version = start  # learner updates contained in the weights the engine samples with
        last_sync: Future | None = None
        bar = tqdm(range(start + 1, tc.steps + 1), desc="rl", disable=not show, mininterval=1,
                   initial=start, total=tc.steps)
        for step in bar:
            t0 = time.perf_counter()
            if step + staleness <= tc.steps:
                pipe.submit_draw(step + staleness, version=synced_version)
            ro = pipe.take(step)  # staleness 0: drawn just now; else waits only if generation is behind
            if cfg.engine.sleeps:  # the engine gives its GPU memory back while the learner steps
                pipe.call(rollouts.sleep)
            t1 = time.perf_counter()
            metrics = dict(ro.stats, **ro.timings, staleness=float(step - 1 - ro.version), wait_rollouts_s=t1 - t0)
            batch, adv_in = build_batch(ro.batch, tokenizer.pad_token_id, algo, cfg.sampling.max_tokens)
            if algo.reward_kl_coef > 0:  # KL in the reward (PPO, REINFORCE++): per-token rewards before advantages
                adv_in.token_rewards, metrics["kl"] = kl_token_rewards(learners, batch, adv_in, algo)
            if critic is not None:  # PPO: the sampling-time values V(s_t) feed GAE and value clipping
                adv_in.values = critic.values(batch)
            batch.advantages = advantage_fn(adv_in, algo)  # [B, T]
            metrics.update(learners.step(batch))
            if ro.version == step - 1:  # a stale batch differs by the policy's own update, not by the engine
                parity.check_step(metrics, cfg)
            if critic is not None:
                metrics.update(learners.critic_step(batch, adv_in))
            t2 = time.perf_counter()
            if last_sync is not None:
                metrics.update(last_sync.result())  # async: the previous step's load, done by now
            # async: the learner moves on while the engine loads, so it gets a copy of the weights
            # LoRA: W + scale * B @ A into new tensors, the adapter untouched (rlvr.lora)
            weights = [(n, p.detach().clone() if staleness else p) for n, p in learners.policy_weights()]
            last_sync = pipe.submit(lambda w=weights: rollouts.load_weights(w))
            synced_version = step
            if not staleness:
                metrics.update(last_sync.result())
                last_sync = None
            t3 = time.perf_counter()
            metrics.update(rollout_metrics(ro.drawn), **rollouts.stats(), learn_s=t2 - t1, step_s=t3 - t0,
                           engine_idle_s=max(0.0, (t3 - t0) - pipe.busy_s(t0, t3)))
            metrics["generate_share"] = metrics["generate_s"] / metrics["step_s"]
            metrics["score_hidden_share"] = metrics["score_hidden_s"] / metrics["score_s"] if metrics["score_s"] else 1.0
            logger.log(step, metrics)
            samples.log(step, ro.drawn)
            alarms.check(step, ro.drawn, metrics)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.2f}", acc=f"{metrics['accuracy']:.2f}",
                            len=f"{metrics['response_len_mean']:.0f}")
            if step == tc.steps or (ev.every and step % ev.every == 0):
                evals[step] = run_eval(step)
            if step == tc.steps or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
                save(step)
        after = evals[tc.steps]  # the last step always evaluates (also in a resumed, finished run)
        final = run_dir / "final"
        learners.save_final(final, run_dir / "adapter")  # a plain HF model (LoRA merged; the adapter alone too)
    except (ClusterError, LearnerRankError) as exc:  # say where the run can continue from
        last = latest_checkpoint(run_dir)
        raise ClusterError(f"{exc} Last checkpoint: {last if last else 'none yet'}.") from exc
    finally:
        pipe.close()
        rollouts.close()  # also when a step raised: an in-process vLLM engine holds its KV cache
        learners.close()
        disconnect(cluster)
    tokenizer.save_pretrained(final)
    plot = plot_reward_accuracy(run_dir / "metrics.jsonl", run_dir / "reward_accuracy.png", title=run_dir.name)
    logger.close()
    summary = {"before": evals[0], "after": after, "checkpoint": str(final), "plot": str(plot),
               "data": data.notes}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


@dataclass
class Resumed:
    step: int
    path: Path
    tensors: dict[str, Any]
    state: dict[str, Any]


def find_resume_point(run_dir: Path, cfg_yaml: str, resume: bool, overwrite: bool, steps: int) -> Resumed | None:
    """The checkpoint a resumed run continues from (None for a fresh run), after every check
    that can refuse the command; reads only, so a refused command leaves the run as it was."""
    if not resume:
        if list_checkpoints(run_dir) and not overwrite:
            raise FileExistsError(
                f"run_dir {str(run_dir)!r} holds checkpoints of an earlier run: continue it with "
                f"`rlvr train --resume {run_dir}`, start over with --overwrite, or choose another run_dir")
        return None
    path = latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"resume: no checkpoint in {str(checkpoints_dir(run_dir))!r}")
    changed = config_changes((path / "config.yaml").read_text(), yaml.safe_load(cfg_yaml))
    if changed:
        raise ConfigError(f"resume: the config of {str(run_dir)!r} changed in fields that matter "
                          "(start a new run_dir instead):\n  " + "\n  ".join(changed))
    tensors, state = load_checkpoint(path)
    if state["step"] > steps:
        raise ConfigError(f"resume: train.steps={steps} is below the checkpoint's step {state['step']} ({path})")
    return Resumed(state["step"], path, tensors, state)


def prepare_run_dir(run_dir: Path, cfg_yaml: str, ckpt: Resumed | None) -> None:
    """Fresh run: an empty metrics file and no old checkpoints. Resume: metrics past the
    checkpoint are cut and a killed write's leftovers removed. Writes ``config.yaml``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = run_dir / "metrics.jsonl"
    if ckpt is None:
        metrics.unlink(missing_ok=True)
        (run_dir / "samples.jsonl").unlink(missing_ok=True)
        shutil.rmtree(checkpoints_dir(run_dir), ignore_errors=True)
    else:
        for stale in checkpoints_dir(run_dir).glob(".tmp-*"):  # a write cut short by a kill
            shutil.rmtree(stale, ignore_errors=True)
        if metrics.exists():  # records past the checkpoint are redone; a line cut by a kill is dropped
            keep = []
            for line in metrics.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= ckpt.step:
                        keep.append(line + "\n")
                except (json.JSONDecodeError, KeyError):
                    continue
            metrics.write_text("".join(keep))
    (run_dir / "config.yaml").write_text(cfg_yaml)


def restore_state(ckpt: Resumed, learners: LearnerGroup, sampler: PromptSampler,
                  pipe: RolloutPipeline) -> dict[int, dict[str, float]]:
    """Load a checkpoint's model, optimiser, sampler and pending rollouts; returns the evaluations so far."""
    learners.load_checkpoint_tensors(ckpt.tensors)  # rank 0 (broadcast_state follows), or every FSDP shard
    sampler.load_state(ckpt.state["sampler"])
    for pending in ckpt.state["pending"]:
        pipe.restore(StepRollouts.from_json(pending))
    return {int(k): v for k, v in ckpt.state["evals"].items()}


def check_before_loading(cfg: TrainConfig, model_dir: str, train_rows: list[dict]) -> None:
    """Everything that needs the rows or the model's config but no weights, each one clear error:
    sequence length, learner dtype, trackers, LoRA targets, and on a GPU the memory preflight."""
    check_max_seq_len(cfg, train_rows)
    check_learner_dtype(cfg.train.dtype, "cuda" if torch.cuda.is_available() else "cpu")
    check_trackers(cfg.logging.report_to)
    if cfg.lora is not None:  # peft installed, target modules that exist
        lora.require_peft()
        lora.check_targets(model_dir, cfg.lora.target_modules)
    gpu_gib = preflight.gpu_memory_gib(cfg) if torch.cuda.is_available() else None
    if gpu_gib is not None:  # refuse what cannot fit, before any model loads onto the GPU
        longest_prompt = max(len(r["prompt_ids"]) for r in train_rows)
        print(preflight.check(cfg, read_model_config(model_dir), gpu_gib, longest_prompt).report())


def check_max_seq_len(cfg: TrainConfig, rows: list[dict]) -> None:
    """``train.max_seq_len`` against the longest training prompt plus ``sampling.max_tokens``, before any model loads."""
    limit = cfg.train.max_seq_len
    if limit is None or not rows:
        return
    longest = max(len(r["prompt_ids"]) for r in rows)
    if longest + cfg.sampling.max_tokens > limit:
        raise ConfigError(f"train.max_seq_len={limit}: the longest training prompt has {longest} tokens and "
                          f"sampling.max_tokens={cfg.sampling.max_tokens}, so a row can reach "
                          f"{longest + cfg.sampling.max_tokens} tokens; raise train.max_seq_len, lower "
                          "sampling.max_tokens, or cap prompts with task.max_prompt_tokens")
