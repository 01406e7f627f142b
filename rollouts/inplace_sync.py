"""Fast in-place weight sync into vLLM's CPU model: one pass, no staging copies.

vLLM's ``reload_weights`` (what ``VLLMEngine.load_weights`` fell back on) materialises a fresh
copy of every layer, loads the checkpoint tensors into it, re-runs the layer's post-load
processing and copies the result back into the old storage: two copies of every weight plus
allocation, ~0.19 s for a 90M-parameter model on 2 cores. On the CPU backend a linear layer
keeps no unpacked weight at all (``layer.weight`` is emptied); its only copy is a packed GEMM
handle (oneDNN, or the SGL kernel for small bf16 weights). So the cheapest correct sync is:

* a linear layer: pack the learner's tensor straight into a new kernel handle (the stacked
  q/k/v and gate/up shards concatenated first, the one copy they need), then swap the handle
  *into the old handle object* (its pointer tensor is written in place), so every reference to
  it, a compiled graph's included, computes with the new weights;
* any other parameter (embedding, norms, biases, an unpacked head): ``copy_`` in place;
* an output head that keeps its weight (vLLM's ``ParallelLMHead``) and a head tied to the
  embedding: copy, then repack from its own, updated weight.

``plan`` reads names and shapes only and returns ``None`` for anything it does not recognise
(another kernel, a quantised layer, a name vLLM would rename in a way we do not follow); the
caller then uses vLLM's own reload. Nothing is modified before the whole plan is known.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

_QKV = {"q": 0, "k": 1, "v": 2}


@dataclass
class _ModulePlan:
    module: torch.nn.Module
    packed_only: bool  # a linear whose sole weight copy is its kernel handle
    weights: dict[int, torch.Tensor] = field(default_factory=dict)  # shard index -> [rows, K]
    params: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (destination view, source)


def _kernel(layer: torch.nn.Module) -> dict | None:
    """The packed state a CPU linear's ``cpu_linear`` closure holds: {'handler': ...} (oneDNN),
    {'packed_weight': ...} (SGL), {} (plain ``F.linear`` on ``layer.weight``), None (unknown)."""
    fn = getattr(layer, "cpu_linear", None)
    if fn is None:
        return None
    if fn is torch.nn.functional.linear:
        return {}
    code, closure = getattr(fn, "__code__", None), getattr(fn, "__closure__", None) or ()
    if code is None:
        return None
    cells = {name: cell.cell_contents for name, cell in zip(code.co_freevars, closure)}
    if "handler" in cells and hasattr(cells["handler"], "handler_tensor"):
        return {"handler": cells["handler"]}
    if "packed_weight" in cells:
        return {"packed_weight": cells["packed_weight"]}
    if not cells and "linear" in code.co_names:  # lambda x, weight, bias: F.linear(x, weight, bias)
        return {}
    return None


def _shard(shard_id) -> int | None:
    if shard_id is None:
        return 0
    if isinstance(shard_id, str):
        return _QKV.get(shard_id)
    return shard_id if isinstance(shard_id, int) else None


def plan(model: torch.nn.Module, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[_ModulePlan] | None:
    """Where each tensor goes; None when any tensor needs vLLM's general loader."""
    mapper = getattr(model, "hf_to_vllm_mapper", None)
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    plans: dict[int, _ModulePlan] = {}
    for name, tensor in named_tensors:
        mapped = mapper._map_name_with_shard(name) if mapper is not None else (name, None)
        if mapped is None:  # vLLM ignores this weight (e.g. rotary caches)
            continue
        vname, shard_id = mapped
        if tied and vname.startswith("lm_head."):
            continue  # the head reads the embedding's storage (refreshed below)
        mod_name, _, pname = vname.rpartition(".")
        try:
            module = model.get_submodule(mod_name)
        except AttributeError:
            return None
        dest = getattr(module, pname, None)
        idx = _shard(shard_id)
        if not isinstance(dest, torch.Tensor) or idx is None:
            return None
        kernel = _kernel(module) if hasattr(module, "cpu_linear") else {}
        if kernel is None:
            return None
        rows_out = getattr(module, "output_size_per_partition", dest.shape[0] if dest.ndim else 1)
        sizes = list(getattr(module, "output_sizes", None) or [rows_out])
        if idx >= len(sizes):
            return None
        p = plans.setdefault(id(module), _ModulePlan(module, pname == "weight" and dest.numel() == 0 and bool(kernel)))
        if pname == "weight" and p.packed_only:
            if tensor.ndim != 2 or tensor.shape[0] != sizes[idx]:
                return None
            p.weights[idx] = tensor
            continue
        offset = sum(sizes[:idx]) if shard_id is not None else 0
        view = dest.data
        if dest.ndim:
            rows = tensor.shape[0]
            if offset + rows > dest.shape[0]:
                return None
            view = view.narrow(0, offset, rows)  # a shard, or the real rows of a padded vocabulary
        if tuple(view.shape) != tuple(tensor.shape):
            return None
        p.params.append((view, tensor))
    for p in plans.values():
        if p.packed_only and len(p.weights) != len(getattr(p.module, "output_sizes", None) or [0]):
            return None  # a stacked layer must get every shard: nothing unpacked is left to merge with
    return list(plans.values())


