"""A training run's parts, built in one place and closed on any failure, and the run's state.

``Run`` builds the task's rows, the Ray connection (``cluster:``), the learner group (rank 0 here,
more ranks on Ray), the rollouts (this process or Ray workers), the rollout pipeline, the prompt
sampler, the alarms and the loggers, in that order, each registered on an ``ExitStack`` the
moment it exists: whatever fails, everything built so far is closed, newest first (no Ray actor,
learner rank, engine or shared-memory segment is left behind).

The run's state has one layout, written and read by ``state_dict`` / ``load_state_dict``:
``{"learner": ..., "critic": ..., "rng": ..., "run": {"sampler", "pipeline", "evals"}}``: every
tensor part is a file of the checkpoint (``learner.pt`` ...), the ``run`` part its ``state.json``
(rlvr.checkpoint writes them atomically).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from rlvr import lora, parity, preflight
from rlvr.alarms import Alarms
from rlvr.archs import read_config as read_model_config
from rlvr.checkpoint import (
    check_run_dir,
    checkpoints_dir,
    config_changes,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rlvr.cluster.learner_group import LearnerGroup, LearnerRankError
from rlvr.cluster.runtime import ClusterError, connect, disconnect, pinned_cores
from rlvr.components import build_rubric, close_verifiers, load_rows, thread_split
from rlvr.config import ConfigError, TrainConfig, config_yaml
from rlvr.draw import PromptSampler, StepDrawer
from rlvr.evaluate import eval_settings
from rlvr.logging import MetricsLogger, SampleLogger, plot_reward_accuracy
from rlvr.models import resolve_model
from rlvr.pipeline import InFlight, RolloutPipeline
from rlvr.precision import check_learner_dtype
from rlvr.rollout import make_rollouts
from rlvr.trackers import check_trackers, open_trackers
from rlvr.train.batch import sequences_of
from rlvr.train.staleness import oldest_version


class Run:
    """Every part of one RL training run (see the module docstring); a context manager that closes
    them all on exit. ``resume``: continue from the newest checkpoint in ``cfg.run_dir``;
    ``overwrite``: start afresh in a ``run_dir`` that holds an earlier run's checkpoints."""

    def __init__(self, cfg: TrainConfig, progress: bool | None = None, resume: bool = False,
                 overwrite: bool = False):
        self.cfg = cfg
        self._stack = ExitStack()
        try:
            self._build(progress, resume, overwrite)
        except BaseException:
            self._stack.close()
            raise

    def _build(self, progress: bool | None, resume: bool, overwrite: bool) -> None:
        """Everything that can be checked is checked before anything is written or any model loads."""
        from transformers import AutoTokenizer

        cfg, tc = self.cfg, self.cfg.train
        model_dir = resolve_model(cfg.model)
        rubric = build_rubric(cfg)
        self._stack.callback(close_verifiers, rubric)  # a judge's threads, a reward model's process
        self.reward_terms = [v.name for v, _ in rubric.parts]  # each logged as reward/<name>
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.data = load_rows(cfg, self.tokenizer, rubric, model_dir)
        check_before_loading(cfg, model_dir, self.data.train)
        # Ray: joined and checked before any model loads
        self.cluster = self._stack.enter_context(_connected(cfg)) if cfg.cluster.uses_ray else None
        self.run_dir = Path(cfg.run_dir)
        self.cfg_yaml = config_yaml(cfg)
        self.resumed = find_resume_point(self.run_dir, self.cfg_yaml, resume, overwrite, tc.steps)
        prepare_run_dir(self.run_dir, self.cfg_yaml, self.resumed)  # the first write
        self.staleness = tc.async_.max_staleness if tc.async_.enabled else 0
        learner_threads, engine_threads = thread_split(cfg)
        if learner_threads:
            torch.set_num_threads(learner_threads)
        random.seed(tc.seed)
        torch.manual_seed(tc.seed)
        device = "cuda" if torch.cuda.is_available() else "cpu"  # the learner's; the engine places itself
        # the policy (LoRA-wrapped if asked), the reference for a KL, PPO's critic: on one process or M ranks
        self.learners = LearnerGroup(cfg, model_dir, device)
        self._stack.callback(self.learners.close)
        self.rollouts = make_rollouts(cfg, model_dir, rubric, engine_threads, self.cluster)  # here, or Ray actors
        self._stack.callback(self.rollouts.close)  # an in-process vLLM engine holds its KV cache
        if cfg.cluster.pin_cores:  # the learner on the cores the rollout workers do not have
            learner_cores = pinned_cores(cfg.cluster.rollout_workers, tc.threads)[1]
            self._stack.callback(os.sched_setaffinity, 0, os.sched_getaffinity(0))  # given back at the end
            self._stack.callback(torch.set_num_threads, torch.get_num_threads())
            os.sched_setaffinity(0, learner_cores)
            torch.set_num_threads(len(learner_cores))
        if self.cluster is not None:  # which process is which (for operators, and the fault tests)
            pids = getattr(self.rollouts, "pids", [])
            layout: dict[str, Any] = {"rollout_workers": pids, "learner_ranks": self.learners.pids()}
            if cfg.cluster.pin_cores:  # each process's cores, as the kernel reports them
                layout["cores"] = {"rollout_workers": [sorted(os.sched_getaffinity(p)) for p in pids],
                                   "learner": sorted(os.sched_getaffinity(0))}
            (self.run_dir / "cluster.json").write_text(json.dumps(layout))
        self.sampler = PromptSampler(len(self.data.train), tc.seed)
        self.alarms = Alarms(cfg.alarms, [v.name for v, w in rubric.parts if w])  # the verifiers that reward
        worker_threads = engine_threads if cfg.engine.computes_on_caller_thread else 0
        self.pipe = RolloutPipeline(self.rollouts, StepDrawer(cfg, self.data.train, self.sampler, self.rollouts),
                                    self.staleness, worker_threads)
        self._stack.callback(self.pipe.close)
        if tc.async_.enabled and tc.async_.in_flight:  # loads between decode steps (rlvr.pipeline.InFlight)
            self.pipe.in_flight = InFlight(self.pipe, getattr(self.rollouts, "engine", None), self.staleness, tc.steps,
                                           tc.async_.deterministic, tc.async_.update_at)
        self.show = cfg.logging.progress if progress is None else progress
        trackers = open_trackers(cfg.logging.report_to, self.run_dir, yaml.safe_load(self.cfg_yaml),
                                 cfg.logging.project, resume=self.resumed is not None)
        self.logger = MetricsLogger(self.run_dir, cfg.logging.tensorboard, trackers=trackers,
                                    purge_step=None if self.resumed is None else self.resumed.step + 1)
        self._stack.callback(self.logger.close)
        self.samples = SampleLogger(self.run_dir, cfg.logging.samples_every, cfg.logging.samples_per_step, self.logger)
        self.evals: dict[int, dict[str, float]] = {}
        self.synced_version = 0  # learner updates contained in the weights the engine samples with
        self._last_sync: Future | None = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        try:
            self._stack.close()  # newest first: pipeline, rollouts, learner ranks, Ray
        finally:
            if isinstance(exc, (ClusterError, LearnerRankError)):  # say where the run can continue from
                last = latest_checkpoint(self.run_dir)
                raise ClusterError(f"{exc} Last checkpoint: {last if last else 'none yet'}.") from exc

    # --- the run's course ---------------------------------------------------------------------

    def start(self) -> int:
        """Restore a checkpoint or evaluate step 0, check the engine against the learner, queue the
        first draws (async); returns the step the run continues after."""
        tc = self.cfg.train
        start = 0
        if self.resumed is not None:
            start = self.resumed.step
            self.load_state_dict(self.resumed.state)
            # the engine's version is the step's, as it was when the checkpoint was written: every token drawn
            # from here on records it (rlvr.train.staleness compares it with the learner's)
            self.pipe.call("load_weights", self.learners.policy_weights(), version=start)
            set_rng_state(self.resumed.state["rng"])
        self.learners.broadcast_state()  # every learner rank starts from rank 0's state (no-op with one rank)
        # a few tokens against the learner before anything is evaluated or trained (rlvr.parity)
        probe = parity.probe(lambda rows, s: self.pipe.call("generate_and_score", rows, s), self.learners.policy_logp,
                             self.data.train, self.cfg, self.tokenizer.pad_token_id)
        print(f"parity probe: engine and learner log-probs agree within {probe['probe_logp_diff_max']:.2g} nats")
        if self.resumed is None and self.cfg.eval.num_prompts:
            self.evals = {0: self.evaluate(0)}
        for s in range(start + 1, min(start + self.staleness, tc.steps) + 1):  # async: fill the pipeline
            if not self.pipe.has(s):  # (a resumed run brings the rollouts it had drawn)
                self.pipe.submit_draw(s, version=start)
        self.synced_version = start
        return start

    def steps(self, start: int):
        """The steps left, with a progress bar; queues each step's draw ``staleness`` steps ahead."""
        from tqdm import tqdm

        tc = self.cfg.train
        self.bar = tqdm(range(start + 1, tc.steps + 1), desc="rl", disable=not self.show, mininterval=1,
                        initial=start, total=tc.steps)
        yield from self.bar

    def draw_ahead(self, step: int) -> None:
        """Queue the draw of step ``step + staleness`` (the synchronous loop: this step's own)."""
        if step + self.staleness <= self.cfg.train.steps:
            self.pipe.submit_draw(step + self.staleness, version=self.synced_version)

    def redraw_stale(self, step: int, ro: Any) -> dict[str, float]:
        """``train.async.stale: redraw``: every group of ``ro``'s batch with a token more than ``max_staleness``
        versions older than the learner (``step - 1``) is drawn again on the engine's current weights and takes
        its place in the batch (the old one stays in ``ro.drawn``, logged); returns ``stale_redrawn``, the groups
        redrawn. ``drop`` (the default): nothing is redrawn, and the batch's guard keeps such samples out."""
        if self.cfg.train.async_.stale != "redraw":
            return {}
        oldest_allowed = step - 1 - self.cfg.train.async_.max_staleness
        oldest = [oldest_version([t for seqs in sequences_of(sg) for t in seqs]) for sg in ro.batch]
        stale = [i for i, v in enumerate(oldest) if v is not None and v < oldest_allowed]
        t0 = time.perf_counter()
        if stale:
            new = self.pipe.redraw(step, [ro.batch[i].row for i in stale])
            ro.batch = list(ro.batch)  # (without DAPO's rounds, the batch is the list of groups drawn)
            for i, sg in zip(stale, new):
                ro.batch[i] = sg
            ro.drawn = [*ro.drawn, *new]
        return {"stale_redrawn": float(len(stale)), "redraw_s": time.perf_counter() - t0}

    def push_weights(self, step: int) -> dict[str, float]:
        """Send the learner's new weights to the engine; returns the finished load's stats (async: the
        previous step's load, done by now, while this one runs behind the next draw)."""
        stats = self._last_sync.result() if self._last_sync is not None else {}
        # async: the learner moves on while the engine loads, so it gets a copy of the weights
        # LoRA: W + scale * B @ A into new tensors, the adapter untouched (rlvr.lora)
        weights = [(n, p.detach().clone() if self.staleness else p) for n, p in self.learners.policy_weights()]
        if self.pipe.in_flight is not None:  # between two decode steps of the running draw (rlvr.pipeline.InFlight)
            self._last_sync = self.pipe.in_flight.push(weights, step)
        else:  # behind the draws queued so far
            self._last_sync = self.pipe.submit("load_weights", weights, version=step)
        self.synced_version = step
        if not self.staleness:
            stats = {**stats, **self._last_sync.result()}
            self._last_sync = None
        return stats

    def end_step(self, step: int, metrics: dict[str, float], drawn: list) -> None:
        """Log the step, check the alarms, evaluate and checkpoint when due."""
        cfg, ev = self.cfg, self.cfg.eval
        self.logger.log(step, metrics)
        self.samples.log(step, drawn)
        self.alarms.check(step, drawn, metrics)
        self.bar.set_postfix(reward=f"{metrics['reward_mean']:.2f}", acc=f"{metrics['accuracy']:.2f}",
                             len=f"{metrics['response_len_mean']:.0f}")
        if ev.num_prompts and (step == cfg.train.steps or (ev.every and step % ev.every == 0)):
            self.evals[step] = self.evaluate(step)
        if step == cfg.train.steps or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
            self.save(step)

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out pass@k on the run's engine, scored by the run's rubric; logged as ``eval``."""
        t0 = time.perf_counter()
        m = self.pipe.call("evaluate", self.data.test, progress=self.show and self.cluster is None,
                           **eval_settings(self.cfg))
        m["eval_s"] = time.perf_counter() - t0
        self.logger.log(step, m, kind="eval")
        return m

    def finish(self) -> dict[str, Any]:
        """The trained model as a plain HF directory (``final/``), the plot and ``summary.json``."""
        final = self.run_dir / "final"
        self.learners.save_final(final, self.run_dir / "adapter")  # a plain HF model (LoRA merged; the adapter too)
        self.tokenizer.save_pretrained(final)
        plot = plot_reward_accuracy(self.run_dir / "metrics.jsonl", self.run_dir / "reward_accuracy.png",
                                    title=self.run_dir.name)
        # the last step always evaluates (also in a resumed, finished run), unless evaluation is off
        summary = {"before": self.evals.get(0), "after": self.evals.get(self.cfg.train.steps), "checkpoint": str(final),
                   "plot": str(plot), "data": self.data.notes}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    # --- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The run's one state layout (see the module docstring). Async: rollouts already drawn for
        the next steps travel along, so a resumed run trains on exactly them."""
        return {**self.learners.state_dict(), "rng": rng_state(),
                "run": {"sampler": self.sampler.state_dict(), "pipeline": self.pipe.state_dict(),
                        "evals": {str(k): v for k, v in self.evals.items()}}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """``state_dict``'s layout, less the RNG (set after the engine's reload, as it was saved)."""
        self.learners.load_state_dict(state)  # rank 0 (broadcast_state follows), or every FSDP shard
        self.sampler.load_state_dict(state["run"]["sampler"])
        self.pipe.load_state_dict(state["run"]["pipeline"])
        self.evals = {int(k): v for k, v in state["run"]["evals"].items()}

    def save(self, step: int) -> None:
        state = self.state_dict()
        save_checkpoint(self.run_dir, step, tensors={k: v for k, v in state.items() if k != "run"},
                        state=state["run"], config_yaml=self.cfg_yaml, keep=self.cfg.checkpoint.keep)


@contextmanager
def _connected(cfg: TrainConfig):
    """The Ray connection of ``cfg.cluster``, disconnected on exit."""
    info = connect(cfg.cluster)
    try:
        yield info
    finally:
        disconnect(info)


@dataclass
class Resumed:
    step: int
    path: Path
    state: dict[str, Any]  # Run.state_dict's layout


def find_resume_point(run_dir: Path, cfg_yaml: str, resume: bool, overwrite: bool, steps: int) -> Resumed | None:
    """The checkpoint a resumed run continues from (None for a fresh run), after every check
    that can refuse the command; reads only, so a refused command leaves the run as it was."""
    check_run_dir(run_dir, resume, overwrite)  # (`rlvr train` checked it before loading anything)
    if not resume:
        return None
    path = latest_checkpoint(run_dir)
    changed = config_changes((path / "config.yaml").read_text(), yaml.safe_load(cfg_yaml))
    if changed:
        raise ConfigError(f"resume: the config of {str(run_dir)!r} changed in fields that matter "
                          "(start a new run_dir instead):\n  " + "\n  ".join(changed))
    tensors, state = load_checkpoint(path)
    if state["step"] > steps:
        raise ConfigError(f"resume: train.steps={steps} is below the checkpoint's step {state['step']} ({path})")
    return Resumed(state["step"], path, {**tensors, "run": state})


def prepare_run_dir(run_dir: Path, cfg_yaml: str, ckpt: Resumed | None) -> None:
    """Fresh run: an empty metrics file and no old checkpoints. Resume: metrics past the
    checkpoint are cut and a killed write's leftovers removed. Writes ``config.yaml``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = run_dir / "metrics.jsonl"
    if ckpt is None:
        metrics.unlink(missing_ok=True)
        (run_dir / "samples.jsonl").unlink(missing_ok=True)
        (run_dir / "cluster.json").unlink(missing_ok=True)  # an earlier Ray run's processes (a Ray run writes its own)
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
