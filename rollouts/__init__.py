"""Rollout engines: group sampling with token ids, log-probs and finish reasons.

Usable on its own (no dependency on `rlvr` or `verifiers`).
"""

from rollouts.types import Completion, Engine, Group, OnGroup, Prompt, SamplingConfig

__all__ = ["SamplingConfig", "Completion", "Group", "Engine", "Prompt", "OnGroup", "make_engine"]


def make_engine(kind: str, model_dir: str, **kwargs):
    """Build an engine by name: ``"hf"``, ``"hf-generate"`` (transformers' ``generate``), ``"vllm"`` or
    ``"static"`` (a compiled static-KV-cache decode loop for small Llama-family models on CPU)."""
    if kind == "hf":
        from rollouts.hf_engine import HFEngine

        return HFEngine(model_dir, **kwargs)
    if kind == "hf-generate":
        from rollouts.hf_generate import HFGenerateEngine

        return HFGenerateEngine(model_dir, **kwargs)
    if kind == "vllm":
        from rollouts.vllm_engine import VLLMEngine

        return VLLMEngine(model_dir, **kwargs)
    if kind == "static":
        from rollouts.static_engine import StaticCacheEngine

        return StaticCacheEngine(model_dir, **kwargs)
    raise ValueError(f"unknown engine {kind!r}; expected 'hf', 'hf-generate', 'vllm' or 'static'")
