"""Tied output heads after an in-place vLLM weight reload.

With ``tie_word_embeddings`` the checkpoint has no ``lm_head.weight``: vLLM's model skips it on
load and its ``ParallelLMHead`` shares the embedding's parameter. An in-place reload writes the
new embedding into that shared storage, but the head is a layer that received no weights, so
vLLM 0.32 puts its old kernel state back and never re-runs its post-load processing. On the CPU
backend that processing packs the weight into a oneDNN (or SGL) GEMM handle, so the head keeps
computing logits from the *old* embedding. Re-running the head's processing after every reload
rebuilds the handle from the shared, updated storage. (On CUDA the head reads ``layer.weight``
directly and the refresh is a cheap no-op.)
"""

from __future__ import annotations

import torch


def refresh_tied_heads(model: torch.nn.Module) -> int:
    """Re-run post-load processing of every output head that shares its weight with an input
    embedding; returns how many heads were refreshed."""
    embeddings = {m.weight.data_ptr() for name, m in model.named_modules()
                  if type(m).__name__ == "VocabParallelEmbedding" and isinstance(getattr(m, "weight", None), torch.Tensor)}
    refreshed = 0
    for _, module in model.named_modules():
        if type(module).__name__ != "ParallelLMHead":
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.is_meta or weight.data_ptr() not in embeddings:
            continue
        if hasattr(module, "cpu_linear"):  # CPU: repack into the same handle (compiled graphs keep theirs)
            from rollouts.inplace_sync import repack

            repack(module, module.weight)
        else:
            module.quant_method.process_weights_after_loading(module)
        refreshed += 1
    return refreshed


def refresh_tied_heads_on_worker(worker) -> int:
    """``LLM.collective_rpc`` target (in-process engines): the worker's model."""
    return refresh_tied_heads(worker.model_runner.model)
