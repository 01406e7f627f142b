"""An rlvr engine in one file: ``engine.kind: example-unbatched``.

It decodes one sample at a time with transformers' KV cache: no padding, no batching, so it is
slow, but it is a complete engine. The config class (its ``kind``, its own field, its capabilities)
and the engine (its decode and its weight load, on ``rollouts.EngineBase``) live here; the
``rlvr.engines`` entry point in pyproject.toml imports this module when ``rollouts`` loads, and
from then on ``rlvr train engine.kind=example-unbatched``, ``rlvr eval --engine example-unbatched``
and ``rlvr bench rollouts`` find it through the registry. Nothing in rlvr changes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from rollouts.base import EngineBase
from rollouts.config import EngineConfigBase, register_engine
from rollouts.sampling import sample_multinomial
from rollouts.types import DTYPES, Completion, Group, SamplingConfig, cut_at_stop


@register_engine
class UnbatchedEngineConfig(EngineConfigBase):
    """One sample at a time on transformers (an example of an engine plugin)."""

    engine_path: ClassVar[str] = "rlvr_example_engine:UnbatchedEngine"
    kind: Literal["example-unbatched"] = "example-unbatched"
    max_new_tokens_cap: int = Field(4096, ge=1, description="Never decode more tokens than this per sample.")

    def engine_kwargs(self, threads: int, seed: int, separate_process: bool) -> dict[str, Any]:
        return {"dtype": self.dtype, "threads": threads, "cap": self.max_new_tokens_cap}


class UnbatchedEngine(EngineBase):
    """Each of a group's n samples decoded on its own, with the prompt's own generator (the seed rule)."""

    def __init__(self, model_dir: str, dtype: str = "float32", threads: int = 0, cap: int = 4096):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self._set_tokenizer(AutoTokenizer.from_pretrained(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype]).eval()
        self.cap = cap

    def _generate(self, prompt_ids: list[list[int]], texts: list[str], seeds: list[int] | None,
                  sampling: SamplingConfig, finished) -> list[Group]:
        groups = []
        for i, (ids, text) in enumerate(zip(prompt_ids, texts)):
            gen = torch.Generator()
            gen.manual_seed(seeds[i] if seeds is not None else secrets.randbits(63))
            group = Group(text, ids, [self._sample(ids, sampling, gen) for _ in range(sampling.n)])
            finished(i, group)
            groups.append(group)
        return groups

    @torch.no_grad()
    def _sample(self, prompt: list[int], sampling: SamplingConfig, gen: torch.Generator) -> Completion:
        from transformers import DynamicCache

        cache, step = DynamicCache(), torch.tensor([prompt])
        out, logps, reason = [], [], "length"
        for _ in range(min(sampling.max_tokens, self.cap)):
            logits = self.model(input_ids=step, past_key_values=cache, use_cache=True).logits[:, -1].float()  # [1, V]
            token = sample_multinomial(logits, sampling, gen)  # [1]
            out.append(int(token))
            logps.append(float(logits.log_softmax(-1)[0, token]))
            if out[-1] == self.eos_id and not sampling.ignore_eos:
                reason = "stop"
                break
            if sampling.stop and any(s in self.tokenizer.decode(out, skip_special_tokens=True) for s in sampling.stop):
                reason = "stop"
                break
            step = token[:, None]
        text = cut_at_stop(self.tokenizer.decode(out, skip_special_tokens=True), sampling.stop) if sampling.detokenize else ""
        return Completion(text, out, logps, reason)

    def weight_shapes(self) -> dict[str, torch.Size]:
        return {name: p.shape for name, p in self.model.named_parameters()}

    @torch.no_grad()
    def _load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.model.named_parameters())
        for name, tensor in named_tensors:
            params[name].copy_(tensor)
