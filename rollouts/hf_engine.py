"""Reference rollout engine on plain transformers: batched group sampling with a KV cache.

The sampling loop is written out (rather than ``model.generate``) so that every returned
log-prob is exactly the model's log-softmax of the sampled token *before* temperature and
top-p, the quantity a learner recomputes, and so stop strings, seeds and finish reasons
behave the same way as in the vLLM engine.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable

import torch

from rollouts.base import EngineBase
from rollouts.sampling import sample_multinomial
from rollouts.types import DTYPES, Completion, Group, OnGroup, SamplingConfig, cut_at_stop


class HFEngine(EngineBase):
    """``Engine`` on transformers. ``max_batch`` bounds sequences decoded together."""

    def __init__(self, model_dir: str, dtype: str = "float32", max_batch: int = 256, threads: int = 0, model=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        if threads:
            torch.set_num_threads(threads)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        tokenizer.padding_side = "left"
        self._set_tokenizer(tokenizer)
        self.model = model if model is not None else AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype])
        self.model.eval()
        self.max_batch = max_batch
        self.startup_s = time.perf_counter() - t0

    # -- decode: static batching over chunks of max_batch rows ---------------------------------
    def _generate(self, prompt_ids: list[list[int]], texts: list[str], seeds: list[int] | None,
                  sampling: SamplingConfig, finished: OnGroup) -> list[Group]:
        flat = [(g, ids) for g, ids in enumerate(prompt_ids) for _ in range(sampling.n)]
        if seeds is not None:  # a generator per prompt, shared by its n rows (the same rule as every engine)
            per_prompt = [torch.Generator().manual_seed(s) for s in seeds]
            gens: torch.Generator | list[torch.Generator] = [per_prompt[g] for g, _ in flat]
        else:
            gens = torch.Generator().manual_seed(secrets.randbits(63))
        results: list[Completion] = []
        groups = [Group(p, ids, []) for p, ids in zip(texts, prompt_ids)]
        done, n = 0, sampling.n  # groups complete so far: flat holds each group's n samples in a row
        for start in range(0, len(flat), self.max_batch):
            chunk = [ids for _, ids in flat[start : start + self.max_batch]]
            results.extend(self._decode(chunk, sampling, gens[start : start + self.max_batch]
                                        if isinstance(gens, list) else gens))
            while done < len(groups) and (done + 1) * n <= len(results):  # static batching: whole chunks finish
                groups[done].completions = results[done * n : (done + 1) * n]
                finished(done, groups[done])
                done += 1
        return groups

    # -- weights: a copy into the model's parameters -----------------------------------------
    def weight_shapes(self) -> dict[str, torch.Size]:
        return {name: p.shape for name, p in self.model.named_parameters()}

    @torch.no_grad()
    def _load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.model.named_parameters())
        for name, tensor in named_tensors:
            params[name].copy_(tensor)

    def close(self) -> None:
        super().close()
        self.model = None

    # -- internals --------------------------------------------------------------------
    @torch.no_grad()
    def _decode(self, prompt_ids: list[list[int]], sampling: SamplingConfig,
                gen: torch.Generator | list[torch.Generator]) -> list[Completion]:
        from transformers import DynamicCache

        B, width = len(prompt_ids), max(map(len, prompt_ids))
        ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, width), dtype=torch.long)
        for i, seq in enumerate(prompt_ids):  # left padding
            ids[i, width - len(seq) :] = torch.tensor(seq)
            attn[i, width - len(seq) :] = 1
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out_ids: list[list[int]] = [[] for _ in range(B)]
        out_lp: list[list[float]] = [[] for _ in range(B)]
        finish = [""] * B
        texts = [""] * B
        alive = torch.ones(B, dtype=torch.bool)
        step_input, step_pos = ids, positions
        for _ in range(sampling.max_tokens):
            logits = self.model(input_ids=step_input, attention_mask=attn, position_ids=step_pos,
                                past_key_values=cache, use_cache=True).logits[:, -1].float()  # [B, V]
            logprobs = logits.log_softmax(-1)
            nxt = sample_multinomial(logits, sampling, gen)  # [B]
            lp = logprobs.gather(-1, nxt[:, None]).squeeze(-1)
            for i in torch.nonzero(alive).flatten().tolist():
                tok = int(nxt[i])
                out_ids[i].append(tok)
                out_lp[i].append(float(lp[i]))
                if tok == self.eos_id and not sampling.ignore_eos:
                    finish[i], alive[i] = "stop", False
                elif sampling.stop:
                    texts[i] = self.tokenizer.decode(out_ids[i], skip_special_tokens=True)
                    if any(s in texts[i] for s in sampling.stop):
                        finish[i], alive[i] = "stop", False
            if not alive.any():
                break
            nxt = torch.where(alive, nxt, torch.full_like(nxt, self.pad_id))
            step_input = nxt[:, None]
            step_pos = step_pos[:, -1:] + 1
            attn = torch.cat([attn, alive[:, None].long()], dim=1)
        completions = []
        for i in range(B):
            text = self.tokenizer.decode(out_ids[i], skip_special_tokens=True) if sampling.detokenize else ""
            text = cut_at_stop(text, sampling.stop)
            completions.append(Completion(text, out_ids[i], out_lp[i], finish[i] or "length"))
        return completions
