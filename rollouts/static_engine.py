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
  generated tokens have their own cache (``[rows, kv_heads, max_tokens, head_dim]``). The prompts
  admitted at a step are prefilled together, packed token after token as rows (``_prefill_layer``);
- a decode layer is one ``torch.compile``d function: norms, rotary embedding, the cache write, the
  attention and the MLP, so everything but the four matmuls is fused into a few loops
  (``compile=False``: eager). The attention is spelled out as products and sums (``_softmax_parts``),
  one softmax over the row's group's prompt (read in place through the row's group slot) and the row's
  own tokens: compiled, it makes no intermediate tensors and reads each key once;
- sampling draws one uniform per sample per step from its prompt's own generator and inverts the
  CDF: exact sampling from softmax(logits / temperature) (top-p: the nucleus renormalised), at the
  cost of one cumulative sum instead of ``multinomial``'s noise over the whole vocabulary;
- continuous batching (``refill``): rows decode at their own steps; when a quarter of the batch has
  ended, the batch is compacted and the waiting groups take the freed slots (``_Scheduler``), so a long
  tail of responses does not leave the batch narrow. ``refill=False``: shrink-only batching (the next
  groups start when the batch has drained), for comparison; the samples are the same;
- a prompt's samples depend on its seed only, not on the batch it shares nor when it entered, bit
  for bit: every batch is padded to a multiple of ``ROWS`` rows, a row attends over exactly its own
  tokens (widths padded to ``WIDTH``, masked), and the attention computes each row on its own (no
  batched matmul or flash kernel, whose split of the work between threads depends on the batch).

Supported: ``llama``, ``qwen2`` (q/k/v biases), ``qwen3`` (q/k norms), ``mistral`` without a sliding
window; tied or untied heads; default rotary embeddings. Anything else is refused by name at start-up.
Log-probs are the model's own (log-softmax of the raw logits, before temperature and top-p), as
every engine here returns them.
"""

from __future__ import annotations

import math
import secrets
import time
import warnings
from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from rollouts.base import NO_VERSION, EngineBase
from rollouts.sampling import sample_inverse_cdf
from rollouts.types import DTYPES, Completion, Group, SamplingConfig, cut_at_stop

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")
# Every batch the engine computes on has a multiple of this many rows (padded with ended rows or
# repeated prompts), so that a row's numbers do not depend on how many rows share it: CPU GEMM
# libraries take other code paths for a few rows (MKL on AVX2: 1-3 rows at one thread, up to 11 at
# two, round differently from 12 or more), and an element-wise op computes the tail of a tensor
# that does not fill its last vector register with scalar code (sigmoid, exp: other roundings).
# 16 floats fill an AVX-512 register.
ROWS = 16


# Attention widths (a group's prompt, a row's own tokens) are padded to a multiple of this many keys,
# the padding masked: the attention of a row then has the same bits at any padded width (the kernels'
# vector loops see the same elements in the same lanes: 16 floats fill an AVX-512 register, two AVX2
# ones), so neither the longest prompt of the batch nor the longest-running row changes another row's
# numbers. Every key a step reads costs memory bandwidth, so the padding is kept to one register.
WIDTH = 16

# A batch's room for prompts and new tokens (sized from the requests queued when it starts) is rounded
# up to this many positions, so that requests a little longer that come later still join it.
ROOM = 64


# A decode step computes its rows in buckets of similar length, each bucket reading the keys of its own
# longest row, when that saves more key reads than one more call of the layer costs: about this many
# (rows x keys) on the tiny base (AVX2 EPYC, 2 threads: ~0.6 ms a layer call at 16 rows, ~0.1 us a
# row-key). A batch whose rows are all at the same length is one bucket, as before.
CALL_KEYS = 6000


def _round_up(k: int, multiple: int = ROWS) -> int:
    return -(-k // multiple) * multiple


def _buckets(widths: list[tuple[int, int]], rows: int, call: int) -> list[int]:
    """How many of ``widths``' chunks each bucket takes, in order: ``widths`` holds each chunk's (own,
    prompt) key widths for chunks of ``rows`` rows sorted from the longest rows down; a bucket of chunks
    ``j..k`` reads ``rows * (k - j) * (max own + max prompt)`` keys and costs ``call`` more (a shortest
    path over the cuts: a few dozen chunks at most)."""
    n = len(widths)
    best, cut = [0.0] + [math.inf] * n, [0] * (n + 1)
    for k in range(1, n + 1):
        own = prompt = 0
        for j in range(k - 1, -1, -1):
            own, prompt = max(own, widths[j][0]), max(prompt, widths[j][1])
            cost = best[j] + call + rows * (k - j) * (own + prompt)
            if cost < best[k]:
                best[k], cut[k] = cost, j
    sizes, k = [], n
    while k:
        sizes.append(k - cut[k])
        k = cut[k]
    return sizes[::-1]


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


def _softmax_parts(q, k, valid, gather=None):
    """Scores of queries ``q`` [B, kv_heads, r, head_dim] against keys ``k`` [*, kv_heads, L, head_dim]
    (``k[gather]`` when given: each row's group), in float32, ``-inf`` where ``valid`` [B, L] is False:
    [B, kv_heads, r, L]. A product and a sum over ``head_dim``, not a matmul: each row's numbers are
    computed alike whatever shares the batch (a batched matmul of a few rows is not), and compiled the
    whole attention is a few fused loops with no intermediate tensors."""
    if gather is not None:
        k = k[gather]
    s = (q.float()[:, :, :, None, :] * k.float()[:, :, None]).sum(-1) * q.shape[-1] ** -0.5
    return s.masked_fill(~valid[:, None, None, :], float("-inf"))


def _total(p: torch.Tensor) -> torch.Tensor:
    """``p.sum(-1)`` over a width that is a multiple of ``WIDTH``, in an order that does not depend on the
    width. Compiled, a plain sum is: inductor's loop keeps one vector accumulator, each lane summing the
    keys at its positions in order, so padding adds zeros to the same lanes. Eager, ATen's vector loop
    unrolls into chunks and finishes with a scalar tail, both of which move with the width: the sum
    runs down blocks of ``WIDTH`` keys, then across one block (compiled, that was ~7% slower in one pair of
    runs at the bench's fixed shape, hence not there)."""
    if torch.compiler.is_compiling():
        return p.sum(-1)
    return p.unflatten(-1, (-1, WIDTH)).sum(-2).sum(-1)


def _qkv(x, w: _Layer, cos, sin, heads: int, kv_heads: int, eps: float):
    """A layer up to its attention, one token per row of ``x`` [M, hidden] (``cos``/``sin`` [M, 1,
    head_dim]: each row's position): the query [M, kv_heads, heads per KV head, head_dim] and the new
    key and value [M, kv_heads, head_dim], rotated."""
    M, d = x.shape[0], cos.shape[-1]
    h = F.linear(_rms(x, w.norm1, eps), w.qkv, w.qkv_bias)
    q, k, v = h.split([heads * d, kv_heads * d, kv_heads * d], -1)
    q, k = q.view(M, heads, d), k.view(M, kv_heads, d)
    if w.q_norm is not None:  # qwen3: per-head RMSNorm before the rotary embedding
        q, k = _rms(q, w.q_norm, eps), _rms(k, w.k_norm, eps)
    return _rotate(q, cos, sin).view(M, kv_heads, heads // kv_heads, d), _rotate(k, cos, sin), v.view(M, kv_heads, d)


def _mlp(x, w: _Layer, o, eps: float):
    """The rest of a layer after its attention ``o`` [M, kv_heads, r, head_dim] (float32): the output
    projection, the residual and the MLP."""
    x = x + F.linear(o.to(x.dtype).reshape(x.shape[0], -1), w.o)
    gate, up = F.linear(_rms(x, w.norm2, eps), w.gate_up).chunk(2, -1)
    return x + F.linear(F.silu(gate) * up, w.down)


def _decode_layer(x, w: _Layer, kg, vg, kp, vp, slot, group, pos, plen, cos, sin, heads: int, kv_heads: int,
                  eps: float):
    """One decoder layer for one new token per row (``x`` [B, hidden]): row ``i``'s token at position
    ``pos[i]`` of its own keys and values, row slot ``slot[i]`` of ``kg``/``vg`` [R, kv_heads, width,
    head_dim] (written there), after its group's prompt (``kp``/``vp`` [G, kv_heads, W, head_dim], row
    ``i``'s at ``group[i]``, its first ``plen[i]`` positions). The softmax runs over the prompt's keys
    and the row's own together."""
    q, k, v = _qkv(x, w, cos, sin, heads, kv_heads, eps)
    kg[slot, :, pos], vg[slot, :, pos] = k, v
    prompt = _softmax_parts(q, kp, torch.arange(kp.shape[2], device=x.device)[None] < plen[:, None], group)
    own = _softmax_parts(q, kg, torch.arange(kg.shape[2], device=x.device)[None] <= pos[:, None], slot)
    top = torch.maximum(prompt.amax(-1), own.amax(-1))[..., None]
    prompt, own = (prompt - top).exp(), (own - top).exp()
    o = ((prompt[..., None] * vp[group].float()[:, :, None]).sum(-2)
         + (own[..., None] * vg[slot].float()[:, :, None]).sum(-2)) / (_total(prompt) + _total(own))[..., None]
    return _mlp(x, w, o, eps)


def _prefill_layer(x, w: _Layer, kp, vp, group, pos, cos, sin, heads: int, kv_heads: int, eps: float):
    """One decoder layer over the prompt tokens of several groups packed as rows (``x`` [M, hidden]):
    row ``i`` is the token at position ``pos[i]`` of the prompt in group slot ``group[i]``. Writes each
    token's key and value into its group's prompt cache ``kp``/``vp`` [G, kv_heads, W, head_dim], then
    attends each token over its own prompt's keys up to itself (causal), the same spelled-out attention
    as a decode step's: a token's numbers depend on its own prompt only, not on the prompts packed
    beside it."""
    q, k, v = _qkv(x, w, cos, sin, heads, kv_heads, eps)
    kp[group, :, pos], vp[group, :, pos] = k, v
    s = _softmax_parts(q, kp, torch.arange(kp.shape[2], device=x.device)[None] <= pos[:, None], group)
    p = (s - s.amax(-1, keepdim=True)).exp()
    return _mlp(x, w, (p[..., None] * vp[group].float()[:, :, None]).sum(-2) / _total(p)[..., None], eps)


def _compiled(fn, rows: tuple[int, ...], caches: tuple[int, ...]):
    """``fn`` compiled so that one graph serves every call. Before the first call (the compile) the sizes
    that change from call to call are marked dynamic: dim 0 of the arguments at ``rows``, dims 0 and 2
    (slots, positions) of the caches at ``caches``; head counts, the weights' widths and head_dim stay
    constants of the compiled code. And it compiles without "duck shaping": dynamo would give sizes and
    strides that happen to be equal at the first call one symbol and guard on their equality; the
    caches' strides follow the batch's room for prompts and tokens (equal in a small first batch,
    unequal in the next), so a new room recompiled the layer, without the dynamic sizes."""
    from torch.fx.experimental import _config

    graph, marked = torch.compile(fn), False

    def run(*args):
        nonlocal marked
        if not marked:
            for i in rows:
                torch._dynamo.maybe_mark_dynamic(args[i], 0)
            for i in caches:
                torch._dynamo.maybe_mark_dynamic(args[i], 0)
                torch._dynamo.maybe_mark_dynamic(args[i], 2)
            marked = True
        with _config.patch(use_duck_shape=False):
            return graph(*args)

    return run


def _layers(heads: int, kv_heads: int, eps: float, compile: bool):
    """The decode layer and the prefill layer with the head counts and eps bound as constants, each
    compiled into one graph for every call (``_compiled``) when ``compile``."""

    def decode(x, w, kg, vg, kp, vp, slot, group, pos, plen, cos, sin):
        return _decode_layer(x, w, kg, vg, kp, vp, slot, group, pos, plen, cos, sin, heads, kv_heads, eps)

    def prefill(x, w, kp, vp, group, pos, cos, sin):
        return _prefill_layer(x, w, kp, vp, group, pos, cos, sin, heads, kv_heads, eps)

    if not compile:
        return decode, prefill
    # the arguments whose rows change (x, slot, group, pos, plen, cos, sin) and the caches (kg, vg, kp, vp)
    return (_compiled(decode, rows=(0, 6, 7, 8, 9, 10, 11), caches=(2, 3, 4, 5)),
            _compiled(prefill, rows=(0, 4, 5, 6, 7), caches=(2, 3)))


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
        self._fns = None
        self.refill = refill
        self._buffers = _Buffers()
        self._sched = None
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
        self._buffers, self._sched = _Buffers(), None

    # -- requests: continuous batching, one token per step ---------------------------------
    steps_tokens = True

    def _check_request(self, request) -> None:
        if not request.prompt_ids:
            raise ValueError("static engine: an empty prompt (no tokens) cannot be continued")

    def _step(self, state) -> int:
        return self._scheduler().step(state)

    def _running(self) -> int:
        sched = self.__dict__.get("_sched")
        return 0 if sched is None else sched.live_rows()

    def _fail_running(self, exc: BaseException) -> None:
        sched = self.__dict__.get("_sched")
        if sched is not None:
            sched.fail(exc)

    def _scheduler(self) -> _Scheduler:
        if self.__dict__.get("_sched") is None:
            self._sched = _Scheduler(self, self._buffers)
        return self._sched

    def _group_bytes(self, width: int, sampling: SamplingConfig) -> int:
        """KV-cache bytes of one group: its prompt once, each of its n samples' generated tokens."""
        per_position = 2 * len(self.layers) * self.kv_heads * self.head_dim * self.embed.element_size()
        return per_position * (_round_up(width, ROOM) + WIDTH + sampling.n * (_round_up(sampling.max_tokens, ROOM) + WIDTH))

    def _layer_fns(self):
        """The decode layer and the prefill layer (``_layers``), compiled on first use."""
        if self._fns is None:
            if self._compile:
                _own_inductor_cache()
            try:
                self._fns = _layers(self.heads, self.kv_heads, self.eps, self._compile)
            except Exception as exc:  # noqa: BLE001 - no compiler on this machine: eager still works
                warnings.warn(f"static engine: torch.compile failed ({exc}); decoding eagerly", stacklevel=2)
                self._fns = _layers(self.heads, self.kv_heads, self.eps, False)
        return self._fns

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
            buf = self.flat[name] = torch.zeros(numel, dtype=dtype)  # finite: masked keys are multiplied by 0
        return buf[:numel].view(shape)

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.flat.values())


class _Group:
    """A request in the batch: its group slot (where its prompt's keys and values are) and its rows."""

    def __init__(self, request, gslot: int):
        self.request, self.gslot = request, gslot
        n = request.sampling.n
        self.completions: list[Completion | None] = [None] * n
        self.missing = n
        self.slots: list[int] = []  # its rows' slots when it entered (before any compaction)


class _Scheduler:
    """The static engine's continuous batching: the rows in the batch (slots), the groups they belong to,
    and one ``step`` at a time (see ``StaticCacheEngine``'s docstring).

    A batch serves requests of one ``n``, temperature and top-p, with prompts of at most ``W`` tokens and
    at most ``T`` new ones (both sized, padded to ``ROOM``, from the requests queued when it starts); a
    queued request that does not fit waits, with those behind it, until the batch has drained. Each row
    has its own count of sampled tokens (its cache position, rotary position and uniform index). An
    admitted group takes the lowest free group slot and the lowest free row slots, so nothing moves when
    rows end and others enter; only when the batch shrinks (nothing left to admit) are the rows past
    the new end moved into holes. ``refill=False``: groups enter only an empty batch (shrink-only)."""

    def __init__(self, engine: StaticCacheEngine, buffers: _Buffers):
        self.e, self.buf = engine, buffers
        self.key: tuple | None = None  # (n, temperature, top_p) of the batch; None: empty
        self.rows: list[_Group | None] = []  # per row slot: its group (None: free)
        self.j: list[int] = []  # per row slot: which of its group's rows it is
        self.gslots: list[_Group | None] = []  # per group slot: its group (None: free)

    # -- the batch's shape ---------------------------------------------------------------
    def live_rows(self) -> int:
        return sum(g is not None for g in self.rows)

    def fits(self, r) -> bool:
        s = r.sampling
        return (self.key == (s.n, s.temperature, s.top_p) and len(r.prompt_ids) <= self.W
                and s.max_tokens <= self.T)

    def begin(self, queue) -> None:
        """Size a new batch for the head of ``queue`` and the queued requests like it."""
        e, head = self.e, queue[0].sampling
        self.key = (head.n, head.temperature, head.top_p)
        self.sampling = head
        like = [r for r in queue if (r.sampling.n, r.sampling.temperature, r.sampling.top_p) == self.key]
        self.W = _round_up(max(len(r.prompt_ids) for r in like), ROOM)
        self.T = _round_up(max(r.sampling.max_tokens for r in like), ROOM)
        n = self.n = head.n
        group = SamplingConfig(n=n, max_tokens=self.T)
        self.capacity = max(1, min(e.max_batch // n, int(e.kv_cache_bytes // e._group_bytes(self.W, group))))
        R, G, kv, d, L = _round_up(self.capacity * n), self.capacity, e.kv_heads, e.head_dim, len(e.layers)
        buf = self.buf
        # one spare block of positions: the slices a step attends over are never the whole buffer, so
        # they are always strided views and the compiled layer sees one layout (no recompile at the end)
        self.gen_k = buf.view("gen_k", (L, R, kv, self.T + WIDTH, d), e.dtype)
        self.gen_v = buf.view("gen_v", (L, R, kv, self.T + WIDTH, d), e.dtype)
        # group slot G is scratch: the padding rows of a packed prefill write there
        self.prompt_k = buf.view("prompt_k", (L, G + 1, kv, self.W + WIDTH, d), e.dtype)
        self.prompt_v = buf.view("prompt_v", (L, G + 1, kv, self.W + WIDTH, d), e.dtype)
        self.uniforms = buf.view("uniforms", (R, self.T), torch.float32)
        self.out_ids = buf.view("token_ids", (R, self.T), torch.long)
        self.out_lp = buf.view("logprobs", (R, self.T), torch.float32)
        self.out_ver = buf.view("versions", (R, self.T), torch.long)
        self.logits = buf.view("logits", (R, e.head.shape[0]), torch.float32)
        self.cur = buf.view("tokens", (R,), torch.long)  # each row's latest token
        self.plen = buf.view("prompt_lens", (R,), torch.long)
        self.count = buf.view("counts", (R,), torch.long)  # tokens each row has sampled
        self.count.zero_()
        self.plen.zero_()  # rows not in use: no prompt (the prompt keys a step reads follow the longest in use)
        self.rows, self.j, self.gslots = [None] * R, [0] * R, [None] * G

    def end(self) -> int:
        """Row slots computed: up to the last one in use, rounded up to ``ROWS``."""
        last = max((i for i, g in enumerate(self.rows) if g is not None), default=-1)
        return _round_up(last + 1) if last >= 0 else 0

    def group_end(self) -> int:
        return max((i for i, g in enumerate(self.gslots) if g is not None), default=-1) + 1

    # -- one step --------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, state) -> int:
        running = self.live_rows()
        if running:
            self.decode()
        admitted = self.admit(state, running)
        if self.live_rows():
            self.sample()
        if not admitted:
            self.shrink()
        if not self.live_rows():
            self.key = None
        with state.cond:
            return self.live_rows() + sum(r.sampling.n for r in state.queue)

    def admit(self, state, running: int) -> int:
        """Take the queued requests that fit into free slots (FIFO: stop at the first that does not), and
        prefill their prompts together."""
        e, taken = self.e, []
        while True:
            with state.cond:
                if not state.queue:
                    break
                if self.key is None:
                    self.begin(state.queue)
                head = state.queue[0]
                if not self.fits(head) or (running and not e.refill) or None not in self.gslots:
                    break
                state.queue.popleft()
            if not head.future.set_running_or_notify_cancel():
                continue
            try:
                taken.append(self.enter(head))
            except Exception as exc:  # noqa: BLE001 - this request fails; the batch goes on
                head.future.set_exception(exc)
        if taken:
            try:
                self.prefill(taken)
            except Exception as exc:  # noqa: BLE001 - these requests fail; the rows already running go on
                for group in taken:
                    self.leave(group, exc)
                return 0
        return len(taken)

    def enter(self, r) -> _Group:
        """Give ``r`` the lowest free group slot and its rows the lowest free row slots, with their
        uniforms; its prompt is prefilled (``prefill``) before the next step."""
        e, n, ids = self.e, self.n, r.prompt_ids
        vocab = e.embed.shape[0]
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:  # checked here: in the packed prefill it would fail every prompt packed with it
            raise ValueError(f"static engine: prompt token id {bad[0]} is outside the model's vocabulary "
                             f"(0 .. {vocab - 1})")
        gs = self.gslots.index(None)
        free = [i for i, g in enumerate(self.rows) if g is None][:n]
        group = _Group(r, gs)
        group.slots = free
        self.gslots[gs] = group
        idx = torch.tensor(free)
        seed = r.seed if r.seed is not None else secrets.randbits(31)
        T = r.sampling.max_tokens  # its own uniforms: a prompt's samples depend on (seed, n, max_tokens)
        self.uniforms[idx, :T] = torch.rand(n, T, generator=torch.Generator().manual_seed(seed))
        self.plen[idx], self.count[idx], self.cur[idx] = len(ids), 0, e.pad_id
        for j, i in enumerate(free):
            self.rows[i], self.j[i] = group, j
        return group

    def leave(self, group: _Group, exc: BaseException) -> None:
        """Fail a group that entered but was never prefilled; free its slots."""
        for i in group.slots:
            self.rows[i] = None
        self.gslots[group.gslot] = None
        if not group.request.future.done():
            group.request.future.set_exception(exc)

    def prefill(self, groups: list[_Group]) -> None:
        """Prefill the prompts of ``groups`` together, packed token after token as rows (padded to a
        multiple of ``ROWS`` with rows that write to the scratch group slot): each token's key and value
        into its group slot's prompt cache, and each prompt's next-token logits into its rows' logits.
        A prompt's numbers do not depend on the prompts packed with it (``_prefill_layer``)."""
        e = self.e
        ids = [t for g in groups for t in g.request.prompt_ids]
        M = _round_up(len(ids))
        scratch = len(self.gslots)
        tokens = torch.full((M,), e.pad_id, dtype=torch.long)
        tokens[: len(ids)] = torch.tensor(ids)
        group = torch.full((M,), scratch, dtype=torch.long)
        pos = torch.zeros(M, dtype=torch.long)
        last, at = [], 0
        for g in groups:
            L = len(g.request.prompt_ids)
            group[at : at + L], pos[at : at + L] = g.gslot, torch.arange(L)
            at += L
            last.append(at - 1)
        slots = torch.tensor([g.gslot for g in groups])
        self.prompt_k[:, slots] = 0  # finite where masked (a zero key's score is masked, its value weighs 0)
        self.prompt_v[:, slots] = 0
        width = _round_up(max(len(g.request.prompt_ids) for g in groups), WIDTH)
        cos, sin = e._rope(pos[:, None])
        cos, sin = cos[:, 0], sin[:, 0]  # [M, 1, head_dim]: each token's position, every head
        _, layer_fn = e._layer_fns()
        x = e.embed[tokens]
        for layer, w in enumerate(e.layers):
            x = layer_fn(x, w, self.prompt_k[layer, :, :, :width], self.prompt_v[layer, :, :, :width], group, pos, cos,
                         sin)
        logits = e._logits(x[torch.tensor(last)])
        for g, row in zip(groups, logits):
            self.logits[torch.tensor(g.slots)] = row

    def decode(self) -> None:
        """Feed every running row its latest token; their next-token logits into ``self.logits``. The rows
        are sorted by the keys they read (their own tokens and their prompt's) and computed in buckets
        (``_buckets``), each reading the keys of its own longest row: a row that entered late does not
        read as far as the longest-running row. Rows not in use count as empty, and the step computes only
        as many of them as pad the running rows to a multiple of ``ROWS`` (their logits are not read)."""
        e, B = self.e, self.end()
        live = torch.tensor([g is not None for g in self.rows[:B]])
        pos = (self.count[:B] - 1).clamp_(min=0) * live  # where the fed token goes in the row's own cache
        plen = self.plen[:B] * live
        group = torch.tensor([g.gslot if g is not None else 0 for g in self.rows[:B]])  # rows not in use: any
        # longest first; rows not in use last, and only as many computed as pad the live ones to ROWS
        order = torch.argsort((pos + plen + 1) * live, descending=True, stable=True)[: _round_up(int(live.sum()))]
        chunk = lambda t: t[order].view(-1, ROWS).amax(1).tolist()  # noqa: E731 - per ROWS rows
        widths = [(_round_up(o + 1, WIDTH), max(WIDTH, _round_up(p, WIDTH))) for o, p in zip(chunk(pos), chunk(plen))]
        cos, sin = e._rope((plen + pos)[order][:, None])
        cos, sin = cos[:, 0], sin[:, 0]  # [B, 1, head_dim]: one position per row, every head
        buckets, at, c = [], 0, 0
        for size in _buckets(widths, ROWS, CALL_KEYS):
            rows = slice(at, at + size * ROWS)
            own, prompt = max(w[0] for w in widths[c : c + size]), max(w[1] for w in widths[c : c + size])
            slot = order[rows]
            buckets.append((e.embed[self.cur[slot]], own, prompt, slot, group[slot], pos[slot], plen[slot], cos[rows],
                            sin[rows]))
            at, c = at + size * ROWS, c + size
        layer_fn, _ = e._layer_fns()
        xs = [b[0] for b in buckets]
        for layer, w in enumerate(e.layers):
            xs = [layer_fn(x, w, self.gen_k[layer, :, :, :own], self.gen_v[layer, :, :, :own],
                           self.prompt_k[layer, :, :, :prompt], self.prompt_v[layer, :, :, :prompt], *rest)
                  for x, (_, own, prompt, *rest) in zip(xs, buckets)]
        self.logits[order] = e._logits(xs[0] if len(xs) == 1 else torch.cat(xs))

    def sample(self) -> None:
        """Every row of the batch draws its next token (a multiple of ``ROWS`` rows; those not in use are
        thrown away); running rows record it, and rows that end complete their groups."""
        e, B = self.e, self.end()
        steps = self.count[:B].clamp(max=self.T - 1)
        nxt, lp = sample_inverse_cdf(self.logits[:B], self.uniforms[torch.arange(B), steps], self.sampling)
        live = [i for i in range(B) if self.rows[i] is not None]
        idx = torch.tensor(live)
        pos = self.count[idx]
        self.out_ids[idx, pos], self.out_lp[idx, pos] = nxt[idx], lp[idx]
        self.out_ver[idx, pos] = e.version if e.version is not None else NO_VERSION
        self.cur[idx] = nxt[idx]
        self.count[idx] += 1
        counts, tokens = self.count[idx].tolist(), nxt[idx].tolist()
        for i, c, tok in zip(live, counts, tokens):
            group = self.rows[i]
            s = group.request.sampling
            if tok == e.eos_id and not s.ignore_eos:
                self.finish(i, c, "stop")
            elif s.stop and self.stopped(i, c, s.stop):
                self.finish(i, c, "stop")
            elif c == s.max_tokens:
                self.finish(i, c, "length")

    def stopped(self, i: int, c: int, stop) -> bool:
        tail = max(len(s) for s in stop) + 8
        text = self.e.tokenizer.decode(self.out_ids[i, max(0, c - tail) : c].tolist(), skip_special_tokens=True)
        return any(s in text for s in stop)

    def finish(self, i: int, c: int, reason: str) -> None:
        """Row slot ``i`` ended after ``c`` tokens: its completion, its slot freed, its group resolved once whole."""
        group, j = self.rows[i], self.j[i]
        r = group.request
        versions = self.out_ver[i, :c].tolist()
        completion = self.e._completion(self.out_ids[i, :c], self.out_lp[i, :c], reason, r.sampling)
        completion.versions = None if all(v == NO_VERSION for v in versions) else versions
        group.completions[j] = completion
        group.missing -= 1
        self.rows[i] = None
        if group.missing == 0:
            self.gslots[group.gslot] = None
            r.future.set_result(Group(r.text, r.prompt_ids, group.completions))

    def shrink(self) -> None:
        """When a quarter of the computed rows (or group slots) are free, move the rows (groups) past the
        new end into the free slots before it; nothing else moves."""
        live = [i for i, g in enumerate(self.rows) if g is not None]
        end = self.end()
        if live and len(live) <= 0.75 * end:
            new_end = _round_up(len(live))
            src = [i for i in live if i >= new_end]
            dst = [i for i, g in enumerate(self.rows[:new_end]) if g is None][: len(src)]
            if src:
                s, t = torch.tensor(src), torch.tensor(dst)
                c = int(self.count[s].max())
                self.gen_k[:, t, :, :c] = self.gen_k[:, s, :, :c]
                self.gen_v[:, t, :, :c] = self.gen_v[:, s, :, :c]
                for b in (self.uniforms, self.out_ids, self.out_lp, self.out_ver):
                    b[t] = b[s]
                for b in (self.cur, self.plen, self.count):
                    b[t] = b[s]
                for a, b in zip(src, dst):
                    self.rows[b], self.j[b], self.rows[a] = self.rows[a], self.j[a], None
        groups = [gs for gs, g in enumerate(self.gslots) if g is not None]
        gend = self.group_end()
        if groups and len(groups) <= 0.75 * gend:
            src = [gs for gs in groups if gs >= len(groups)]
            dst = [gs for gs, g in enumerate(self.gslots[: len(groups)]) if g is None]
            if src:
                s, t = torch.tensor(src), torch.tensor(dst)
                self.prompt_k[:, t] = self.prompt_k[:, s]
                self.prompt_v[:, t] = self.prompt_v[:, s]
                for a, b in zip(src, dst):
                    group = self.gslots[a]
                    self.gslots[b], self.gslots[a], group.gslot = group, None, b

    def fail(self, exc: BaseException) -> None:
        """Fail every group in the batch with ``exc`` and empty it."""
        for group in {id(g): g for g in self.gslots if g is not None}.values():
            if not group.request.future.done():
                group.request.future.set_exception(exc)
        self.rows = [None] * len(self.rows)
        self.gslots = [None] * len(self.gslots)
        self.key = None
