"""Memory preflight: will this run fit on its GPU? Checked before any model loads.

The estimate is arithmetic on the model's config (no weights read):

* learner: float32 master weights (4 B/param), float32 gradients and AdamW moments (4 + 8 B per
  *trained* param: all of them, or the LoRA adapter's), a float32 reference model when a KL
  term needs one, a critic of the same size for PPO;
* activations of one micro-batch (``micro_batch_size`` rows of prompt + completion tokens): per
  layer about (12 * hidden + 4 * intermediate) values per token in the compute dtype, or only
  the layer input with gradient checkpointing (plus one layer recomputed), and the float32
  logits, log-softmax and probabilities over the vocabulary (3 x 4 B per token per vocab entry:
  for a 150k vocabulary this is often the largest term);
* engine: vLLM takes ``engine.gpu_memory_utilization`` of the GPU (its weights, KV cache and
  activations). With sleep mode (``engine.sleep_level`` 1 or 2) it gives that back while the
  learner steps, so the peak is the larger of the generation phase and the training phase.

An estimate, not a measurement: allocator fragmentation and CUDA context (~0.5-1 GiB) come on
top, so a config within ~10% of the GPU's memory is flagged as tight. It errs on the high side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rollouts.config import ENGINES

GIB = 1024**3


def param_count(c: dict[str, Any]) -> int:
    """Parameters of a Llama/Qwen-style decoder from its HF config dict."""
    H, L, V, inter = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"], c["intermediate_size"]
    q = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or q
    hd = c.get("head_dim") or H // q
    bias = c.get("attention_bias", c.get("model_type") == "qwen2")
    attn = H * q * hd + 2 * H * kv * hd + q * hd * H + ((q + 2 * kv) * hd if bias else 0)
    if c.get("model_type") == "qwen3":
        attn += 2 * hd  # per-head q/k norms
    layer = attn + 3 * H * inter + 2 * H
    head = 0 if c.get("tie_word_embeddings", False) else V * H
    return V * H + head + L * layer + H


def lora_param_count(c: dict[str, Any], r: int, targets: list[str] | str) -> int:
    H, L, inter = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]
    q = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or q
    hd = c.get("head_dim") or H // q
    shapes = {"q_proj": (H, q * hd), "k_proj": (H, kv * hd), "v_proj": (H, kv * hd), "o_proj": (q * hd, H),
              "gate_proj": (H, inter), "up_proj": (H, inter), "down_proj": (inter, H)}
    names = list(shapes) if isinstance(targets, str) else [t for t in targets if t in shapes]
    return L * sum(r * (shapes[n][0] + shapes[n][1]) for n in names)


@dataclass
class Estimate:
    gpu_gib: float
    parts: dict[str, float] = field(default_factory=dict)  # GiB each
    engine_gib: float = 0.0
    sleep: bool = False
    kv_need_gib: float = 0.0
    params: int = 0

    @property
    def training_gib(self) -> float:
        return sum(self.parts.values()) + (0.0 if self.sleep else self.engine_gib)

    @property
    def generation_gib(self) -> float:
        # gradients are freed after each optimizer step (zero_grad(set_to_none=True)); activations after backward
        static = sum(v for k, v in self.parts.items() if not k.startswith(("activations", "logits", "gradients")))
        return static + self.engine_gib

    @property
    def peak_gib(self) -> float:
        return max(self.training_gib, self.generation_gib)

    @property
    def fits(self) -> bool:
        return self.peak_gib <= self.gpu_gib

    def report(self) -> str:
        lines = [f"memory preflight ({self.params / 1e9:.2f}B params, GPU {self.gpu_gib:.0f} GiB):"]
        for name, gib in self.parts.items():
            lines.append(f"  {name:<34} {gib:8.2f} GiB")
        lines.append(f"  {'engine (gpu_memory_utilization)':<34} {self.engine_gib:8.2f} GiB"
                     + ("  (released while the learner steps: sleep mode)" if self.sleep else ""))
        lines.append(f"  peak: training {self.training_gib:.1f} GiB, generation {self.generation_gib:.1f} GiB "
                     f"-> {self.peak_gib:.1f} of {self.gpu_gib:.0f} GiB: "
                     + ("fits" + (" (tight: within 10%)" if self.peak_gib > 0.9 * self.gpu_gib else "")
                        if self.fits else "DOES NOT FIT"))
        lines.append(f"  KV cache for one step's rollouts all at once: {self.kv_need_gib:.2f} GiB "
                     "(vLLM runs fewer sequences at a time when its share holds less)")
        return "\n".join(lines)


def estimate(cfg, model_config: dict[str, Any], gpu_gib: float, prompt_tokens: int | None = None) -> Estimate:
    """The peak GPU memory of ``cfg`` (a TrainConfig) for the model ``model_config`` on one GPU."""
    c = model_config.get("text_config", model_config)
    tc, e = cfg.train, cfg.engine
    n = param_count(c)
    trained = lora_param_count(c, cfg.lora.r, cfg.lora.target_modules) if cfg.lora is not None else n
    H, L, V, inter = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"], c["intermediate_size"]
    prompt = prompt_tokens if prompt_tokens is not None else (cfg.task.max_prompt_tokens or 256)
    seq = min(prompt + cfg.sampling.max_tokens, tc.max_seq_len or 1 << 30)
    tokens = tc.micro_batch_size * seq
    act_bytes = 2 if tc.dtype == "bfloat16" else 4
    per_layer = tokens * (12 * H + 4 * inter) * act_bytes
    # FSDP: each learner rank (one GPU each) holds 1/M of the weights, gradients, moments and reference, plus
    # the unit being all-gathered: the root (embeddings, LM head) stays whole through a step, one block at a time
    shards = cfg.cluster.learner_ranks if cfg.cluster.learner_sharding == "fsdp" else 1
    of = f", 1/{shards} per rank" if shards > 1 else ""
    parts = {f"weights (float32 master{of})": 4 * n / shards / GIB}
    if shards > 1:
        root = V * H * (1 if c.get("tie_word_embeddings", False) else 2) + H
        parts["FSDP all-gathered root + one block"] = 4 * (root + (n - root) / L) / GIB
    if cfg.lora is not None:
        parts["lora adapter"] = 4 * trained / GIB
    parts[f"gradients (float32{of})"] = 4 * trained / shards / GIB
    parts[f"AdamW moments (float32{of})"] = 8 * trained / shards / GIB
    if cfg.algorithm.needs_reference:
        parts[f"reference model (float32{of})"] = 4 * n / shards / GIB
    if cfg.algorithm.needs_critic:
        parts["critic (weights, grads, AdamW)"] = 16 * n / GIB
    if tc.gradient_checkpointing:
        parts["activations (checkpointed)"] = (L * tokens * H * act_bytes + per_layer) / GIB
    else:
        parts["activations"] = L * per_layer / GIB
    parts["logits"] = tokens * V * (3 * 4 + (2 if tc.dtype == "bfloat16" else 0)) / GIB
    engine_gib = e.gpu_gib(gpu_gib, n)
    q = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or q
    hd = c.get("head_dim") or H // q
    rollout_tokens = cfg.train.prompts_per_step * cfg.sampling.n * (prompt + cfg.sampling.max_tokens)
    kv_need = 2 * L * kv * hd * (2 if e.dtype == "bfloat16" else 4) * rollout_tokens / GIB
    return Estimate(gpu_gib, parts, engine_gib, e.sleeps, kv_need, n)


SUGGESTIONS: list[tuple[str, dict[str, Any]]] = [
    ("train.gradient_checkpointing=true", {"train": {"gradient_checkpointing": True}}),
    ("train.dtype=bfloat16", {"train": {"dtype": "bfloat16"}}),
    ("engine.sleep_level=1", {"engine": {"sleep_level": 1}}),
    ("train.micro_batch_size=4", {"train": {"micro_batch_size": 4}}),
    ("train.micro_batch_size=1", {"train": {"micro_batch_size": 1}}),
    ("lora.r=16 (LoRA)", {"lora": {"r": 16}}),
]


def settings_that_fit(cfg, model_config: dict[str, Any], gpu_gib: float, prompt_tokens: int | None = None) -> list[str]:
    """Overrides, taken in SUGGESTIONS order (skipping those already set), until the estimate fits ([] if none)."""
    data = cfg.model_dump(mode="json", by_alias=True)
    chosen: list[str] = []
    for label, change in SUGGESTIONS:
        if estimate(type(cfg).model_validate(data), model_config, gpu_gib, prompt_tokens).fits:
            return chosen
        new = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
        for section, values in change.items():
            new[section] = {**(new.get(section) or {}), **values}
        if new == data or (label.startswith("train.micro_batch_size") and
                           data["train"]["micro_batch_size"] <= change["train"]["micro_batch_size"]):
            continue
        if label.startswith("engine.sleep_level") and not ENGINES[data["engine"]["kind"]].can_sleep:
            continue
        data = new
        chosen.append(label)
    return chosen if estimate(type(cfg).model_validate(data), model_config, gpu_gib, prompt_tokens).fits else []


class PreflightError(ValueError):
    """The run's estimated peak GPU memory exceeds the GPU."""


def check(cfg, model_config: dict[str, Any], gpu_gib: float, prompt_tokens: int | None = None) -> Estimate:
    """Raise PreflightError, with the breakdown and settings that would fit, when the run cannot fit."""
    est = estimate(cfg, model_config, gpu_gib, prompt_tokens)
    if not est.fits:
        fix = settings_that_fit(cfg, model_config, gpu_gib, prompt_tokens)
        raise PreflightError(est.report() + "\n" + (
            "settings that would fit: " + " ".join(fix) if fix else
            "no single-GPU setting fits: shard the learner over GPUs (cluster.learner_ranks=M "
            "cluster.learner_sharding=fsdp cluster.gpus_per_rank=1) or use a smaller model"))
    return est


def gpu_memory_gib(cfg) -> float | None:
    """``engine.gpu_memory_gib``, else the visible GPU's memory, else None (no GPU)."""
    if cfg.engine.gpu_memory_gib is not None:
        return cfg.engine.gpu_memory_gib
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / GIB
    return None
