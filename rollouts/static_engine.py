"""A lean decode loop for small Llama-family models on CPU: static KV cache, fused weights, compiled layer.

Where the time goes when a small model generates on CPU is not the matmuls: it is per-step work
around them. transformers' ``generate`` grows its KV cache by concatenation (every step copies the
whole cache), builds masks and runs logits processors in Python; vLLM's scheduler does Python work
per sequence per step. This engine does only what sampling needs:

- the weights the learner sends are copied into fused buffers (q/k/v in one matrix, gate/up in one),
  so a layer is two matmuls in and two out;
- the KV cache is allocated once per batch and written in place. A group's prompt is prefilled and
  cached once (``[groups, kv_heads, prompt, head_dim]`` per layer), not once per sample; each
  sample's generated tokens have their own cache (``[rows, kv_heads, max_tokens, head_dim]``).
  Decode attention is two CPU flash-attention calls merged through their log-sum-exps: the
  group's rows over the shared prompt (one call, the rows as extra queries) and each row over its
  own tokens (see ``_decode_layer``);
- one decode layer (norms, rotary embedding, cache write, attention, MLP) is one ``torch.compile``d
  function, so its element-wise work is fused into a few kernels (``compile=False``: eager);
- sampling draws one uniform per sample per step from its prompt's own generator and inverts the
  CDF: exact sampling from softmax(logits / temperature) (top-p: the nucleus renormalised), at the
  cost of one cumulative sum instead of ``multinomial``'s noise over the whole vocabulary. A prompt's
  samples depend on its seed only, not on the batch it shares.
- finished rows leave the batch (their cache rows are dropped, and a group's prompt once all its
  rows ended) when a quarter of it has finished; ``kv_cache_gib`` bounds one batch's cache.

Supported: ``llama``, ``qwen2`` (q/k/v biases), ``qwen3`` (q/k norms), ``mistral`` without a sliding
window; tied or untied heads; default rotary embeddings. Anything else is refused by name at start-up.
Log-probs are the model's own (log-softmax of the raw logits, before temperature and top-p), as
every engine here returns them.
"""

from __future__ import annotations

