"""A lean decode loop for small Llama-family models on CPU: static KV cache, fused weights, compiled layer.

Where the time goes when a small model generates on CPU is not the matmuls: it is per-step work
around them. transformers' ``generate`` grows its KV cache by concatenation (every step copies the
whole cache), builds masks and runs logits processors in Python; vLLM's scheduler does Python work
per sequence per step. This engine does only what sampling needs:

- the weights the learner sends are copied into fused buffers (q/k/v in one matrix, gate/up in one),
  so a layer is two matmuls in and two out;
- the KV cache is allocated once and written in place; it and the per-row work buffers are kept
  between calls (``_Buffers``). A group's prompt is prefilled and cached once
  (``[groups, kv_heads, prompt, head_dim]`` per layer), not once per sample; each sample's
  generated tokens have their own cache (``[rows, kv_heads, max_tokens, head_dim]``). Decode
  attention is CPU flash-attention calls merged through their log-sum-exps: the group's rows over
  the shared prompt (one call, the rows as extra queries) and each row over its own tokens;
- a decode layer is two ``torch.compile``d functions (norms, rotary embedding and q/k/v before the
  attention; the merge, output projection and MLP after it), so their element-wise work is fused
  into a few kernels (``compile=False``: eager);
- sampling draws one uniform per sample per step from its prompt's own generator and inverts the
  CDF: exact sampling from softmax(logits / temperature) (top-p: the nucleus renormalised), at the
  cost of one cumulative sum instead of ``multinomial``'s noise over the whole vocabulary;
- continuous batching (``refill``): rows decode at their own steps; when a quarter of the batch has
  ended, the batch is compacted and the waiting groups take the freed slots (``_Batch``), so a long
  tail of responses does not leave the batch narrow. ``refill=False``: shrink-only batching (the next
  groups start when the batch has drained), for comparison; the samples are the same;
- a prompt's samples depend on its seed only, not on the batch it shares nor when it entered, bit
  for bit: every batch is padded to a multiple of ``ROWS`` rows, a row attends over exactly its own
  tokens, and at more than one thread the attention is spelled out (see ``_attend``). Within a
  call, every prompt is left-padded to the call's longest prompt.

Supported: ``llama``, ``qwen2`` (q/k/v biases), ``qwen3`` (q/k norms), ``mistral`` without a sliding
window; tied or untied heads; default rotary embeddings. Anything else is refused by name at start-up.
Log-probs are the model's own (log-softmax of the raw logits, before temperature and top-p), as
every engine here returns them.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from rollouts.base import EngineBase
from rollouts.sampling import sample_inverse_cdf
from rollouts.types import DTYPES, Completion, Group, OnGroup, SamplingConfig, cut_at_stop, prompt_seeds

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")
# Every batch the engine computes on has a multiple of this many rows (padded with ended rows or
# repeated prompts), so that a row's numbers do not depend on how many rows share it: CPU GEMM
# libraries take other code paths for a few rows (MKL on AVX2: 1-3 rows at one thread, up to 11 at
# two, round differently from 12 or more), and an element-wise op computes the tail of a tensor
# that does not fill its last vector register with scalar code (sigmoid, exp: other roundings).
# 16 floats fill an AVX-512 register.
ROWS = 16


def _round_up(k: int, multiple: int = ROWS) -> int:
    return -(-k // multiple) * multiple


class _Layer(NamedTuple):
    """One decoder layer's weights in the engine's layout (``F.linear``'s [out, in]). A tuple, so
    every layer is the same input to the compiled function (no per-object guards)."""

    norm1: torch.Tensor
    qkv: torch.Tensor  # [(heads + 2 kv_heads) * head_dim, hidden]
    qkv_bias: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    o: torch.Tensor
    norm2: torch.Tensor
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    down: torch.Tensor


def check_supported(config) -> None:
    """Raise ``ValueError`` naming the field when this engine cannot run ``config`` exactly."""
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED:
        raise ValueError(f"static engine: model_type {kind!r} is not supported (supported: {', '.join(SUPPORTED)}); "
                         "use engine.kind=vllm or hf")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"static engine: rope type {rope.get('rope_type', rope.get('type'))!r} is not supported "
                         "(default rotary embeddings only); use engine.kind=vllm or hf")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"static engine: hidden_act {config.hidden_act!r} is not supported (silu only)")
    if getattr(config, "use_sliding_window", False) or (kind == "mistral" and getattr(config, "sliding_window", None)):
        raise ValueError("static engine: sliding-window attention is not supported; use engine.kind=vllm or hf")
    if getattr(config, "mlp_bias", False):
        raise ValueError("static engine: mlp_bias is not supported; use engine.kind=vllm or hf")


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as transformers computes it: in float32, cast back, then scaled."""
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def _layer(x, w: _Layer, k_cache, v_cache, cos, sin, start: int, mask, heads: int, kv_heads: int, eps: float,
           gqa: bool):
    """One decoder layer over ``x`` [B, S, hidden] at cache positions ``start .. start + S``; writes
    those positions' keys and values into ``k_cache`` / ``v_cache`` [B, kv_heads, T, head_dim] and
    attends over ``0 .. start + S`` with ``mask`` [B, 1, S, start + S] (True: attend)."""
    B, S, _ = x.shape
    d = k_cache.shape[-1]
    h = F.linear(_rms(x, w.norm1, eps), w.qkv, w.qkv_bias)
    q, k, v = h.split([heads * d, kv_heads * d, kv_heads * d], -1)
    q = q.view(B, S, heads, d)
    k = k.view(B, S, kv_heads, d)
    if w.q_norm is not None:  # qwen3: per-head RMSNorm before the rotary embedding
        q, k = _rms(q, w.q_norm, eps), _rms(k, w.k_norm, eps)
    q = _rotate(q.transpose(1, 2), cos, sin)
    k = _rotate(k.transpose(1, 2), cos, sin)
    k_cache[:, :, start : start + S] = k
    v_cache[:, :, start : start + S] = v.view(B, S, kv_heads, d).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k_cache[:, :, : start + S], v_cache[:, :, : start + S], attn_mask=mask,
                                       enable_gqa=gqa)
    x = x + F.linear(o.transpose(1, 2).reshape(B, S, heads * d), w.o)
    gate, up = F.linear(_rms(x, w.norm2, eps), w.gate_up).chunk(2, -1)
    return x + F.linear(F.silu(gate) * up, w.down)


