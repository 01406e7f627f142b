"""Typed, validated run configuration (pydantic).

A YAML file holds only what differs from the defaults; ``key.sub=value`` arguments on the
command line override it. An unknown key, a wrong type or a missing file is one error that
names the field.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from rlvr.agents.config import AgentConfig
from rlvr.algorithms.config import AlgorithmConfig
from rlvr.envs import EnvConfig
from rlvr.envs.single_turn import SingleTurnConfig
from rlvr.tasks import TASKS, ArithTask, default_verifier
from rollouts.config import engine_config


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(ValueError):
    """A configuration problem; the message names the file and field."""


# fields that an older config may still use: the error for the old name says what replaced it
RENAMED = {"task.name": "renamed task.kind"}


def _task_kind(value: Any) -> str:
    if isinstance(value, dict):
        if "name" in value and "kind" not in value:
            raise ValueError(f"task.name: {RENAMED['task.name']}: write task.kind={value['name']} "
                             f"(kinds: {', '.join(sorted(TASKS))})")
        return value.get("kind", "arith")
    return getattr(value, "kind", "arith")


def _task_union() -> Any:
    """``task:`` is a union of the registered kinds' configs, keyed on ``kind`` (default arith)."""
    from pydantic import Discriminator, Tag

    members = tuple(Annotated[kind.config, Tag(name)] for name, kind in sorted(TASKS.items()))
    return Annotated[Union[members], Discriminator(_task_kind)]  # noqa: UP007 (a runtime-built union)


TaskConfig = _task_union()


def check_task_kind(data: Any) -> Any:
    """Before validation: an unknown ``task.kind`` is one line naming the known kinds."""
    task = data.get("task") if isinstance(data, dict) else None
    if isinstance(task, dict):
        kind = _task_kind(task)
        if kind not in TASKS:
            raise ValueError(f"task.kind: unknown task kind {kind!r}; known: {', '.join(sorted(TASKS))}")
    return data


class ModelArchConfig(Section):
    arch: Literal["llama", "qwen2", "qwen2-tied", "qwen3"] = Field(
        "llama", description="Architecture of the base (rlvr.archs.ARCHS): Llama, Qwen2 with an untied or tied "
        "output head, Qwen3.")
    hidden_size: int = Field(256, ge=16, description="Transformer width.")
    num_layers: int = Field(4, ge=1, description="Decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads (head dim = hidden/heads; keep it 64 for vLLM CPU).")
    intermediate_size: int = Field(768, ge=16, description="MLP width.")
    max_position_embeddings: int = Field(256, ge=32, description="Longest sequence the model supports.")


class CorpusConfig(Section):
    num_docs: int = Field(60_000, ge=100, description="Documents in the procedurally generated pretraining corpus.")
    reason_prob: dict[int, float] = Field(
        {2: 0.8, 3: 0.35, 4: 0.15},
        description="Per number of operations: share of documents that reason step by step (the rest guess).",
    )
    guess_noise: int = Field(3, ge=1, description="A guessed answer is off by 1..guess_noise from the truth.")
    untagged_guess_prob: float = Field(0.7, ge=0, le=1, description="Share of guesses written without <answer> tags.")
    practice_frac: float = Field(
        0.3, ge=0, lt=1,
        description="Share of short worked-arithmetic documents without the R1 template (teach the steps cheaply; "
        "with tool_prob > 0, tool calls instead of steps).",
    )
    tool_prob: float = Field(0.0, ge=0, le=1, description="Share of R1 documents that solve the problem by calling "
                             "the python tool (`tool_template`) instead of reasoning or guessing (the tools demo).")
    tool_template: str = Field(
        " <python>print({expression})</python>\n<output>\n{answer}\n</output>\n </think> <answer>{answer}</answer>",
        description="A tool-using response: {expression} is the chain as Python, {answer} its value. Its call and "
        "output must read as the `python` environment's (env.call_open/call_close/output_template) for RL to "
        "continue the habit.")


class PretrainTrainConfig(Section):
    steps: int = Field(1500, ge=1, description="Optimizer steps.")
    batch_size: int = Field(64, ge=1, description="Documents per step.")
    lr: float = Field(3e-3, gt=0, description="Peak AdamW learning rate.")
    warmup_steps: int = Field(100, ge=0, description="Linear warm-up steps before cosine decay.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Autocast dtype for forward/backward.")
    seed: int = Field(0, description="Seed for init, corpus and batching.")
    threads: int = Field(0, ge=0, description="torch intra-op threads (0: one per core). Use fewer when the cores are shared: oversubscribed OpenMP threads slow CPU training several-fold.")


