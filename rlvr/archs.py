"""Randomly initialised models of real architectures, built locally (no hub).

``ARCHS`` names the base architectures every engine must support (Llama, Qwen2 tied and
untied, Qwen3). ``micro_config`` makes a micro config of one (for tests); ``shrink_config``
keeps a real model's architecture (its ``config.json``: model type, tying, GQA ratio, norms,
rope) and makes it small (for ``rlvr train --dry-run``). Head dim stays 64: vLLM's CPU attention
kernels support a fixed set of head sizes and 64 is one of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HEAD_DIM = 64

# model_type and the fields that make each architecture what it is
ARCHS: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama", "tie_word_embeddings": False, "rms_norm_eps": 1e-5},
    "qwen2-tied": {"model_type": "qwen2", "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "rope_theta": 1e6},
    "qwen2": {"model_type": "qwen2", "tie_word_embeddings": False, "rms_norm_eps": 1e-6, "rope_theta": 1e6},
    "qwen3": {"model_type": "qwen3", "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
              "head_dim": HEAD_DIM},
}


def micro_config(arch: str, vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 1, kv_heads: int = 1,
                 max_positions: int = 512) -> dict[str, Any]:
    """A micro config dict (``model_type`` included) of one of ``ARCHS``."""
    if arch not in ARCHS:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    spec = dict(ARCHS[arch])
    spec.update(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions)
    if "head_dim" in spec:
        spec["head_dim"] = hidden // heads
    return spec


# the fields of a real config that are sizes; everything else (type, tying, eps, rope, bias flags) is kept
_SIZE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "max_window_layers", "layer_types", "sliding_window", "use_sliding_window")


def shrink_config(config: dict[str, Any], vocab_size: int | None = None, layers: int = 2, heads: int = 2,
                  max_positions: int = 1024) -> dict[str, Any]:
    """The same architecture, small: ``layers`` layers of ``heads`` heads of 64, the real model's
    ratio of query to key/value heads kept where it divides, vocabulary ``vocab_size`` (the
    tokenizer's) when given."""
    cfg = {k: v for k, v in config.items() if k not in _SIZE_FIELDS and not k.startswith("_")
           and k not in ("architectures", "torch_dtype", "dtype", "transformers_version", "quantization_config",
                         "auto_map")}
    q, kv = config.get("num_attention_heads", heads), config.get("num_key_value_heads") or config.get("num_attention_heads", heads)
    ratio = max(1, q // max(1, kv))
    kv_heads = max(1, heads // ratio) if heads % ratio == 0 else heads
    hidden = heads * HEAD_DIM
    cfg.update(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
               num_key_value_heads=kv_heads, max_position_embeddings=min(max_positions, config.get(
                   "max_position_embeddings", max_positions)))
    if "head_dim" in config:
        cfg["head_dim"] = HEAD_DIM
    if vocab_size is not None:
        cfg["vocab_size"] = vocab_size
    for key in ("rope_scaling",):  # long-context scaling makes no sense at this size
        cfg.pop(key, None)
    return cfg


def build_model(spec: dict[str, Any], tokenizer: Any, out_dir: str | Path, seed: int = 0) -> str:
    """Save a random-init model of ``spec`` (a config dict with ``model_type``) and ``tokenizer``
    to ``out_dir``; token ids (eos/pad/bos) follow the tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    spec = dict(spec)
    model_type = spec.pop("model_type")
    spec["vocab_size"] = max(spec.get("vocab_size") or 0, len(tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    spec.update(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
    config = AutoConfig.for_model(model_type, **spec)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=pad,
                     bos_token_id=tokenizer.eos_token_id).save_pretrained(out)
    return str(out)


def read_config(model_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / "config.json").read_text())
