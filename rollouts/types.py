"""Engine-neutral rollout types shared by every engine."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol, Union

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to its first stop string (like vLLM, the stop string is not part of the text)."""
    for s in stop:
        if s in text:
            text = text[: text.index(s)]
    return text


def prompt_seeds(seed: int, n: int) -> list[int]:
    """The one seed rule: the i-th of ``n`` prompts sampled with ``seed`` gets ``seed * 1_000_003 + i``
    (what a call with ``seed`` and no ``seeds`` uses in every engine, and what a driver that splits
    the prompts over workers sends, so both sample alike)."""
    return [seed * 1_000_003 + i for i in range(n)]


@dataclass
class SamplingConfig:
    """How to sample. ``n`` completions per prompt form one group."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128
    stop: Sequence[str] = ()
    seed: int | None = None
    # One seed per prompt (overrides ``seed``): a prompt's samples then depend on its own seed only,
    # not on which other prompts share the call, so a driver can split prompts over workers freely.
    # Without it, every engine gives the i-th prompt of a call the seed ``prompt_seeds(seed, n)[i]``.
    seeds: Sequence[int] | None = None
    # One limit per prompt (each at most ``max_tokens``, which sizes the engine's buffers): a prompt's
    # samples are cut at its own limit. Only engines with ``per_prompt_max_tokens`` take it (the static
    # one); the rollout bench uses it to give prompts fixed, long-tailed lengths.
    max_tokens_each: Sequence[int] | None = None
    ignore_eos: bool = False  # benchmarks: force equal lengths across engines
    detokenize: bool = True  # benchmarks of random-init models: token ids only, text left empty

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingConfig.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.seeds is not None and self.seed is not None:
            raise ValueError("SamplingConfig: give seed or seeds (one per prompt), not both")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingConfig.max_tokens must be >= 1, got {self.max_tokens}")
        bad = [m for m in self.max_tokens_each or () if not 1 <= m <= self.max_tokens]
        if bad:
            raise ValueError(f"SamplingConfig.max_tokens_each: {bad[0]} is outside 1..max_tokens ({self.max_tokens})")

    def prompt_seeds(self, n: int) -> list[int] | None:
        """One seed per prompt for a call of ``n`` prompts: ``seeds``, else the rule applied to ``seed``,
        else None (unseeded). A wrong number of ``seeds`` is an error."""
        if self.seeds is not None:
            if len(self.seeds) != n:
                raise ValueError(f"SamplingConfig.seeds: {len(self.seeds)} seeds for {n} prompts")
            return list(self.seeds)
        return None if self.seed is None else prompt_seeds(self.seed, n)


@dataclass
class Completion:
    """One sampled continuation. ``logprobs[i]`` is log p(token_ids[i]) under the engine's
    sampling distribution *before* temperature/top-p (i.e. the model's own log-prob)."""

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS or stop string) | "length"
    # For each sampled token, the ``version`` of the weights that sampled it (``load_weights(..., version)``;
    # -1: sampled before any version was given); None when the engine never had a version.
    versions: list[int] | None = None


@dataclass
class Group:
    prompt: str
    prompt_ids: list[int]
    completions: list[Completion] = field(default_factory=list)


# A prompt is text (the engine tokenizes it, adding no special tokens) or token ids, used as is:
# ids let the caller guarantee the engine and the learner see the same prompt tokens.
Prompt = Union[str, list[int]]  # noqa: UP007
# Called with (prompt index, its finished group) as soon as a group is complete, so the caller can
# start scoring it while the other groups still generate. Called from the generating thread.
OnGroup = Callable[[int, Group], None]


class Engine(Protocol):
    """A rollout engine (``rollouts.base.EngineBase`` implements all of it around an engine's decode).

    ``submit`` queues one prompt at any time, from any thread; the future resolves to its group of
    ``sampling.n`` completions. ``step`` is one scheduler iteration by the thread that owns the engine
    (admit queued prompts, decode one token per running row, resolve complete groups; an engine with
    ``steps_tokens`` False runs everything queued as one batched call instead) and returns how many rows
    or requests are still running or queued (0: idle). ``start`` gives the engine to a background thread
    that steps while there is work; ``close`` stops it and fails what is pending. ``generate`` is
    ``submit`` for each prompt and ``step`` until they are done. ``load_weights`` is applied between two
    steps without dropping running rows; ``version`` becomes ``engine.version``, which every token sampled
    afterwards records (``Completion.versions``)."""

    steps_tokens: bool
    version: int | None

    def submit(self, prompt: Prompt, sampling: SamplingConfig, seed: int | None = None) -> Future: ...

    def step(self) -> int: ...

    def start(self): ...

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig,
                 on_group: OnGroup | None = None) -> list[Group]: ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None: ...

    def close(self) -> None: ...