class PretrainConfig(Section):
    out_dir: str = Field("artifacts/tiny-base", description="Where the Hugging Face model directory is written.")
    vocab_size: int = Field(384, ge=300, description="BPE vocabulary size (byte-level, digits split).")
    task: TaskConfig = Field(default_factory=ArithTask, description="The task whose training split the corpus "
                             "is built from (procedural kinds).")
    model: ModelArchConfig = Field(default_factory=ModelArchConfig)
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    train: PretrainTrainConfig = Field(default_factory=PretrainTrainConfig)


def _engine_kind(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("kind", "hf")
    return getattr(value, "kind", "hf")


def _engine_union() -> Any:
    """``engine:`` is a union of the registered trainable engine kinds' configs (rollouts.config), keyed on
    ``kind`` (default hf): each kind has its own fields, so one of another kind is an unknown key."""
    from pydantic import Discriminator, Tag

    from rollouts.config import ENGINES

    members = tuple(Annotated[cfg, Tag(kind)] for kind, cfg in sorted(ENGINES.items()) if cfg.trainable)
    return Annotated[Union[members], Discriminator(_engine_kind)]  # noqa: UP007 (a runtime-built union)


EngineConfig = _engine_union()


def check_engine_kind(data: Any) -> Any:
    """Before validation: an unknown ``engine.kind`` is one line naming the known kinds."""
    from rollouts.config import trainable_kinds

    engine = data.get("engine") if isinstance(data, dict) else None
    if isinstance(engine, dict) and _engine_kind(engine) not in trainable_kinds():
        raise ValueError(f"engine.kind: unknown engine {_engine_kind(engine)!r}; known: {', '.join(trainable_kinds())}")
    return data


class SamplingSection(Section):
    n: int = Field(8, ge=1, description="Completions per prompt (the group size).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature for training rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    max_tokens: int = Field(64, ge=1, description="Longest completion in tokens.")


class RewardTerm(Section):
    verifier: str = Field(description="Registered verifier name (see `verifiers.available()`).")
    weight: float = Field(1.0, description="Weight in the reward sum; 0 logs without rewarding.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments for the verifier.")


class RewardsConfig(Section):
    terms: list[RewardTerm] | None = Field(
        None, description="Weighted verifiers composing the reward. None: the task's verifier (weight 1) plus "
        "r1_format (weight 0.1). A bare list under `rewards:` means this field.")
    workers: int = Field(4, ge=1, description="Scoring workers: groups are scored on these as soon as they finish "
                         "generating (the math and code verifiers run each check in their own processes).")
    retries: int = Field(1, ge=0, le=10, description="How many more times a sample is scored whose check failed for "
                         "reasons not the policy's (outcome verifier_error or infra_error: a crashed verifier, a dead "
                         "sandbox worker). One still failing after them is kept out of its group's baseline and out "
                         "of the loss, never trained as a 0 (docs/verifiers.md#what-enters-the-gradient).")


class AlarmsConfig(Section):
    zero_reward_steps: int = Field(
        10, ge=0, description="Stop when every reward was exactly 0 for this many consecutive steps, naming the "
        "verifier and showing a sample (0: off).")
    max_error_rate: float = Field(
        0.5, gt=0, le=1, description="Stop when more than this share of a step's samples failed, after retries, for "
        "reasons not the policy's: the verifier's (outcome verifier_error: crashes, checker timeouts) or the "
        "machinery's (infra_error: dead sandbox workers), each counted on its own; a wrong answer never counts.")
    max_outcome_rates: dict[str, float] = Field(
        default_factory=dict, description="Stop when more than this share of a step's samples had this outcome, per "
        "outcome (e.g. {policy_timeout: 0.5, unparsed: 0.9}); verifier_error and infra_error default to "
        "max_error_rate. Outcomes: correct, wrong, unparsed, policy_timeout, truncated, verifier_error, infra_error.")

    @field_validator("max_outcome_rates")
    @classmethod
    def _known_outcomes(cls, rates: dict[str, float]) -> dict[str, float]:
        from verifiers.base import OUTCOMES

        for outcome, rate in rates.items():
            if outcome not in OUTCOMES:
                raise ValueError(f"unknown outcome {outcome!r}; outcomes: {', '.join(OUTCOMES)}")
            if not 0 < rate <= 1:
                raise ValueError(f"max_outcome_rates.{outcome} must be in (0, 1], got {rate}")
        return rates
    zero_grad_steps: int = Field(5, ge=0, description="Warn when the gradient was exactly 0 for this many "
                                 "consecutive steps (no group had a reward spread; 0: off).")


class OptimConfig(Section):
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate (constant after warm-up).")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas.")
    grad_clip: float = Field(1.0, gt=0, description="Max global gradient norm.")


class AsyncConfig(Section):
    """``train.async``: generation overlapping learning. ``true`` is ``{enabled: true}`` (one-step-off)."""

    enabled: bool = Field(True, description="Overlap generation with learning (false: the synchronous loop).")
    max_staleness: int = Field(1, ge=1, le=8, description="How many versions older than the learner a sampled token "
                               "may be: generation runs at most this many steps ahead, and a sample with an older "
                               "token is never trained on (counted in `stale_dropped`).")
    in_flight: bool = Field(False, description="The engine loads each new version of the weights between two decode "
                            "steps, without dropping the rows it is sampling, instead of after its current draw; "
                            "every token records the version that sampled it. Needs an engine that steps token by "
                            "token (engine.kind=static).")
    deterministic: bool = Field(False, description="in_flight: each update lands at a fixed decode step of a draw "
                                "(`update_at`), the engine waiting for it there, so a run at train.threads=1 repeats "
                                "exactly (and resumes exactly after a crash). Off: an update lands as soon as it is "
                                "pushed.")
    update_at: int = Field(16, ge=1, description="in_flight with deterministic: the decode step of each draw at which "
                           "the engine loads the learner's next version.")
    stale: Literal["drop", "redraw"] = Field(
        "drop", description="A sample with a token older than `max_staleness` versions: `drop` keeps it out of "
        "training (counted in `stale_dropped`); `redraw` draws its group's prompt again on the engine's current "
        "weights before the step trains, with seeds of its own (counted in `stale_redrawn`; a redraw still too old "
        "is dropped). Not with `deterministic`, whose draws wait for the learner at fixed decode steps.")
    @model_validator(mode="after")
    def _check(self) -> AsyncConfig:
        if self.deterministic and not self.in_flight:
            raise ValueError("train.async.deterministic: fixed update boundaries are for in_flight; one-step-off "
                             "(in_flight: false) is deterministic already")
        if self.stale == "redraw" and self.deterministic:
            raise ValueError("train.async.stale=redraw: a redraw runs on the engine behind the draws ahead, and a "
                             "deterministic in-flight draw waits there for the learner's next version, which waits "
                             "for the redraw; use stale: drop with deterministic")
        return self


# sections a boolean may stand for: `async: true` is `async: {enabled: true}`
BOOL_SECTIONS = {"async"}


class TrainLoopConfig(Section):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _async_shorthands(cls, data: Any) -> Any:
        """``async: true|false`` is ``async: {enabled: ...}``; ``max_staleness`` beside it (its older place) moves
        into the section."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("async"), bool):
            data["async"] = {"enabled": data["async"]}
        if "max_staleness" in data:
            moved = data.pop("max_staleness")
            section = dict(data.get("async") or {"enabled": False})
            if section.get("max_staleness", moved) != moved:
                raise ValueError(f"train.max_staleness={moved} and train.async.max_staleness="
                                 f"{section['max_staleness']} disagree: give one (train.async.max_staleness)")
            section["max_staleness"] = moved
            data["async"] = section
        return data

    steps: int = Field(60, ge=1, description="RL steps (one batch of prompts each).")
    prompts_per_step: int = Field(16, ge=1, description="Prompts per step; each is sampled `sampling.n` times.")
    micro_batch_size: int = Field(32, ge=1, description="Sequences per forward/backward (gradient accumulation).")
    updates_per_batch: int = Field(1, ge=1, description="Optimizer passes over each batch (>1 makes the ratio matter).")
    shared_prefix: bool = Field(
        True,
        description="Learner: run each group's shared prompt once per micro-batch and its KV cache for all `n` "
        "completions, instead of the prompt once per completion (same update up to float rounding; micro-batches "
        "then hold whole groups). Off: every row is run as prompt + completion.",
    )
    seed: int = Field(0, description="Seed for prompt order, sampling and init.")
    threads: int = Field(0, ge=0, description="torch intra-op threads of the learner (0: all cores; half of them "
                         "with `async`, the engine gets the rest).")
    async_: AsyncConfig = Field(
        default_factory=lambda: AsyncConfig(enabled=False), alias="async",
        description="Asynchronous training (docs/training.md): `true` is one-step-off (the engine samples step k+1 "
        "while the learner trains on step k; truncated IS corrects the staleness, `algorithm.is_cap` defaults to 2 "
        "then); a section sets `in_flight`, `max_staleness`, `deterministic` and `update_at`.",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Learner compute dtype. bfloat16 runs the forward/backward under autocast; master "
        "weights, gradients and optimizer state stay float32 and log-softmax runs in float32.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each layer's activations in the backward pass (less memory, ~1/3 more "
        "compute). The shared-prefix forward needs the KV cache it discards, so rows then run flat.")
    max_seq_len: int | None = Field(
        None, ge=2, description="Longest prompt + completion the learner accepts (None: no limit); a longer one "
        "is an error naming both lengths, checked on the training prompts before any model loads.")


class CheckpointConfig(Section):
    every: int = Field(20, ge=0, description="Full-state checkpoint every N steps (0: only at the end of the run).")
    keep: int = Field(2, ge=1, description="Newest checkpoints kept in run_dir/checkpoints.")


class EvalConfig(Section):
    every: int = Field(20, ge=0, description="Evaluate every N steps (0: only before and after).")
    num_prompts: int = Field(200, ge=0, description="Held-out prompts per evaluation (0: no evaluation at all).")
    k: int = Field(8, ge=1, description="Samples per prompt for pass@k.")
    temperature: float = Field(1.0, ge=0, description="Temperature of the pass@k samples.")
    max_tokens: int = Field(64, ge=1, description="Longest evaluation completion.")


class LoggingConfig(Section):
    tensorboard: bool = Field(True, description="Write TensorBoard event files to run_dir/tb.")
    progress: bool = Field(True, description="Show progress bars (training and evaluation).")
    samples_every: int = Field(10, ge=0, description="Every N steps, write a few completions with their rewards to "
                               "run_dir/samples.jsonl and TensorBoard text (0: never).")
    samples_per_step: int = Field(4, ge=1, description="Completions logged each time (from different prompts).")
    report_to: list[Literal["tensorboard", "wandb", "trackio", "mlflow"]] | None = Field(
        None, description="Experiment trackers, each an optional extra (pip install -e '.[wandb]'); the resolved "
        "config is logged as the run's config. None: [tensorboard] if `tensorboard` else [].")
    project: str = Field("rlvr", description="Tracker project / experiment name (the run is named after run_dir).")


class LoraSection(Section):
    """LoRA through peft. A top-level section beside ``model`` (not ``model.lora``), so ``model`` stays one
    path or hub id everywhere; the engine samples with the merged weights."""

    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: float = Field(32.0, gt=0, description="Scale numerator: the update is (alpha / r) * B @ A.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[str] | str = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Linear layers to adapt: names (the last part of a module path), a regex over the full path, "
        "or 'all-linear'. Matching nothing is an error before any model loads.")


class ClusterConfig(Section):
    """Scale-out on Ray and torch.distributed (docs/distributed.md). The defaults are one process, no Ray.

    Rollout workers and learner ranks are colocated: a synchronous step alternates between
    generating and learning, so a worker and a rank may share a core or a GPU."""

    rollout_workers: int = Field(0, ge=0, description="Rollout workers, each a Ray actor with its own engine and "
                                 "verifier pool (0: the engine runs in the trainer's process, without Ray).")
    learner_ranks: int = Field(1, ge=1, description="Data-parallel learner ranks joined by torch.distributed (gloo "
                               "on CPU, NCCL on GPU). Rank 0 is the trainer's process, ranks 1.. are Ray actors; "
                               "they must divide train.prompts_per_step (batches split by whole groups).")
    learner_sharding: Literal["ddp", "fsdp"] = Field(
        "ddp", description="How the learner ranks hold the policy: 'ddp' a whole copy each, gradients all-reduced; "
        "'fsdp' (PyTorch FSDP2) 1/learner_ranks of the weights, gradients and optimiser state each, for a policy "
        "that does not fit one device. fsdp needs learner_ranks >= 2 and runs the flat forward (train.shared_prefix "
        "becomes false); LoRA and the PPO critic are not supported with it yet.")
    address: str = Field("local", description="'local' starts a Ray instance inside the run; 'auto' joins the "
                         "cluster started with `ray start`; 'host:port' joins that one.")
    cpus_per_worker: float | None = Field(None, gt=0, description="CPUs each rollout worker needs, also its "
                                          "engine's threads (None: an equal share of the cluster's CPUs).")
    cpus_per_rank: float | None = Field(None, gt=0, description="CPUs each learner rank needs, also its torch "
                                        "threads (None: an equal share of the cluster's CPUs).")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs each rollout worker needs (0 on CPU machines).")
    gpus_per_rank: float = Field(0.0, ge=0, description="GPUs each learner rank needs (0 on CPU machines).")
    weight_sync: Literal["auto", "shm", "object_store", "nccl"] = Field(
        "auto", description="How new weights reach the rollout workers: 'shm' (one shared-memory block, one "
        "node), 'object_store' (Ray's, across nodes), 'nccl' (a broadcast from the learner's GPU into every vLLM "
        "engine, through vLLM's weight-transfer API); 'auto' picks nccl when the learner and the workers are on "
        "GPUs of their own with vLLM engines, else shm when every worker is on this node.")
    pin_cores: bool = Field(False, description="One CPU node: pin each rollout worker's process to cores of its own "
                            "and the learner (this process) to the rest, so generation and learning never share a "
                            "core: the shape of a deployment that gives the engine and the learner their own GPUs. "
                            "The learner keeps train.threads cores (default half); the workers share the others.")
    batch_invariant: bool = Field(False, description="Generate each group alone, so the token ids do not depend "
                                  "on how groups are spread over workers (slower; for tests and debugging).")
    timeout_s: float = Field(600.0, gt=0, description="Deadline of every remote call, collective and weight sync; "
                             "when it expires the run stops with an error naming the worker or rank.")
    max_worker_restarts: int = Field(3, ge=0, description="A rollout worker that dies is restarted and its groups "
                                     "redrawn with the same seeds, at most this many times per run.")

    @property
    def uses_ray(self) -> bool:
        return self.rollout_workers > 0 or self.learner_ranks > 1


class TrainConfig(Section):
    model: str = Field(description="Hugging Face model directory of the starting policy.")
    run_dir: str = Field("runs/tiny-r1zero", description="Output directory: metrics, TensorBoard, checkpoint, plot.")
    task: TaskConfig = Field(default_factory=ArithTask, description="What to train on: `kind` picks the task "
                             "(arith, countdown, gsm8k, math, code, hf, guess_number); see `rlvr config task`.")
    engine: EngineConfig = Field(default_factory=lambda: engine_config("hf"), description="The rollout "
                                 "engine: `kind` picks it (hf, static, vllm); see `rlvr config engine`.")
    sampling: SamplingSection = Field(default_factory=SamplingSection)
    env: EnvConfig = Field(default_factory=SingleTurnConfig, description="The environment an episode runs in: "
                           "`kind` picks it (single_turn: one completion per prompt; guess_number, ...), with "
                           "max_turns and token budgets; see `rlvr config env` and docs/environments.md.")
    agent: AgentConfig | None = Field(None, description="Bring your own agent: `entry` names a function "
                                      "`rollout(client, row)` that rlvr calls once per sample with an openai client "
                                      "of a recording server on the policy (docs/agents.md). None: the `env:` "
                                      "section runs the episodes.")
    rewards: RewardsConfig = Field(default_factory=RewardsConfig, description="The reward: verifiers, workers, retries.")
    alarms: AlarmsConfig = Field(default_factory=AlarmsConfig, description="When a run stops itself.")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainLoopConfig = Field(default_factory=TrainLoopConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    lora: LoraSection | None = Field(None, description="Train a LoRA adapter instead of every weight (None: full "
                                     "fine-tuning). Checkpoints hold the adapter; run_dir/final is the merged model.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Rollout workers and learner ranks "
                                   "on Ray and torch.distributed (default: one process).")

    # the config as the user wrote it (defaults filled in), before `_derive` filled the derived fields
    _written: dict[str, Any] | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if isinstance(data, dict) and "resolved" in data:  # a run's config.yaml: derived again, never read back
            data = {k: v for k, v in data.items() if k != "resolved"}
        if isinstance(data, dict) and isinstance(data.get("rewards"), list):  # `rewards: [...]` = rewards.terms
            data = {**data, "rewards": {"terms": data["rewards"]}}
        if isinstance(data, dict) and "rewards" in data and data["rewards"] is None:  # `rewards=null`: the task's
            data = {**data, "rewards": {}}
        return check_engine_kind(check_task_kind(data))

    @model_validator(mode="after")
    def _derive(self) -> TrainConfig:
        """Values derived from others are filled here, once, at validation; what the user wrote is kept
        (``as_written``) and ``config.yaml`` lists the derived values apart (``resolved``)."""
        self._written = self.model_dump(mode="json", by_alias=True)
        if self.rewards.terms is None:
            self.rewards.terms = [RewardTerm(verifier=default_verifier(self.task), weight=1.0),
                                  RewardTerm(verifier="r1_format", weight=0.1)]
        if self.train.async_.enabled and self.algorithm.is_cap is None:  # stale samples need the IS correction
            self.algorithm.is_cap = 2.0
        low_precision = "bfloat16" in (self.engine.dtype, self.train.dtype)
        if low_precision and self.algorithm.is_cap is None:  # engine and learner sample from different numbers
            self.algorithm.is_cap = 2.0
        if self.engine.max_logprob_diff is None:
            self.engine.max_logprob_diff = 8.0 if low_precision else 0.5
        if self.logging.report_to is None:
            self.logging.report_to = ["tensorboard"] if self.logging.tensorboard else []
        self.logging.tensorboard = "tensorboard" in self.logging.report_to
        if self.train.gradient_checkpointing and self.train.shared_prefix:  # checkpointed layers keep no KV cache
            self.train.shared_prefix = False
        if self.cluster.learner_sharding == "fsdp":  # every FSDP forward is a collective: one per micro-batch, always
            self.train.shared_prefix = False
        algo = self.algorithm
        if algo.loss_agg == "seq-mean-token-sum-norm" and algo.loss_agg_norm is None:
            algo.loss_agg_norm = float(self.sampling.max_tokens)  # Dr.GRPO: a constant, not the batch width
        return self

    def as_written(self) -> dict[str, Any]:
        """The config as the user wrote it (with defaults): derived fields hold what was written (often None)."""
        return copy.deepcopy(self._written) if self._written is not None else self.model_dump(mode="json", by_alias=True)

    def resolved(self) -> dict[str, Any]:
        """``{"section.field": value}`` of every field validation derived from others (is_cap under async or
        bf16, the parity bound, the reward terms of the task, Dr.GRPO's normaliser, ...)."""
        now, written = flatten(self.model_dump(mode="json", by_alias=True)), flatten(self.as_written())
        return {key: value for key, value in now.items() if written.get(key, _ABSENT) != value}

    @model_validator(mode="after")
    def _check_is_mode(self) -> TrainConfig:
        if self.algorithm.is_mode == "mis" and self.algorithm.is_cap is None:
            raise ValueError("algorithm.is_mode=mis needs algorithm.is_cap (the ratio bound; importance sampling is off "
                             "without it): set algorithm.is_cap, e.g. 2")
        return self

    @model_validator(mode="after")
    def _check_cluster(self) -> TrainConfig:
        ranks, groups = self.cluster.learner_ranks, self.train.prompts_per_step
        if groups % ranks:
            raise ValueError(f"cluster.learner_ranks={ranks} does not divide train.prompts_per_step={groups}: each "
                             "rank trains on whole groups, the same number each; choose ranks that divide it")
        if self.cluster.learner_sharding == "fsdp":
            if ranks < 2:
                raise ValueError("cluster.learner_sharding=fsdp shards the policy over the learner ranks, but "
                                 f"cluster.learner_ranks={ranks}; use learner_ranks >= 2, or learner_sharding=ddp")
            if self.lora is not None:
                raise ValueError("cluster.learner_sharding=fsdp with lora is not supported yet (the adapter's state "
                                 "and the merged weights are read from an unsharded model); drop lora, or use "
                                 "cluster.learner_sharding=ddp")
            if self.algorithm.needs_critic:
                raise ValueError(f"cluster.learner_sharding=fsdp with algorithm.advantage={self.algorithm.advantage} "
                                 "(a PPO critic) is not supported yet (the critic's values are read on rank 0 "
                                 "alone); use cluster.learner_sharding=ddp")
        return self

    @model_validator(mode="after")
    def _check_layout(self) -> TrainConfig:
        c, a = self.cluster, self.train.async_
        if c.pin_cores and (c.rollout_workers < 1 or c.learner_ranks > 1 or c.address != "local"):
            raise ValueError("cluster.pin_cores splits this machine's cores between rollout workers and one learner: "
                             f"it needs cluster.rollout_workers >= 1 (got {c.rollout_workers}), learner_ranks=1 (got "
                             f"{c.learner_ranks}) and address=local (got {c.address!r})")
        if a.enabled and a.in_flight:
            if not self.engine.in_flight:
                raise ValueError(f"train.async.in_flight: engine.kind={self.engine.kind} cannot load weights between "
                                 "two decode steps; use engine.kind=static, or in_flight: false")
            if a.deterministic and c.rollout_workers > 0:
                raise ValueError("train.async.deterministic with cluster.rollout_workers > 0 is not supported yet (the "
                                 "fixed load point is kept by the engine in this process); use rollout_workers=0")
            if self.agent is not None:
                raise ValueError("train.async.in_flight with agent: is not supported yet (the agent's server "
                                 "records one version per call); drop one of them")
        return self

    @model_validator(mode="after")
    def _check_agent(self) -> TrainConfig:
        if self.agent is None:
            return self
        if self.env.kind != "single_turn":
            raise ValueError(f"agent: an agent runs its own episodes, so env.kind={self.env.kind!r} would never run; "
                             "drop the env: section (or agent:)")
        if self.cluster.rollout_workers > 0:
            raise ValueError("agent: with cluster.rollout_workers > 0 is not supported yet (the agent's server runs "
                             "beside the engine in this process); use cluster.rollout_workers=0")
        return self

    @model_validator(mode="after")
    def _check_env(self) -> TrainConfig:
        if self.env.tools() and self.task.format != "chat":  # the tools are described by the chat template
            raise ValueError(f"task.format={self.task.format}: env.call_format={getattr(self.env, 'call_format', '?')} "
                             "lists the tools and answers their calls through the tokenizer's chat template, so it "
                             "needs task.format=chat (raw prompts: env.call_format=tagged)")
        return self

    @model_validator(mode="after")
    def _check_env_task(self) -> TrainConfig:
        """An environment that runs only some tasks (``task_verifiers``: code_repair runs code tests) refuses
        the others here, before anything loads."""
        needs = type(self.env).task_verifiers
        verifier = default_verifier(self.task)
        if needs and verifier not in needs:
            kinds = sorted(k for k, t in TASKS.items() if t.verifier in needs)
            raise ValueError(f"env.kind={self.env.kind} runs tasks the {'/'.join(needs)} verifier checks (task.kind "
                             f"{', '.join(kinds)}, or hf with task.verifier={needs[0]}); task.kind={self.task.kind} "
                             f"is checked by {verifier!r}. Choose such a task, or another env.kind")
        return self

    @model_validator(mode="after")
    def _refuse_degenerate(self) -> TrainConfig:
        """Configs that would train nothing, every step, are refused here rather than run to exit 0."""
        from rlvr.algorithms.config import GROUP_ADVANTAGES

        algo = self.algorithm
        group_relative = algo.advantage in GROUP_ADVANTAGES or (algo.advantage == "reinforce_pp" and algo.group_baseline)
        if self.sampling.n < 2 and group_relative:
            raise ValueError(f"sampling.n: {algo.advantage} compares completions within a group, so n=1 gives every "
                             "advantage 0 and trains nothing; use n >= 2 (8 is usual) or a non-group estimator")
        if self.engine.sleeps and self.train.async_.enabled:
            raise ValueError("engine.sleep_level: sleep mode is for a synchronous loop (the engine sleeps while the "
                             "learner steps); use it without train.async")
        if self.lora is not None and algo.needs_critic and algo.critic_model is None:
            raise ValueError("lora: the PPO critic is copied from the policy's backbone, which LoRA wraps; set "
                             "algorithm.critic_model to a model directory, or train without lora")
        if all(t.weight == 0 for t in self.rewards.terms):
            raise ValueError("rewards.terms: every weight is 0, so every reward is 0 and nothing is learned")
        check_reward_terms(self.rewards.terms)
        return self


def check_reward_terms(terms: list[RewardTerm]) -> None:
    """Unknown verifier names and constructor arguments are config errors, before any model loads."""
    import inspect

    from verifiers import available
    from verifiers.registry import factory_of

    names = available()
    for i, term in enumerate(terms):
        if term.verifier not in names:
            raise ValueError(f"rewards.terms.{i}.verifier: unknown verifier {term.verifier!r}; available: {', '.join(names)}")
        try:
            params = inspect.signature(factory_of(term.verifier)).parameters
        except (TypeError, ValueError):  # a C callable or similar: nothing to check against
            continue
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        accepted = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n != "self"]
        for key in term.kwargs:
            if key not in accepted:
                raise ValueError(f"rewards.terms.{i}.kwargs.{key}: {term.verifier!r} takes no argument {key!r}; "
                                 f"accepted: {', '.join(accepted) or '(none)'}")


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    try:  # YAML typing (3 -> int, true -> bool, [a, b] -> list); anything unparsable stays a string
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            if part in BOOL_SECTIONS and isinstance(node.get(part), bool):  # `async: true`, then async.x=...
                node[part] = {"enabled": node[part]}
            if not isinstance(node.setdefault(part, {}), dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = node[part]
        node[path[-1]] = value
    return data


def _format_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for err in exc.errors():
        parts = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
        kind = None
        if len(parts) > 2 and parts[0] in ("engine", "task", "env"):  # a union member's tag: engine.static.x -> engine.x
            kind = parts.pop(1)
        loc = ".".join(parts) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + (f" for {parts[0]}.kind={kind}" if kind else "")
            if loc in RENAMED:
                msg += f" ({loc} was {RENAMED[loc]})"
        if re.match(r"^[a-z_]+(\.[\w]+)*: ", msg):
            lines.append(f"  {msg}")  # the validator's message already starts with the field it names
        else:
            lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def read_config(path: str | None, what: str = "config") -> dict:
    """The YAML mapping of ``path`` ({} for None), or a ``ConfigError`` naming the file (as a ``what``)."""
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{what} file not found: {path!r}")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path!r} must be a mapping at the top level")
    return data


def load_config(cls: type[Section], path: str | None, overrides: list[str] | None = None,
                data: dict | None = None) -> Any:
    """Load ``path`` (YAML; or ``data``, already read from it) into ``cls``, applying ``key.sub=value`` overrides."""
    data = read_config(path) if data is None else data
    if isinstance(data.get("rewards"), list):  # the shorthand `rewards: [...]`, so `rewards.workers=` can override
        data["rewards"] = {"terms": data["rewards"]}
    if cls is TrainConfig:
        check_preset_override(data, overrides or [], path)
    data = apply_overrides(data, overrides or [])
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, repr(path) if path else "(overrides)")) from None