def repack(layer: torch.nn.Module, weight: torch.Tensor) -> None:
    """Point a CPU linear's existing kernel state at ``weight`` [N, K], in place."""
    kernel = _kernel(layer)
    if kernel is None:
        raise RuntimeError(f"unknown CPU GEMM kernel on {type(layer).__name__}")
    if "handler" in kernel:
        from vllm import _custom_ops as ops

        old = kernel["handler"]
        new = ops.create_onednn_mm(weight.t(), 32)  # 32: the primitive cache size vLLM's dispatch uses
        if (new.k, new.n) != (old.k, old.n):
            raise RuntimeError(f"repack: shape {(new.n, new.k)} for a layer of {(old.n, old.k)}")
        pointer = old.handler_tensor.clone()
        old.handler_tensor.copy_(new.handler_tensor)
        new.handler_tensor.copy_(pointer)  # `new` now owns the old primitive and frees it
    elif "packed_weight" in kernel:
        kernel["packed_weight"].copy_(torch.ops._C.convert_weight_packed(weight))
    elif layer.weight.data_ptr() != weight.data_ptr():
        layer.weight.data.copy_(weight)


def apply(plans: list[_ModulePlan]) -> int:
    """Carry out a plan; returns the number of tensors written."""
    written = 0
    scratch = None  # one buffer, reused layer after layer: the packing copies out of it
    with torch.no_grad():
        for p in plans:
            for view, src in p.params:
                view.copy_(src)
                written += 1
            if p.packed_only:
                dtype = p.module.weight.dtype  # the emptied weight keeps the engine's dtype
                shards = [p.weights[i].detach() for i in range(len(p.weights))]
                if len(shards) == 1 and shards[0].dtype == dtype and shards[0].is_contiguous():
                    weight = shards[0]  # packed straight from the learner's tensor
                else:  # stack the shards and cast in one pass, into memory that is already mapped
                    rows, cols = sum(t.shape[0] for t in shards), shards[0].shape[1]
                    if scratch is None or scratch.numel() < rows * cols or scratch.dtype != dtype:
                        scratch = torch.empty(rows * cols, dtype=dtype)
                    weight = scratch[: rows * cols].view(rows, cols)
                    offset = 0
                    for t in shards:
                        weight[offset : offset + t.shape[0]].copy_(t)
                        offset += t.shape[0]
                repack(p.module, weight)
                written += len(shards)
            elif p.params and hasattr(p.module, "cpu_linear") and p.module.weight.numel() \
                    and type(p.module).__name__ != "VocabParallelEmbedding":
                # a head that keeps its weight: pack the updated rows. (vLLM packs the input embedding
                # too, but only a head ever multiplies with it; lookups read ``weight``.)
                repack(p.module, p.module.weight)
    return written


def load(model: torch.nn.Module, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> bool:
    """Plan and apply; False (nothing touched) when vLLM's own reload is needed."""
    if any(t.device.type != "cpu" for t in model.parameters()):
        return False  # GPU kernels keep weights in other layouts; vLLM's reload knows them
    plans = plan(model, named_tensors)
    if plans is None:
        return False
    apply(plans)
    return True


def load_on_worker(worker, named_tensors: list[tuple[str, torch.Tensor]]) -> bool:
    """``LLM.collective_rpc`` target (in-process engines); resets the runner's weight-derived caches
    as vLLM's ``reload_weights`` does."""
    runner = worker.model_runner
    if not load(runner.get_model(), named_tensors):
        return False
    for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
        getattr(runner, reset, lambda: None)()
    return True