import secrets
import time
import warnings
from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from rollouts.base import EngineBase
from rollouts.sampling import sample_inverse_cdf
from rollouts.types import DTYPES, Completion, Group, OnGroup, SamplingConfig, cut_at_stop, prompt_seeds

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")


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
    """Attention output and its log-sum-exp per query (float32), from the CPU flash kernel."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask)


def _decode_layer(x, w: _Layer, kp, vp, pmask, kg, vg, cos, sin, t: int, slot, n: int, heads: int, kv_heads: int,
                  eps: float):
    """One decoder layer for one new token per row (``x`` [B, 1, hidden], the token at generated
    position ``t``), attending over its prompt and its own generated tokens.

    The prompt's keys and values are kept once per group (``kp``/``vp`` [G, kv_heads, W, head_dim],
    ``pmask`` [G, 1, 1, W] additive: -inf on left padding), not once per sample: the rows of a
    group ask their prompt together, as ``n`` x (heads per KV head) queries of one attention call
    (row ``i`` sits in slot ``slot[i]`` of the [G, n] grid). Each row's generated keys and values
    (``kg``/``vg`` [B, kv_heads, T, head_dim]) are its own. The two softmaxes are merged through
    their log-sum-exps, which is the softmax over all keys."""
    B = x.shape[0]
    G, d, r = kp.shape[0], kg.shape[-1], heads // kv_heads
    h = F.linear(_rms(x[:, 0], w.norm1, eps), w.qkv, w.qkv_bias)
    q, k, v = h.split([heads * d, kv_heads * d, kv_heads * d], -1)
    q, k = q.view(B, heads, d), k.view(B, kv_heads, d)
    if w.q_norm is not None:  # qwen3: per-head RMSNorm before the rotary embedding
        q, k = _rms(q, w.q_norm, eps), _rms(k, w.k_norm, eps)
    q, k = _rotate(q, cos, sin).view(B, kv_heads, r, d), _rotate(k, cos, sin)
    kg[:, :, t : t + 1] = k[:, :, None]  # a slice, not an index: the compiled graph keeps t symbolic
    vg[:, :, t : t + 1] = v.view(B, kv_heads, 1, d)
    own, own_lse = _attend(q, kg[:, :, : t + 1], vg[:, :, : t + 1])
    grid = q.new_zeros(G * n, kv_heads, r, d)
    grid[slot] = q
    grid = grid.view(G, n, kv_heads, r, d).transpose(1, 2).reshape(G, kv_heads, n * r, d)
    shared, shared_lse = _attend(grid, kp, vp, pmask)
    shared = shared.view(G, kv_heads, n, r, d).transpose(1, 2).reshape(G * n, kv_heads, r, d)[slot]
    shared_lse = shared_lse.view(G, kv_heads, n, r).transpose(1, 2).reshape(G * n, kv_heads, r)[slot]
    share = torch.sigmoid(shared_lse - own_lse)[..., None]  # the prompt's part of the whole softmax
    o = (shared.float() * share + own.float() * (1 - share)).to(x.dtype)
    x = x + F.linear(o.reshape(B, 1, heads * d), w.o)
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

    ``max_batch`` bounds the rows decoded together, and ``kv_cache_gib`` the memory of one batch's
    KV cache (allocated whole: a long prompt or ``max_tokens`` means fewer groups per batch);
    ``compile`` compiles the decode layer with inductor (the first ``generate`` then pays a
    one-off compile of ~10-30 s; eager when the compile fails, with a warning)."""

    def __init__(self, model_dir: str, dtype: str = "float32", max_batch: int = 256, kv_cache_gib: float = 2.0,
                 threads: int = 0, compile: bool = True, model=None):
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
        self._decode_layer = self._eager_layer = None
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
        self.layers, self.targets = [], {}

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

        # whole groups per batch, so a group's rows share its generator's draws
        per_batch = max(1, min(self.max_batch // sampling.n, int(self.kv_cache_bytes // self._group_bytes(
            max(map(len, prompt_ids)), sampling))))
        for start in range(0, len(prompt_ids), per_batch):
            idx = range(start, min(len(prompt_ids), start + per_batch))
            self._decode([prompt_ids[g] for g in idx], [seeds[g] for g in idx], list(idx), sampling, finished)
        return groups

    def _group_bytes(self, width: int, sampling: SamplingConfig) -> int:
        """KV-cache bytes of one group: its prompt once, each of its n samples' generated tokens."""
        per_position = 2 * len(self.layers) * self.kv_heads * self.head_dim * self.embed.element_size()
        return per_position * (width + sampling.n * sampling.max_tokens)

    def _layer_fn(self):
        """The decode layer, with the head counts and eps bound as constants, compiled on first use."""
        if self._decode_layer is None:
            heads, kv_heads, eps = self.heads, self.kv_heads, self.eps

            def step(x, w, kp, vp, pmask, kg, vg, cos, sin, t, slot, n):
                return _decode_layer(x, w, kp, vp, pmask, kg, vg, cos, sin, t, slot, n, heads, kv_heads, eps)

            self._decode_layer = self._eager_layer = step
            if self._compile:
                _own_inductor_cache()
                try:
                    self._decode_layer = torch.compile(step, dynamic=True)
                except Exception as exc:  # noqa: BLE001 - no compiler on this machine: eager still works
                    warnings.warn(f"static engine: torch.compile failed ({exc}); decoding eagerly", stacklevel=2)
        return self._decode_layer

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, 1, S, head_dim] for ``positions`` [B, S], computed in float32 as transformers does."""
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat([freqs, freqs], -1)
        return emb.cos()[:, None].to(self.dtype), emb.sin()[:, None].to(self.dtype)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_rms(x, self.norm, self.eps), self.head).float()

    @torch.inference_mode()
    def _decode(self, prompt_ids: list[list[int]], seeds: list[int], group_idx: list[int], sampling: SamplingConfig,
                finished) -> None:
        n, T = sampling.n, sampling.max_tokens
        G, width = len(prompt_ids), max(map(len, prompt_ids))
        B = G * n
        ids = torch.full((G, width), self.pad_id, dtype=torch.long)
        valid = torch.ones(G, width, dtype=torch.bool)  # prompt positions that are not left padding
        for g, seq in enumerate(prompt_ids):
            ids[g, width - len(seq) :] = torch.tensor(seq)
            valid[g, : width - len(seq)] = False
        plen = torch.tensor([len(s) for s in prompt_ids])
        # each prompt's uniforms for all steps, drawn from its own generator: [B, T]
        uniforms = torch.cat([torch.rand(n, T, generator=torch.Generator().manual_seed(s)) for s in seeds])
        rows = [(group_idx[g], j) for g in range(G) for j in range(n)]  # row -> (group, sample)
        out_ids = torch.empty(B, T, dtype=torch.long)
        out_lp = torch.empty(B, T, dtype=torch.float32)
        stop_tail = max((len(s) for s in sampling.stop), default=0) + 8
        layer = self._layer_fn()

        # prefill, once per group: causal over the prompt's own tokens; a pad query attends to itself
        positions = (torch.arange(width)[None] - (width - plen)[:, None]).clamp(min=0)
        mask = torch.ones(width, width, dtype=torch.bool).tril()[None] & valid[:, None, :]
        mask = (mask | torch.eye(width, dtype=torch.bool)[None])[:, None]
        cos, sin = self._rope(positions)
        x = self.embed[ids]
        prompt_kv = []
        for w in self.layers:
            kp = torch.empty(G, self.kv_heads, width, self.head_dim, dtype=self.dtype)
            vp = torch.empty_like(kp)
            x = _layer(x, w, kp, vp, cos, sin, 0, mask, self.heads, self.kv_heads, self.eps, self.heads != self.kv_heads)
            prompt_kv.append((kp, vp))
        logits = self._logits(x[:, -1]).repeat_interleave(n, 0)
        pmask = torch.zeros(G, 1, 1, width, dtype=self.dtype).masked_fill_(~valid[:, None, None, :], float("-inf"))
        gen_kv = [(torch.empty(B, self.kv_heads, T, self.head_dim, dtype=self.dtype),
                   torch.empty(B, self.kv_heads, T, self.head_dim, dtype=self.dtype)) for _ in self.layers]
        row_plen = plen.repeat_interleave(n)
        alive = list(range(B))  # the original row of each batch row
        slot = torch.arange(B)  # each batch row's place in the [groups still running, n] grid
        kept_groups = list(range(G))  # the prompts whose keys and values prompt_kv holds
        ended = [False] * B
        for t in range(T):
            nxt, out_lp[alive, t] = sample_inverse_cdf(logits, uniforms[alive, t], sampling)
            out_ids[alive, t] = nxt
            for row in self._ended_now(alive, t, nxt, out_ids, ended, sampling, stop_tail):
                ended[row] = True
                finished(rows[row], self._completion(out_ids[row, : t + 1], out_lp[row, : t + 1], "stop", sampling))
            keep = [not ended[row] for row in alive]
            if t == T - 1 or not any(keep):
                break
            if sum(keep) <= 0.75 * len(keep):  # drop ended rows (and groups): they stop costing reads
                sel = torch.tensor([p for p, k in enumerate(keep) if k])
                alive = [row for row, k in zip(alive, keep) if k]
                groups = sorted({row // n for row in alive})  # the prompts (of this batch) still running
                gsel = torch.tensor([kept_groups.index(g) for g in groups])
                kept_groups = groups
                place = {g: i for i, g in enumerate(groups)}
                slot = torch.tensor([place[row // n] * n + row % n for row in alive])
                gen_kv = [(kg.index_select(0, sel), vg.index_select(0, sel)) for kg, vg in gen_kv]
                prompt_kv = [(kp.index_select(0, gsel), vp.index_select(0, gsel)) for kp, vp in prompt_kv]
                pmask = pmask.index_select(0, gsel)
                nxt = nxt[sel]
            x = self.embed[nxt][:, None]
            cos, sin = self._rope((row_plen[alive] + t)[:, None])
            cos, sin = cos[:, 0], sin[:, 0]  # [B, 1, head_dim]: one position per row, every head
            # sizes of 1 (the first step's own key, a last group, a last row) would each cost the
            # compiled layer a specialised recompile: those steps run eagerly
            fn = layer if t > 0 and len(kept_groups) > 1 and len(alive) > 1 else self._eager_layer
            for w, (kp, vp), (kg, vg) in zip(self.layers, prompt_kv, gen_kv):
                x = fn(x, w, kp, vp, pmask, kg, vg, cos, sin, t, slot, n)
            logits = self._logits(x[:, -1])
        for row in range(B):
            if not ended[row]:
                finished(rows[row], self._completion(out_ids[row], out_lp[row], "length", sampling))

    def _ended_now(self, alive: list[int], t: int, nxt: torch.Tensor, out_ids: torch.Tensor, ended: list[bool],
                   sampling: SamplingConfig, stop_tail: int) -> list[int]:
        """Rows (original indices) still running that end at step ``t``: EOS, or a stop string in the
        text of their last tokens."""
        eos = set(torch.nonzero(nxt == self.eos_id).flatten().tolist()) if not sampling.ignore_eos else set()
        out = []
        for pos, row in enumerate(alive):
            if ended[row]:
                continue
            if pos in eos:
                out.append(row)
            elif sampling.stop:
                tail = self.tokenizer.decode(out_ids[row, max(0, t + 1 - stop_tail) : t + 1].tolist(),
                                             skip_special_tokens=True)
                if any(s in tail for s in sampling.stop):
                    out.append(row)
        return out

    def _completion(self, ids: torch.Tensor, lps: torch.Tensor, reason: str, sampling: SamplingConfig) -> Completion:
        token_ids = ids.tolist()
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True) if sampling.detokenize else ""
        return Completion(cut_at_stop(text, sampling.stop), token_ids, lps.tolist(), reason)
