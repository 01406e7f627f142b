"""Typed configs of the TRL stages (``rlvr midtrain``, ``rlvr sft``, ``rlvr dpo``).

Each stage reads a Hugging Face model directory (``model``) and writes one (``out_dir``). The
``trl:`` section passes through to TRL's own config class (``SFTConfig`` for midtrain and SFT,
``DPOConfig`` for DPO) under TRL's own names, so a TRL user finds ``learning_rate``,
``max_steps``, ``per_device_train_batch_size`` or ``beta`` where they expect; a key TRL does not
know is an error naming it. rlvr sets only what this CPU needs (float32, no workers, no
reporting, no intermediate saves); anything in ``trl:`` wins.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from rlvr.config import Section, TaskConfig, check_task_kind
from rlvr.tasks import ArithTask


class StageBase(Section):
    model: str = Field(description="Hugging Face model directory the stage starts from.")
    out_dir: str = Field(description="Where the stage writes its Hugging Face model directory.")
    task: TaskConfig = Field(default_factory=ArithTask, description="The task whose training split feeds the stage "
                             "(held-out problems never do; same hash split as RL and evaluation).")
    num_examples: int = Field(2000, ge=1, description="Most training problems the stage's data is made from.")
    threads: int = Field(0, ge=0, description="torch intra-op threads (0: the library default).")
    seed: int = Field(0, description="Seed for data order and initialisation of the trainer.")
    trl: dict[str, Any] = Field(default_factory=dict, description="Arguments of TRL's config class (SFTConfig / "
                                "DPOConfig), passed through as is, e.g. learning_rate, max_steps, beta.")

    @model_validator(mode="before")
    @classmethod
    def _known_task_kind(cls, data: Any) -> Any:
        return check_task_kind(data)


class MidtrainConfig(StageBase):
    """Continued pretraining on task-domain text without the answer format (TRL SFTTrainer, plain text)."""

    out_dir: str = Field("runs/midtrain", description="Where the stage writes its Hugging Face model directory.")


class SFTConfig(StageBase):
    """Supervised fine-tuning on correct step-by-step traces (TRL SFTTrainer, loss on the completion only)."""

    out_dir: str = Field("runs/sft", description="Where the stage writes its Hugging Face model directory.")


class PairsConfig(Section):
    num_prompts: int = Field(256, ge=1, description="Training prompts sampled to form pairs (each gives at most one).")
    n: int = Field(8, ge=2, description="Samples per prompt; a pair needs a correct and a wrong one among them.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    max_tokens: int = Field(48, ge=1, description="Longest sampled completion.")
    engine: str = Field("hf", description="Engine kind that samples the current model (hf, static, vllm; its "
                        "default settings, float32).")
    verifier: str | None = Field(
        None, description="Registered verifier that judges samples (None: the task's own). A sample is chosen when "
        "the verifier calls it correct, or, for a verifier without a notion of correctness (e.g. r1_format), when "
        "its reward is positive; a sample the verifier failed on (an error) is neither.")
    heldout_prompts: int = Field(64, ge=0, description="Held-out prompts sampled the same way to measure the "
                                 "chosen-over-rejected log-prob margin before and after (0: skip).")

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, kind: str) -> str:
        from rollouts.config import trainable_kinds

        if kind not in trainable_kinds():
            raise ValueError(f"pairs.engine: unknown engine {kind!r}; known: {', '.join(trainable_kinds())}")
        return kind


class DPOConfig(StageBase):
    """Preference tuning on on-policy pairs (TRL DPOTrainer): chosen = a correct sample, rejected = a wrong one."""

    out_dir: str = Field("runs/dpo", description="Where the stage writes its Hugging Face model directory.")
    pairs: PairsConfig = Field(default_factory=PairsConfig, description="How preference pairs are sampled.")
