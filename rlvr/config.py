"""Typed, validated run configuration (pydantic).

A YAML file holds only what differs from the defaults; ``key.sub=value`` arguments on the
command line override it. An unknown key, a wrong type or a missing file is one error that
names the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlvr.algorithms.config import AlgorithmConfig
from rlvr.tasks import R1_TEMPLATE


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(ValueError):
    """A configuration problem; the message names the file and field."""


class TaskConfig(Section):
    name: Literal["arith", "file"] = Field("arith", description="'arith': procedural integer chains; 'file': local JSONL/parquet.")
    seed: int = Field(0, description="Seed for problem sampling and the train/test shuffle.")
    min_ops: int = Field(2, ge=1, le=8, description="arith: fewest +/- operations in a chain.")
    max_ops: int = Field(4, ge=1, le=8, description="arith: most +/- operations in a chain.")
    max_start: int = Field(20, ge=1, description="arith: the first number is drawn from [1, max_start].")
    max_operand: int = Field(9, ge=1, description="arith: each operand is drawn from [1, max_operand].")
    max_value: int = Field(40, ge=1, description="arith: every intermediate value stays in [0, max_value].")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="arith: share of the problem space (by hash) reserved for test.")
    train_size: int = Field(4000, ge=1, description="Number of training prompts (arith).")
    test_size: int = Field(200, ge=1, description="Number of held-out prompts.")
    template: str = Field(R1_TEMPLATE, description="Prompt template with a {question} slot (R1-Zero style).")
    path: str | None = Field(None, description="file: JSONL or parquet with one problem per row.")
    test_path: str | None = Field(None, description="file: separate held-out file (else a split of `path`).")
    prompt_column: str = Field("question", description="file: column holding the question.")
    answer_column: str = Field("answer", description="file: column holding the reference answer.")

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if self.min_ops > self.max_ops:
            raise ValueError("task.min_ops must be <= task.max_ops")
        if "{question}" not in self.template:
            raise ValueError("task.template must contain '{question}'")
        if self.name == "file":
            if self.path is None:
                raise ValueError("task.path is required when task.name is 'file'")
            for key in ("path", "test_path"):
                value = getattr(self, key)
                if value is not None and not Path(value).is_file():
                    raise ValueError(f"task.{key}: no such file {value!r}")
        return self


class ModelArchConfig(Section):
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
        description="Share of short worked-arithmetic documents without the R1 template (teach the steps cheaply).",
    )


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
    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelArchConfig = Field(default_factory=ModelArchConfig)
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    train: PretrainTrainConfig = Field(default_factory=PretrainTrainConfig)


class EngineConfig(Section):
    kind: Literal["hf", "vllm"] = Field("hf", description="Rollout engine: 'vllm' (fast) or 'hf' (transformers reference).")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Engine dtype; float32 keeps log-probs in parity with the learner.")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vLLM on GPU: share of memory for the engine.")
    kv_cache_gib: float = Field(1.0, gt=0, description="vLLM on CPU: KV cache size in GiB.")
    threads: int = Field(0, ge=0, description="Engine threads (0: all cores; with `train.async`, the cores the learner leaves).")
    enforce_eager: bool = Field(True, description="vLLM: skip graph compilation (faster start-up).")
    max_logprob_diff: float = Field(
        0.5, gt=0,
        description="Parity gate: stop the run when any sampled token's engine log-prob differs from the "
        "learner's recomputation by more than this many nats (float32 engines stay below 1e-4).",
    )


class SamplingSection(Section):
    n: int = Field(8, ge=1, description="Completions per prompt (the group size).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature for training rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    max_tokens: int = Field(64, ge=1, description="Longest completion in tokens.")


class RewardTerm(Section):
    verifier: str = Field(description="Registered verifier name (see `verifiers.available()`).")
    weight: float = Field(1.0, description="Weight in the reward sum; 0 logs without rewarding.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments for the verifier.")


class OptimConfig(Section):
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate (constant after warm-up).")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas.")
    grad_clip: float = Field(1.0, gt=0, description="Max global gradient norm.")


class TrainLoopConfig(Section):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

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
    async_: bool = Field(
        False, alias="async",
        description="One-step-off-policy training: the engine samples step k+1 while the learner trains on step k "
        "(truncated IS corrects the staleness; `algorithm.is_cap` defaults to 2 then).",
    )
    max_staleness: int = Field(1, ge=1, le=8, description="async: how many steps generation may run ahead of the learner.")


class CheckpointConfig(Section):
    every: int = Field(20, ge=0, description="Full-state checkpoint every N steps (0: only at the end of the run).")
    keep: int = Field(2, ge=1, description="Newest checkpoints kept in run_dir/checkpoints.")


class EvalConfig(Section):
    every: int = Field(20, ge=0, description="Evaluate every N steps (0: only before and after).")
    num_prompts: int = Field(200, ge=1, description="Held-out prompts per evaluation.")
    k: int = Field(8, ge=1, description="Samples per prompt for pass@k.")
    temperature: float = Field(1.0, ge=0, description="Temperature of the pass@k samples.")
    max_tokens: int = Field(64, ge=1, description="Longest evaluation completion.")


class LoggingConfig(Section):
    tensorboard: bool = Field(True, description="Write TensorBoard event files to run_dir/tb.")
    progress: bool = Field(True, description="Show a progress bar.")


class TrainConfig(Section):
    model: str = Field(description="Hugging Face model directory of the starting policy.")
    run_dir: str = Field("runs/tiny-r1zero", description="Output directory: metrics, TensorBoard, checkpoint, plot.")
    task: TaskConfig = Field(default_factory=TaskConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    sampling: SamplingSection = Field(default_factory=SamplingSection)
    rewards: list[RewardTerm] = Field(
        default_factory=lambda: [RewardTerm(verifier="arith", weight=1.0), RewardTerm(verifier="r1_format", weight=0.1)],
        description="Weighted verifiers composing the reward.",
    )
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainLoopConfig = Field(default_factory=TrainLoopConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @model_validator(mode="after")
    def _async_needs_is(self) -> TrainConfig:
        if self.train.async_ and self.algorithm.is_cap is None:  # stale samples need the IS correction
            self.algorithm.is_cap = 2.0
        return self


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
            if not isinstance(node.setdefault(part, {}), dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = node[part]
        node[path[-1]] = value
    return data


def _format_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_config(cls: type[Section], path: str | None, overrides: list[str] | None = None) -> Any:
    """Load ``path`` (YAML) into ``cls``, applying ``key.sub=value`` overrides."""
    data: dict = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file not found: {path!r}")
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path!r} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config {path!r} must be a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, repr(path) if path else "(overrides)")) from None


def dump_config(cfg: BaseModel, path: str | Path) -> None:
    Path(path).write_text(config_yaml(cfg))


def config_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)
