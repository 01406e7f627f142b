"""What every engine shares, so an engine implements only its decode and its weight load.

``EngineBase.generate`` turns the prompts into token ids (text is tokenized without special
tokens; ids are used as given) and their texts, applies the one seed rule
(``SamplingConfig.prompt_seeds``: one seed per prompt, or None when unseeded), and records when
each group finished (``last_group_latencies``) as the engine announces it. The engine's
``_generate`` gets all of that and returns the groups.

``EngineBase.load_weights`` times the load (``last_sync_s``) and, for an engine that says which
names and shapes it takes (``weight_shapes``), refuses an unknown name or a wrong shape before the
tensor reaches the engine's ``_load_weights``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from rollouts.types import Group, OnGroup, Prompt, SamplingConfig


class EngineBase:
    """Base of the engines (``rollouts.types.Engine``). A subclass calls ``_set_tokenizer`` and sets
    ``startup_s`` in its constructor, and implements ``_generate`` and ``_load_weights`` (and
    ``weight_shapes`` when it can name what it takes)."""

    tokenizer: Any
    eos_id: int | None = None
    pad_id: int | None = None
    startup_s: float = 0.0
    last_sync_s: float = 0.0
    last_sync_path: str = ""  # how the latest load went, where an engine has more than one way
    last_group_latencies: list[float]
    per_prompt_max_tokens: bool = False  # honours SamplingConfig.max_tokens_each

    def _set_tokenizer(self, tokenizer) -> None:
        """The engine's tokenizer; EOS from it, and padding with its pad token (EOS when it has none)."""
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.last_group_latencies = []

    # -- generation -----------------------------------------------------------------
    def prompt_ids(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """Each prompt's token ids: text tokenized without special tokens, ids as given."""
        return [list(p) if not isinstance(p, str) else self.tokenizer(p, add_special_tokens=False)["input_ids"]
                for p in prompts]

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig,
                 on_group: OnGroup | None = None) -> list[Group]:
        prompt_ids = self.prompt_ids(prompts)
        texts = [p if isinstance(p, str) else self.tokenizer.decode(p) for p in prompts]
        seeds = sampling.prompt_seeds(len(prompts))
        if sampling.max_tokens_each is not None:
            if not self.per_prompt_max_tokens:
                raise ValueError(f"SamplingConfig.max_tokens_each: {type(self).__name__} has one max_tokens per call; "
                                 "the static engine takes one per prompt")
            if len(sampling.max_tokens_each) != len(prompts):
                raise ValueError(f"SamplingConfig.max_tokens_each: {len(sampling.max_tokens_each)} limits for "
                                 f"{len(prompts)} prompts")
        latencies = [0.0] * len(prompts)
        t0 = time.perf_counter()

        def finished(i: int, group: Group) -> None:
            latencies[i] = time.perf_counter() - t0
            if on_group is not None:
                on_group(i, group)

        groups = self._generate(prompt_ids, texts, seeds, sampling, finished)
        self.last_group_latencies = latencies
        return groups

    def _generate(self, prompt_ids: list[list[int]], texts: list[str], seeds: list[int] | None,
                  sampling: SamplingConfig, finished: OnGroup) -> list[Group]:
        """The groups of the prompts ``prompt_ids`` (``texts``: each prompt's text, for its ``Group``), sampled
        with ``seeds`` (one per prompt; None: unseeded). Call ``finished(i, group)`` once per group, as soon
        as it is complete."""
        raise NotImplementedError

    # -- weights ----------------------------------------------------------------------
    def weight_shapes(self) -> Mapping[str, torch.Size] | None:
        """The parameter names this engine takes and their shapes (None: it checks names itself)."""
        return None

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        t0 = time.perf_counter()
        shapes = self.weight_shapes()
        self._load_weights(named_tensors if shapes is None else _checked(named_tensors, shapes))
        self.last_sync_s = time.perf_counter() - t0

    def _load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Put each ``(name, tensor)`` (the model's own parameter names) into the engine."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _checked(named_tensors: Iterable[tuple[str, torch.Tensor]],
             shapes: Mapping[str, torch.Size]) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors as they come, each checked first: an unknown name is a KeyError, a wrong shape a ValueError."""
    for name, tensor in named_tensors:
        shape = shapes.get(name)
        if shape is None:
            raise KeyError(f"load_weights: unknown parameter {name!r}")
        if tuple(shape) != tuple(tensor.shape):
            raise ValueError(f"load_weights: {name!r} has shape {tuple(tensor.shape)}, the engine's is {tuple(shape)}")
        yield name, tensor
