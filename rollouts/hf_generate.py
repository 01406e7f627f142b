"""Baseline engine on transformers' own ``model.generate`` (benchmarks: "HF generate").

``HFEngine`` is our hand-written KV-cache loop; this class is what most RL libraries call
instead, so the throughput benchmark can report both. Log-probs come from
``output_logits`` (the raw logits before temperature/top-p), gathered at the sampled tokens:
the same quantity the other engines return. EOS is ignored through ``min_new_tokens``
(transformers masks EOS until then), so every sample has exactly ``max_tokens`` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rollouts.hf_engine import HFEngine
from rollouts.types import Completion, Group, OnGroup, Prompt, SamplingConfig, cut_at_stop


class HFGenerateEngine(HFEngine):
    """``Engine`` on ``model.generate``; ``max_batch`` sequences per ``generate`` call. Start-up,
    chunking, grouping and weight loading are ``HFEngine``'s; only the chunk decode differs."""

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig,
                 on_group: OnGroup | None = None) -> list[Group]:
        if sampling.seeds is not None:
            raise ValueError("hf-generate samples from torch's global generator: per-prompt seeds "
                             "(SamplingConfig.seeds) need the 'hf' or 'vllm' engine")
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)  # model.generate samples from the global generator
        return super().generate(prompts, sampling, on_group)

    def _decode(self, prompt_ids: list[list[int]], sampling: SamplingConfig, gen) -> list[Completion]:
        return self._model_generate(prompt_ids, sampling)

    @torch.no_grad()
    def _model_generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> list[Completion]:
        batch = self.tokenizer.pad({"input_ids": prompt_ids}, padding=True, return_tensors="pt")
        width = batch["input_ids"].shape[1]
        greedy = sampling.temperature == 0
        kwargs = dict(do_sample=not greedy, max_new_tokens=sampling.max_tokens, pad_token_id=self.pad_id,
                      eos_token_id=self.eos_id, return_dict_in_generate=True, output_logits=True)
        if not greedy:  # top_k=0: the model's generation config must not add a top-50 filter
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if sampling.ignore_eos:
            kwargs["min_new_tokens"] = sampling.max_tokens
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        out = self.model.generate(**batch, **kwargs)
        new = out.sequences[:, width:]  # [B, T]
        logits = torch.stack(out.logits, dim=1).float()  # [B, T, V] raw, before temperature/top-p
        lps = logits.log_softmax(-1).gather(-1, new[..., None]).squeeze(-1)  # [B, T]
        completions = []
        for ids, lp in zip(new.tolist(), lps.tolist()):
            finish = "length"
            if not sampling.ignore_eos and self.eos_id in ids:
                cut = ids.index(self.eos_id) + 1  # keep EOS, as vLLM and HFEngine do
                ids, lp, finish = ids[:cut], lp[:cut], "stop"
            if sampling.stop:  # a row that hit a stop string is padded afterwards: cut after the token that completed it
                cut = self._stop_cut(ids, sampling.stop)
                if cut is not None:
                    ids, lp, finish = ids[:cut], lp[:cut], "stop"
            text = self.tokenizer.decode(ids, skip_special_tokens=True) if sampling.detokenize else ""
            text = cut_at_stop(text, sampling.stop)
            completions.append(Completion(text, ids, lp, finish))
        return completions

    def _stop_cut(self, ids: list[int], stop: Sequence[str]) -> int | None:
        """Length of the shortest prefix of ``ids`` whose text contains a stop string."""
        for k in range(1, len(ids) + 1):
            text = self.tokenizer.decode(ids[:k], skip_special_tokens=True)
            if any(s in text for s in stop):
                return k
        return None