def _attend(q, k, v, mask=None):
    """Attention output and its log-sum-exp per query (float32). At one thread, the CPU flash kernel;
    at more, that kernel divides a one-query attention between threads in a way that depends on the
    batch (a row's output changes with the batch size and the row's place in it), so the same
    softmax is spelled out in batched matmuls and row-wise reductions, which compute each row alike
    in any batch."""
    if torch.get_num_threads() == 1:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask)
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5  # [B, H, Q, L]
    if mask is not None:
        scores = scores + mask
    top = scores.amax(-1, keepdim=True)
    p = (scores - top).exp_()
    total = p.sum(-1, keepdim=True)
    return ((p @ v.float()) / total).to(q.dtype), (top + total.log()).squeeze(-1)


def _decode_in(x, w: _Layer, cos, sin, heads: int, kv_heads: int, eps: float):
    """A decode layer up to attention, for one new token per row (``x`` [B, hidden]): the query
    [B, kv_heads, heads per KV head, head_dim] and the new key and value [B, kv_heads, head_dim]."""
    B, d = x.shape[0], cos.shape[-1]
    h = F.linear(_rms(x, w.norm1, eps), w.qkv, w.qkv_bias)
    q, k, v = h.split([heads * d, kv_heads * d, kv_heads * d], -1)
    q, k = q.view(B, heads, d), k.view(B, kv_heads, d)
    if w.q_norm is not None:  # qwen3: per-head RMSNorm before the rotary embedding
        q, k = _rms(q, w.q_norm, eps), _rms(k, w.k_norm, eps)
    return _rotate(q, cos, sin).view(B, kv_heads, heads // kv_heads, d), _rotate(k, cos, sin), v.view(B, kv_heads, d)


def _decode_out(x, w: _Layer, shared, shared_lse, own, own_lse, eps: float):
    """The rest of a decode layer: the two attentions merged through their log-sum-exps (the prompt's
    share of the whole softmax is ``sigmoid(lse_prompt - lse_own)``), the output projection and the MLP."""
    share = torch.sigmoid(shared_lse - own_lse)[..., None]
    o = (shared.float() * share + own.float() * (1 - share)).to(x.dtype)
    x = x + F.linear(o.reshape(x.shape[0], -1), w.o)
    gate, up = F.linear(_rms(x, w.norm2, eps), w.gate_up).chunk(2, -1)
    return x + F.linear(F.silu(gate) * up, w.down)


def _own_inductor_cache() -> None:
    """Point inductor's on-disk cache at a directory of this CPU dispatch level and thread count
    (unless the user chose one). torch 2.13 keys its cached kernels without ``ATEN_CPU_CAPABILITY``:
    a kernel compiled in an AVX-512 process and loaded in a process run at
    ``ATEN_CPU_CAPABILITY=avx2`` (or the reverse) computed garbage or crashed (``free(): invalid
    pointer``) here; separate directories computed right in both. Nor does it key them on the
    thread count (pytorch/pytorch#184444: serial kernels served to a multi-threaded process)."""
    import os

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    default = os.path.abspath(default_cache_dir())  # importing transformers already sets the variable to it
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR", default) == default:
        level = torch.backends.cpu.get_cpu_capability().lower()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{default}-{level}-{torch.get_num_threads()}threads"


class StaticCacheEngine(EngineBase):
    """``Engine`` for small Llama-family models on CPU (see the module docstring).

    ``max_batch`` bounds the rows decoded together, and ``kv_cache_gib`` the memory of the KV cache
    (a long prompt or ``max_tokens`` means fewer groups at once; the padding rows of ``ROWS`` come on
    top); ``compile`` compiles the decode layer with inductor (the first ``generate`` then pays a
    one-off compile of ~10-30 s; eager when the compile fails, with a warning); ``refill`` lets
    waiting groups into a running batch (continuous batching; False: shrink-only)."""

    per_prompt_max_tokens = True

    def __init__(self, model_dir: str, dtype: str = "float32", max_batch: int = 256, kv_cache_gib: float = 2.0,
                 threads: int = 0, compile: bool = True, refill: bool = True, model=None):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        if threads:
            torch.set_num_threads(threads)
        config = model.config if model is not None else AutoConfig.from_pretrained(model_dir)
        check_supported(config)
        self._set_tokenizer(AutoTokenizer.from_pretrained(model_dir))
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype])
        self.dtype = DTYPES[dtype]
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        rope = getattr(config, "rope_parameters", None) or {}
        theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        self.max_batch = max_batch
        self.kv_cache_bytes = kv_cache_gib * 2**30
        self._build(model)
        self._compile = compile
        self._decode_fns = None
        self.refill = refill
        self._buffers = _Buffers()
        self._buffers_busy = threading.Lock()
        self.startup_s = time.perf_counter() - t0
        self.last_sync_path = "copy"

    # -- weights ----------------------------------------------------------------------
    @torch.no_grad()
    def _build(self, model) -> None:
        """Own copies of the weights in the fused layout, and the map from each of the model's
        parameter names to the slice of an engine buffer it fills (what ``load_weights`` copies into)."""
        sd = {k: v.detach().to(self.dtype) for k, v in model.state_dict().items()}
        nq, nkv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.targets: dict[str, torch.Tensor] = {}

        def own(name: str) -> torch.Tensor:
            t = sd[name].clone().contiguous()
            self.targets[name] = t
            return t

        def fused(names: list[str], sizes: list[int]) -> torch.Tensor:
            buf = torch.cat([sd[n] for n in names], 0).contiguous()
            for name, part in zip(names, buf.split(sizes, 0)):
                self.targets[name] = part
            return buf

        self.layers: list[_Layer] = []
        i = 0
        while f"model.layers.{i}.input_layernorm.weight" in sd:
            p = f"model.layers.{i}."
            a = p + "self_attn."
            qkv_names = [a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"]
            bias_names = [a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"]
            has_bias = bias_names[0] in sd
            inter = sd[p + "mlp.gate_proj.weight"].shape[0]
            if sd.get(a + "o_proj.bias") is not None:
                raise ValueError(f"static engine: {a}o_proj.bias is not supported; use engine.kind=vllm or hf")
            self.layers.append(_Layer(
                norm1=own(p + "input_layernorm.weight"),
                qkv=fused(qkv_names, [nq, nkv, nkv]),
                qkv_bias=fused(bias_names, [nq, nkv, nkv]) if has_bias else None,
                q_norm=own(a + "q_norm.weight") if a + "q_norm.weight" in sd else None,
                k_norm=own(a + "k_norm.weight") if a + "k_norm.weight" in sd else None,
                o=own(a + "o_proj.weight"),
                norm2=own(p + "post_attention_layernorm.weight"),
                gate_up=fused([p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"], [inter, inter]),
                down=own(p + "mlp.down_proj.weight"),
            ))
            i += 1
        self.embed = own("model.embed_tokens.weight")
        self.norm = own("model.norm.weight")
        if self.tied or "lm_head.weight" not in sd:
            self.head = self.embed
            self.targets.setdefault("lm_head.weight", self.embed)
        else:
            self.head = own("lm_head.weight")

    def weight_shapes(self) -> dict[str, torch.Size]:
        return {name: t.shape for name, t in self.targets.items()}

    @torch.no_grad()
    def _load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy each ``(name, tensor)`` into the engine buffer slice it fills."""
        for name, tensor in named_tensors:
            target = self.targets[name]
            if target.data_ptr() != tensor.data_ptr():  # a tied head sends the embedding twice
                target.copy_(tensor)

    def close(self) -> None:
        super().close()
        self.layers, self.targets = [], {}
        self._buffers = _Buffers()

    # -- generation -------------------------------------------------------------------
    def _generate(self, prompt_ids: list[list[int]], texts: list[str], seeds: list[int] | None,
                  sampling: SamplingConfig, on_group: OnGroup) -> list[Group]:
        if any(not ids for ids in prompt_ids):
            raise ValueError("static engine: an empty prompt (no tokens) cannot be continued")
        # unseeded: a random base from secrets, not torch.seed() (it reseeds the global RNG)
        seeds = seeds or prompt_seeds(secrets.randbits(31), len(prompt_ids))
        groups = [Group(t, ids, [None] * sampling.n) for t, ids in zip(texts, prompt_ids)]
        missing = [sampling.n] * len(prompt_ids)

        def finished(row: tuple[int, int], completion: Completion) -> None:
            g, j = row
            groups[g].completions[j] = completion
            missing[g] -= 1
            if missing[g] == 0:
                on_group(g, groups[g])

        # whole groups in the batch, so a group's rows share its prompt's cache and generator
        width = max(map(len, prompt_ids))
        capacity = max(1, min(self.max_batch // sampling.n, int(self.kv_cache_bytes // self._group_bytes(width,
                                                                                                          sampling))))
        # the kept buffers serve one call at a time; a call made while another runs (another thread) gets its own
        own = self._buffers_busy.acquire(blocking=False)
        try:
            _Batch(self, self._buffers if own else _Buffers(), prompt_ids, seeds, sampling, capacity, width,
                   finished).run()
        finally:
            if own:
                self._buffers_busy.release()
        return groups

    def _group_bytes(self, width: int, sampling: SamplingConfig) -> int:
        """KV-cache bytes of one group: its prompt once, each of its n samples' generated tokens."""
        per_position = 2 * len(self.layers) * self.kv_heads * self.head_dim * self.embed.element_size()
        return per_position * (width + sampling.n * sampling.max_tokens)

    def _layer_fns(self):
        """The decode layer's two halves around its attention, with the head counts and eps bound as
        constants, compiled on first use."""
        if self._decode_fns is None:
            heads, kv_heads, eps = self.heads, self.kv_heads, self.eps

            def before(x, w, cos, sin):
                return _decode_in(x, w, cos, sin, heads, kv_heads, eps)

            def after(x, w, shared, shared_lse, own, own_lse):
                return _decode_out(x, w, shared, shared_lse, own, own_lse, eps)

            self._decode_fns = before, after
            if self._compile:
                _own_inductor_cache()
                try:
                    self._decode_fns = torch.compile(before, dynamic=True), torch.compile(after, dynamic=True)
                except Exception as exc:  # noqa: BLE001 - no compiler on this machine: eager still works
                    warnings.warn(f"static engine: torch.compile failed ({exc}); decoding eagerly", stacklevel=2)
        return self._decode_fns

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, 1, S, head_dim] for ``positions`` [B, S], computed in float32 as transformers does."""
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat([freqs, freqs], -1)
        return emb.cos()[:, None].to(self.dtype), emb.sin()[:, None].to(self.dtype)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits of ``x`` [B, hidden], B padded to a multiple of ``ROWS`` (see there)."""
        rows = x.shape[0]
        if rows % ROWS:
            x = torch.cat([x, x[:1].expand(_round_up(rows) - rows, -1)])
        return F.linear(_rms(x, self.norm, self.eps), self.head).float()[:rows]

    def _ended_now(self, live: list[int], steps: list[int], nxt: torch.Tensor, out_ids: torch.Tensor,
                   sampling: SamplingConfig) -> list[int]:
        """Which of the rows ``live`` (batch slots; ``steps``: each one's step) end at this step: EOS, or a
        stop string in the text of their last tokens. Positions in ``live``."""
        eos = set(torch.nonzero(nxt == self.eos_id).flatten().tolist()) if not sampling.ignore_eos else set()
        if not sampling.stop:
            return sorted(eos)
        tail_len = max(len(s) for s in sampling.stop) + 8
        out = []
        for pos, (row, t) in enumerate(zip(live, steps)):
            if pos in eos:
                out.append(pos)
                continue
            tail = self.tokenizer.decode(out_ids[row, max(0, t + 1 - tail_len) : t + 1].tolist(), skip_special_tokens=True)
            if any(s in tail for s in sampling.stop):
                out.append(pos)
        return out

    def _completion(self, ids: torch.Tensor, lps: torch.Tensor, reason: str, sampling: SamplingConfig) -> Completion:
        token_ids = ids.tolist()
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True) if sampling.detokenize else ""
        return Completion(cut_at_stop(text, sampling.stop), token_ids, lps.tolist(), reason)


class _Buffers:
    """The engine's KV cache and per-row work buffers, kept between ``generate`` calls: each is one flat
    tensor, allocated when a call first needs it, grown (never shrunk) when a later call needs more,
    and viewed in each call's shapes. Buffers over glibc's mmap threshold (32 MiB) that were freed after
    every call were mapped afresh each time and page-faulted again on first touch; kept, they are
    faulted once. ``close`` drops them."""

    def __init__(self):
        self.flat: dict[str, torch.Tensor] = {}

    def view(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self.flat.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            self.flat.pop(name, None)  # free the old one before the new one is allocated
            buf = self.flat[name] = torch.empty(numel, dtype=dtype)
        return buf[:numel].view(shape)

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.flat.values())


class _Batch:
    """One ``generate`` call's decode: the rows in the batch, in slot order, and the groups waiting.

    Row ``i`` of the batch is slot ``i`` of every per-row buffer; a group's ``n`` rows enter together
    at the end, after the rows already there, and its prompt takes the next group slot. A row that
    ends stays in its slot (decoded, its results unused) until a quarter of the batch has ended; then
    the batch is compacted in order (the rows still running, and enough ended ones to keep
    a multiple of ``ROWS``) and, with ``engine.refill``, topped up with waiting groups: continuous batching.
    Without it, the next groups enter only once every row has ended (shrink-only batching).

    Each row has its own step (tokens sampled so far), which is its cache position, its rotary
    position and the index of its uniform. Rows that entered together share their step and sit next
    to each other (entering appends, compacting keeps order), so the attention over the rows' own
    tokens is one flash-attention call per such run, over exactly that row's tokens. Nothing a row
    computes depends on which other rows share the batch or when it entered."""

    def __init__(self, engine: StaticCacheEngine, buffers: _Buffers, prompt_ids: list[list[int]], seeds: list[int],
                 sampling: SamplingConfig, capacity: int, width: int, finished):
        e = self.e = engine
        self.prompt_ids, self.seeds, self.sampling, self.finished = prompt_ids, seeds, sampling, finished
        self.limits = list(sampling.max_tokens_each or [sampling.max_tokens] * len(prompt_ids))
        self.n, self.T, self.W, self.capacity = sampling.n, sampling.max_tokens, width, capacity
        rows, gslots = capacity * self.n + ROWS * (self.n + 1), capacity + 2 * ROWS
        shape, buf = (e.kv_heads, e.head_dim), buffers
        self.gen = buf.view("gen_kv", (len(e.layers), 2, rows, shape[0], self.T, shape[1]), e.dtype)
        self.prompt = buf.view("prompt_kv", (len(e.layers), 2, gslots, shape[0], width, shape[1]), e.dtype)
        self.pmask = buf.view("prompt_mask", (gslots, 1, 1, width), e.dtype)
        self.uniforms = buf.view("uniforms", (rows, self.T), torch.float32)
        self.out_ids = buf.view("token_ids", (rows, self.T), torch.long)
        self.out_lp = buf.view("logprobs", (rows, self.T), torch.float32)
        self.logits = buf.view("logits", (rows, e.head.shape[0]), torch.float32)
        self.cur = buf.view("tokens", (rows,), torch.long)  # each row's latest token
        self.plen = buf.view("prompt_lens", (rows,), torch.long)
        self.row: list[tuple[int, int] | None] = []  # per slot: (group, sample); None: padding
        self.gslot: list[int] = []  # per slot: its group's slot
        self.j: list[int] = []  # per slot: which of its group's n rows it is
        self.entry: list[int] = []  # per slot: the step at which it samples its first token
        self.done: list[bool] = []  # per slot: ended (or padding)
        self.groups: list[int] = []  # per group slot: the call's group index (-1: padding)
        self.queue = deque(range(len(prompt_ids)))
        self.step = 0
        self._layout = None  # see layout()

    @torch.inference_mode()
    def run(self) -> None:
        while self.queue or not all(self.done):
            old = self.reshape()
            if not all(self.done[:old]):
                self.decode(old)
            self.step += 1
            self.sample()

    def t(self, i: int) -> int:
        """Slot ``i``'s step (an ended row's stops at the last position)."""
        return min(self.step - self.entry[i], self.T - 1)

    # -- sampling -----------------------------------------------------------------------
    def sample(self) -> None:
        """Each running row draws its next token from its logits and its uniform for its step. Every row
        of the batch is drawn (a multiple of ``ROWS``), the ended ones' draws thrown away."""
        live = [i for i, d in enumerate(self.done) if not d]
        if not live:
            return
        everyone = len(self.row)
        steps = (self.step - torch.tensor(self.entry)).clamp_(max=self.T - 1)
        nxt, lp = sample_inverse_cdf(self.logits[:everyone], self.uniforms[torch.arange(everyone), steps],
                                     self.sampling)
        idx = torch.tensor(live)
        pos, nxt, lp = steps[idx], nxt[idx], lp[idx]
        self.out_ids[idx, pos], self.out_lp[idx, pos], self.cur[idx] = nxt, lp, nxt
        steps = pos.tolist()
        stopped = set(self.e._ended_now(live, steps, nxt, self.out_ids, self.sampling))
        for p, (i, t) in enumerate(zip(live, steps)):
            g, j = self.row[i]
            if p in stopped or t + 1 == self.limits[g]:
                self.done[i] = True
                reason = "stop" if p in stopped else "length"
                self.finished((g, j), self.e._completion(self.out_ids[i, : t + 1], self.out_lp[i, : t + 1], reason,
                                                         self.sampling))

    # -- the batch's shape ----------------------------------------------------------------
    def reshape(self) -> int:
        """Compact the batch and let waiting groups in, when it is time (see the class docstring).
        Returns how many slots (the first ones) hold rows that were there before this step."""
        live = [i for i, d in enumerate(self.done) if not d]
        admit = 0
        if self.queue and (self.e.refill or not live):
            admit = min(len(self.queue), self.capacity - len({self.gslot[i] for i in live}))
        dead = [i for i, d in enumerate(self.done) if d]
        kept = sorted(live + dead[: _round_up(len(live)) - len(live)])
        if live and len(kept) > 0.75 * len(self.row):
            return len(self.row)  # not yet: a quarter of the batch has not ended
        if len(kept) < len(self.row):
            self.compact(kept)
        old = len(self.row)
        if admit:
            self.admit([self.queue.popleft() for _ in range(admit)])
        return old

    def compact(self, kept: list[int]) -> None:
        """Keep the slots ``kept`` (ascending), moved to the front in order, and their groups' prompts."""
        self._layout = None
        k, sel = len(kept), torch.tensor(kept, dtype=torch.long)
        tmax = max((self.t(i) for i in kept), default=0) + 1
        self.gen[:, :, :k, :, :tmax] = self.gen[:, :, sel, :, :tmax]
        for b in (self.uniforms, self.out_ids, self.out_lp, self.cur, self.plen):  # (logits: all consumed)
            b[:k] = b[sel]
        gkept = sorted({self.gslot[i] for i in kept})
        place = {g: p for p, g in enumerate(gkept)}
        gsel = torch.tensor(gkept, dtype=torch.long)
        self.prompt[:, :, : len(gkept)] = self.prompt[:, :, gsel]
        self.pmask[: len(gkept)] = self.pmask[gsel]
        self.row, self.j, self.entry, self.done = ([xs[i] for i in kept] for xs in (self.row, self.j, self.entry,
                                                                                    self.done))
        self.gslot = [place[self.gslot[i]] for i in kept]
        self.groups = [self.groups[g] for g in gkept]

    def admit(self, new: list[int]) -> None:
        """Put the groups ``new`` (and padding groups, until the batch has a multiple of ``ROWS`` rows) at
        the end of the batch: prefill their prompts, draw their uniforms, keep their first logits."""
        self._layout = None
        pad = 0
        while (len(self.row) + (len(new) + pad) * self.n) % ROWS:
            pad += 1
        new = new + [-1] * pad  # padding: the first new prompt again, its rows ended from the start
        r0, g0, n = len(self.row), len(self.groups), self.n
        ids = [self.prompt_ids[g if g >= 0 else new[0]] for g in new]
        logits = self.prefill(ids, g0)
        self.logits[r0 : r0 + len(new) * n] = logits.repeat_interleave(n, 0)
        self.plen[r0 : r0 + len(new) * n] = torch.tensor([len(p) for p in ids]).repeat_interleave(n)
        self.cur[r0 : r0 + len(new) * n] = self.e.pad_id
        for k, g in enumerate(new):
            rows = slice(r0 + k * n, r0 + (k + 1) * n)
            if g >= 0:  # each prompt's uniforms for all steps, from its own generator: [n, T]
                self.uniforms[rows] = torch.rand(n, self.T, generator=torch.Generator().manual_seed(self.seeds[g]))
            else:
                self.uniforms[rows] = 0.5
            self.row += [(g, j) if g >= 0 else None for j in range(n)]
            self.gslot += [g0 + k] * n
            self.j += list(range(n))
            self.entry += [self.step + 1] * n
            self.done += [g < 0] * n
            self.groups.append(g)

    def prefill(self, ids: list[list[int]], g0: int) -> torch.Tensor:
        """Prefill the prompts ``ids`` (left-padded to the call's width) into group slots ``g0 ...``;
        their next-token logits [len(ids), vocab]. Causal over each prompt's own tokens (a pad query
        attends to itself); groups are repeated until the tokens are a multiple of ``ROWS``."""
        e, W, G = self.e, self.W, len(ids)
        ids = ids + [ids[0]] * (_round_up(G, ROWS // math.gcd(W, ROWS)) - G)
        tokens = torch.full((len(ids), W), e.pad_id, dtype=torch.long)
        valid = torch.ones(len(ids), W, dtype=torch.bool)  # prompt positions that are not left padding
        for g, seq in enumerate(ids):
            tokens[g, W - len(seq) :] = torch.tensor(seq)
            valid[g, : W - len(seq)] = False
        plen = torch.tensor([len(s) for s in ids])
        positions = (torch.arange(W)[None] - (W - plen)[:, None]).clamp(min=0)
        mask = torch.ones(W, W, dtype=torch.bool).tril()[None] & valid[:, None, :]
        mask = (mask | torch.eye(W, dtype=torch.bool)[None])[:, None]
        cos, sin = e._rope(positions)
        x = e.embed[tokens]
        for layer, w in enumerate(e.layers):
            kp = torch.empty(len(ids), e.kv_heads, W, e.head_dim, dtype=e.dtype)
            vp = torch.empty_like(kp)
            x = _layer(x, w, kp, vp, cos, sin, 0, mask, e.heads, e.kv_heads, e.eps, e.heads != e.kv_heads)
            self.prompt[layer, 0, g0 : g0 + G] = kp[:G]
            self.prompt[layer, 1, g0 : g0 + G] = vp[:G]
        self.pmask[g0 : g0 + G] = torch.zeros(G, 1, 1, W, dtype=e.dtype).masked_fill_(~valid[:G, None, None, :],
                                                                                        float("-inf"))
        return e._logits(x[:G, -1])

    # -- one decode step -----------------------------------------------------------------
    def layout(self, rows: int):
        """What a decode of slots ``0 .. rows`` needs to know of the batch's shape (kept until it changes):
        each slot's entry step [rows]; the runs of slots that entered together, as (first, end, entry);
        each slot's place in the [groups, n] grid of ``ask_prompts``; the number of groups."""
        if self._layout is None or self._layout[0] != rows:
            runs = []
            for i, first in enumerate(self.entry[:rows]):
                if runs and runs[-1][2] == first:
                    runs[-1][1] = i + 1
                else:
                    runs.append([i, i + 1, first])
            slot = torch.tensor([g * self.n + j for g, j in zip(self.gslot[:rows], self.j[:rows])])
            # the groups of these rows are the first group slots
            self._layout = rows, (torch.tensor(self.entry[:rows]), runs, slot, self.gslot[rows - 1] + 1)
        return self._layout[1]

    def decode(self, rows: int) -> None:
        """Feed slots ``0 .. rows`` their latest token; their next-token logits into ``self.logits``."""
        e = self.e
        entry, runs, slot, groups = self.layout(rows)
        steps = (self.step - entry).clamp_(max=self.T - 1)
        runs = [(a, b, min(self.step - first, self.T - 1)) for a, b, first in runs]
        x = e.embed[self.cur[:rows]]
        cos, sin = e._rope((self.plen[:rows] + steps)[:, None])
        cos, sin = cos[:, 0], sin[:, 0]  # [B, 1, head_dim]: one position per row, every head
        before, after = e._layer_fns()
        for layer, w in enumerate(e.layers):
            q, k, v = before(x, w, cos, sin)
            kg, vg = self.gen[layer, 0], self.gen[layer, 1]
            own, own_lse = [], []
            for a, b, t in runs:
                kg[a:b, :, t] = k[a:b]
                vg[a:b, :, t] = v[a:b]
                o, lse = _attend(q[a:b], kg[a:b, :, : t + 1], vg[a:b, :, : t + 1])
                own.append(o)
                own_lse.append(lse)
            own, own_lse = (torch.cat(xs) if len(xs) > 1 else xs[0] for xs in (own, own_lse))
            shared, shared_lse = self.ask_prompts(q, slot, groups, layer)
            x = after(x, w, shared, shared_lse, own, own_lse)
        self.logits[:rows] = e._logits(x)

    def ask_prompts(self, q: torch.Tensor, slot: torch.Tensor, groups: int, layer: int):
        """Attention of each row (query ``q`` [B, kv_heads, r, head_dim]) over its group's prompt. The rows
        of a group ask together, as ``n`` x r queries of one call over the prompt's keys and values, kept
        once per group (row ``i`` sits in place ``slot[i]`` of the [groups, n] grid); ``pmask`` is -inf on
        left padding."""
        G, n = groups, self.n
        B, kv, r, d = q.shape
        grid = q.new_zeros(G * n, kv, r, d)
        grid[slot] = q
        grid = grid.view(G, n, kv, r, d).transpose(1, 2).reshape(G, kv, n * r, d)
        kp, vp = self.prompt[layer, 0, :G], self.prompt[layer, 1, :G]
        shared, lse = _attend(grid, kp, vp, self.pmask[:G])
        shared = shared.view(G, kv, n, r, d).transpose(1, 2).reshape(G * n, kv, r, d)[slot]
        return shared, lse.view(G, kv, n, r).transpose(1, 2).reshape(G * n, kv, r)[slot]