def check_preset_override(data: dict, overrides: list[str], path: str | None) -> None:
    """``algorithm.preset=NAME`` on the command line over a YAML whose ``algorithm`` section sets fields that
    preset defines otherwise is an error naming them: the file's explicit fields would silently win over the
    preset the command asked for. (``algorithm=NAME`` replaces the file's whole section: the preset wins.)"""
    from rlvr.algorithms.presets import PRESETS

    asked = [(item, _parse_override(item)[1]) for item in overrides
             if _parse_override(item)[0] == ["algorithm", "preset"]]
    section = data.get("algorithm")
    if not asked or not isinstance(section, dict):
        return
    item, name = asked[-1]
    if not isinstance(name, str) or name not in PRESETS:
        return  # an unknown preset is the validator's error
    clash = [k for k in section if k != "preset" and k in PRESETS[name] and section[k] != PRESETS[name][k]
             and not any(_parse_override(o)[0] == ["algorithm", k] for o in overrides)]
    if clash:
        fields = ", ".join(f"algorithm.{k}={section[k]!r} (the preset: {PRESETS[name][k]!r})" for k in clash)
        raise ConfigError(f"{item!r} on the command line conflicts with fields {path!r} sets: {fields}; the file's "
                          "fields would win over the preset. Drop them from the file, set them on the command line "
                          "too, or name the preset in the file")


def dump_config(cfg: BaseModel, path: str | Path) -> None:
    Path(path).write_text(config_yaml(cfg))


def config_yaml(cfg: BaseModel) -> str:
    """The config as YAML; a run's config: what the user wrote, then the derived values under ``resolved:``
    (loading it back ignores that block and derives them again)."""
    if not isinstance(cfg, TrainConfig):
        return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)
    data, resolved = cfg.as_written(), cfg.resolved()
    if resolved:
        data["resolved"] = resolved
    return yaml.safe_dump(data, sort_keys=False)


_ABSENT = object()


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": leaf}`` (lists are leaves)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}
