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
* PPO's critic updates after the policy, on the same batch and micro-batches.
* Each group is scored the moment the engine finishes it, on ``rewards.workers`` threads
  (rlvr.scoring), so only the scoring left when generation ends is on the step's path.
* Evaluation runs on the same engine as rollouts and is scored by the run's own rubric, with
  greedy decoding for pass@1.
* Prompts are tokenized once when the task loads (rlvr.tasks.prepare_rows); the engine gets
  the ids, so the learner trains on exactly the prompt tokens the engine saw.
* A run whose rewards are all 0 for ``alarms.zero_reward_steps`` steps, or whose verifier
  fails too often, stops itself (rlvr.alarms) instead of training on nothing.
* A check that failed for reasons not the policy's (outcome ``verifier_error`` or ``infra_error``)
  is retried (``rewards.retries``), then kept out of its group's baseline and the loss
  (``AdvantageInputs.valid``, set by ``build_batch``); it is never trained as a reward of 0.
* ``train.async``: the step's rollouts come from a pipeline that runs one step ahead
  (rlvr.pipeline); a stale batch's log-prob gap to the learner is its policy's drift, so the
  parity gate only judges batches whose every token is fresh, and per-token IS (``algorithm.is_cap``,
  ``is_mode``) reweights each token against the engine's log-prob of it. A sample with a token more than
  ``train.async.max_staleness`` versions old is never trained on (rlvr.train.staleness).
* Checkpoints (rlvr.checkpoint) hold the full state, including rollouts already drawn ahead,
  so ``--resume`` continues bit-identically on CPU.
* ``cluster:`` changes where the work runs, not what it is (docs/distributed.md): rollouts come
  from the engine in this process or from Ray actors (rlvr.rollout), with every row and
  seed chosen here (rlvr.draw); the learner steps on one process or on M data-parallel ranks
  (rlvr.cluster.learner_group), rank 0 being this process, so the checkpoint has one writer.
  The policy's weights, log-probs and state are read through that group, because under FSDP
  (``cluster.learner_sharding: fsdp``) each rank holds only a shard of them.

Where the parts come from and who closes them: rlvr.run.Run (built in one place, closed on any
failure). This file is the driver: ``train`` runs the steps, ``rl_step`` is one of them.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rlvr import parity
from rlvr.algorithms import (
    ADVANTAGES,
    AdvantageInputs,
    AlgorithmConfig,
    kl_penalty,
    kl_reward_penalty,
    last_token_rewards,
    masked_mean,
)
from rlvr.cluster.learner_group import LearnerGroup
from rlvr.config import TrainConfig
from rlvr.draw import rollout_metrics
from rlvr.run import Run
from rlvr.train.batch import build_batch
from rlvr.train.learner import RLBatch
from rlvr.train.staleness import staleness_metrics


def train(cfg: TrainConfig, progress: bool | None = None, resume: bool = False,
          overwrite: bool = False) -> dict[str, Any]:
    """Run RL training as configured; returns {"before": eval, "after": eval, ...}.

    ``resume``: continue from the newest checkpoint in ``cfg.run_dir`` (see rlvr.checkpoint).
    ``overwrite``: start afresh in a ``run_dir`` that holds an earlier run's checkpoints
    (otherwise that is an error, so a forgotten ``--resume`` never deletes a run).
    Everything that can be checked is checked before anything is written or any model loads.
    """
    with Run(cfg, progress, resume, overwrite) as run:
        start = run.start()  # restore a checkpoint or evaluate step 0; the parity probe; async: first draws
        for step in run.steps(start):
            metrics, drawn = rl_step(run, step)
            run.end_step(step, metrics, drawn)  # log, alarms, evaluation and checkpoint when due
        return run.finish()


def rl_step(run: Run, step: int) -> tuple[dict[str, float], list]:
    """One step: take the step's rollouts -> batch -> advantages -> learner (and critic) step -> push
    the new weights into the engine. Returns the step's metrics and every group it drew."""
    cfg, algo, learners, pipe = run.cfg, run.cfg.algorithm, run.learners, run.pipe
    t0 = time.perf_counter()
    run.draw_ahead(step)
    ro = pipe.take(step)  # staleness 0: drawn just now; else waits only if generation is behind
    if cfg.engine.sleeps:  # the engine gives its GPU memory back while the learner steps
        pipe.call("sleep")
    t1 = time.perf_counter()
    metrics = dict(ro.stats, **ro.timings, staleness=float(step - 1 - ro.version), wait_rollouts_s=t1 - t0)
    metrics.update(run.redraw_stale(step, ro))  # train.async.stale: redraw; else too-old samples are dropped below
    # the learner's version before this update is step - 1; a sample with a token older than max_staleness
    # versions is kept out of training (rlvr.train.staleness)
    batch, adv_in = build_batch(ro.batch, run.tokenizer.pad_token_id, algo, cfg.sampling.max_tokens,
                                learner_version=step - 1, max_staleness=cfg.train.async_.max_staleness)
    metrics.update(staleness_metrics(batch.versions, step - 1, cfg.train.async_.max_staleness, adv_in.lead))
    if algo.reward_kl_coef > 0:  # KL in the reward (PPO, REINFORCE++): per-token rewards before advantages
        adv_in.token_rewards, metrics["kl"] = kl_token_rewards(learners, batch, adv_in, algo)
    if learners.critic is not None:  # PPO: the sampling-time values V(s_t) feed GAE and value clipping
        adv_in.values = learners.values(batch)
    batch.advantages = ADVANTAGES[algo.advantage](adv_in, algo)  # [B, T]
    metrics.update(learners.step(batch))
    # every real token (prompt + completion) of the batch, once per optimiser pass over it
    metrics["tokens_trained"] = float(batch.attention_mask.sum()) * cfg.train.updates_per_batch
    if metrics["staleness/tokens_0"] == 1.0:  # a stale token differs by the policy's own update, not by the engine
        parity.check_step(metrics, cfg)
    if learners.critic is not None:
        metrics.update(learners.critic_step(batch, adv_in))
    t2 = time.perf_counter()
    metrics.update(run.push_weights(step))
    t3 = time.perf_counter()
    metrics.update(rollout_metrics(ro.drawn, cfg.env.max_turns > 1, run.reward_terms), **run.rollouts.stats(), learn_s=t2 - t1, step_s=t3 - t0,
                   engine_idle_s=max(0.0, (t3 - t0) - pipe.busy_s(t0, t3)))
    metrics["generate_share"] = metrics["generate_s"] / metrics["step_s"]
    metrics["score_hidden_share"] = metrics["score_hidden_s"] / metrics["score_s"] if metrics["score_s"] else 1.0
    return metrics, ro.drawn


def kl_token_rewards(learners: LearnerGroup, batch: RLBatch, inp: AdvantageInputs,
                     algo: AlgorithmConfig) -> tuple[torch.Tensor, float]:
    """Token rewards [B, T] with ``reward_kl_coef * KL_t`` subtracted, and the mean KL_t."""
    mask = inp.mask
    old_logp, ref_logp = learners.policy_and_reference_logp(batch)  # [B, T] each, no gradient
    token_rewards = kl_reward_penalty(last_token_rewards(inp.rewards, mask), old_logp, ref_logp, mask,
                                      algo.reward_kl_coef, algo.kl_kind)
    return token_rewards, float(masked_mean(kl_penalty(old_logp, ref_logp, algo.kl_kind), mask))
