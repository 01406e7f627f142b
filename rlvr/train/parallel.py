"""How a learner is spread over processes: a parallel plan, given to ``Learner`` and ``Critic`` at construction.

* ``Single``: one process, the whole model; no collective anywhere.
* ``DataParallel`` (DDP): M ranks of one torch.distributed process group, each with the whole
  model, stepping on its shard of whole groups. Two things make the M ranks take the update one
  process takes on the whole batch: the loss normalisers (response tokens, sequences) are the
  global batch's (``batch_totals``), and the gradients each rank accumulated are summed before
  clipping (``reduce_gradients``), so every rank clips the same global norm and takes the same step.
* ``Sharded`` (FSDP2, rlvr.train.fsdp): each rank holds 1/M of the model, its gradients and AdamW's
  moments; ``prepare`` shards the model before the optimiser is built on it. The backward
  reduce-scatters (sums) the gradients; every forward is a collective, so every rank runs the same
  number of forwards (``lockstep``); whatever needs the whole model is a gather rank 0 receives.

A plan also reads and writes a model's and an optimiser's state in the single-process layout (the
model's full ``state_dict``, the optimiser's keyed by parameter index), so checkpoints of every
plan load into one another. torch.distributed is imported here and in rlvr.train.fsdp only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

# Elements per flat gradient bucket: one collective per bucket rather than one per tensor (a
# transformer has hundreds of small tensors; gloo's per-call latency dominates them), while the
# flat copy stays small next to the model (16M float32 = 64 MiB).
BUCKET_ELEMS = 1 << 24


def all_reduce_sum(values: Tensor, group) -> Tensor:
    """A new tensor with ``values`` summed over the group's ranks (the input is left as it was)."""
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def all_reduce_max(value: int, group) -> int:
    """The largest of the ranks' ``value``."""
    out = torch.tensor([value], dtype=torch.int64)
    if dist.get_backend(group) == "nccl":
        out = out.cuda()
    dist.all_reduce(out, op=dist.ReduceOp.MAX, group=group)
    return int(out.item())


def _buckets(grads: list[Tensor], bucket_elems: int) -> list[list[Tensor]]:
    """Consecutive gradients of one dtype and device, at most ``bucket_elems`` elements per bucket
    (a larger tensor is a bucket of its own)."""
    buckets: list[list[Tensor]] = []
    size = 0
    for g in grads:
        last = buckets[-1] if buckets else None
        fits = last is not None and size + g.numel() <= bucket_elems
        if fits and (last[0].dtype, last[0].device) == (g.dtype, g.device):
            last.append(g)
            size += g.numel()
        else:
            buckets.append([g])
            size = g.numel()
    return buckets


def all_reduce_gradients(params: Iterable[nn.Parameter], group, bucket_elems: int = BUCKET_ELEMS) -> None:
    """Sum the trainable parameters' ``.grad`` over the group's ranks, in place (DDP's bucketed
    all-reduce, run once after the micro-batches instead of overlapped with the backward).

    A parameter no rank produced a gradient for keeps ``grad=None``, so AdamW skips it exactly as
    in one process (a zero gradient would still move it through the moments and weight decay);
    one that only some ranks touched is summed with zeros from the others.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    device = params[0].device
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)  # [P]
    dist.all_reduce(has_grad, op=dist.ReduceOp.SUM, group=group)
    live = []
    for p, flag in zip(params, has_grad.tolist()):
        if flag == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        live.append(p.grad)
    for bucket in _buckets(live, bucket_elems):
        flat = torch.cat([g.reshape(-1) for g in bucket])  # [sum of numels]
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        for g, chunk in zip(bucket, flat.split([g.numel() for g in bucket])):
            g.copy_(chunk.view_as(g))


def _cpu(obj: Any) -> Any:
    """Tensors of a (nested) state dict on the CPU (what a checkpoint or another rank reads)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


class Single:
    """One process: the model as it is, local normalisers, no collective."""

    sharded = False  # True: the model is split over ranks, so reading it whole is a collective

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model ready for this plan, before an optimiser is built on its parameters."""
        return model

    def batch_totals(self, mask: Tensor) -> tuple[Tensor, int]:
        """(response tokens clamped to >= 1, sequences) of the whole batch ``mask`` [B, T] is a shard of."""
        return mask.sum().clamp(min=1), mask.shape[0]

    def total(self, value: Tensor) -> Tensor:
        """``value`` summed over the ranks."""
        return value

    def lockstep(self, forwards: int) -> int:
        """How many forwards this rank runs when it has ``forwards`` of its own."""
        return forwards

    def reduce_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Make every rank's ``.grad`` the sum over ranks, before clipping."""

    def model_state(self, model: nn.Module) -> dict[str, Tensor]:
        """The model's state to save or send, on the CPU (a LoRA policy: its adapter)."""
        from rlvr import lora

        return _cpu(lora.adapter_state(model) if lora.is_lora(model) else model.state_dict())

    def load_model_state(self, model: nn.Module, state: dict[str, Tensor]) -> None:
        from rlvr import lora

        if lora.is_lora(model):
            lora.load_adapter_state(model, state)
        else:
            model.load_state_dict(state)

    def optimizer_state(self, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
        return _cpu(opt.state_dict())

    def load_optimizer_state(self, model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        opt.load_state_dict(state)

    def weights(self, model: nn.Module) -> list[tuple[str, Tensor]]:
        """(name, tensor) of the whole model as an engine loads it (LoRA merged), read only."""
        from rlvr import lora

        return list(lora.merged_named_tensors(model))


class DataParallel(Single):
    """DDP over ``group``: every rank holds the whole model; normalisers and gradients are summed."""

    def __init__(self, group):
        self.group = group

    def batch_totals(self, mask: Tensor) -> tuple[Tensor, int]:
        counts = torch.tensor([float(mask.sum()), float(mask.shape[0])], dtype=torch.float64, device=mask.device)
        counts = all_reduce_sum(counts, self.group)  # [2] response tokens, sequences of every rank
        return counts[0].to(mask.dtype).clamp(min=1), int(counts[1])

    def total(self, value: Tensor) -> Tensor:
        return all_reduce_sum(value, self.group)

    def reduce_gradients(self, params: Iterable[nn.Parameter]) -> None:
        all_reduce_gradients(params, self.group)


class Sharded(DataParallel):
    """FSDP2 over the ``world`` ranks of the default process group (rlvr.train.fsdp)."""

    sharded = True

    def __init__(self, world: int, device: str):
        super().__init__(dist.group.WORLD)
        from torch.distributed.device_mesh import init_device_mesh

        self.mesh = init_device_mesh(device, (world,))  # collective: every rank builds its plan at once

    def prepare(self, model: nn.Module) -> nn.Module:
        from rlvr.train.fsdp import shard_model

        shard_model(model, self.mesh)
        return model

    def lockstep(self, forwards: int) -> int:
        return all_reduce_max(forwards, self.group)

    def reduce_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Nothing left to do: the backward reduce-scattered (summed) them."""

    def model_state(self, model: nn.Module) -> dict[str, Tensor]:
        from rlvr.train.fsdp import full_model_state

        return full_model_state(model)

    def load_model_state(self, model: nn.Module, state: dict[str, Tensor]) -> None:
        from rlvr.train.fsdp import load_full_model_state

        load_full_model_state(model, state)

    def optimizer_state(self, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
        from rlvr.train.fsdp import full_optimizer_state

        return full_optimizer_state(model, opt)

    def load_optimizer_state(self, model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        from rlvr.train.fsdp import load_full_optimizer_state

        load_full_optimizer_state(model, opt, state)

    def weights(self, model: nn.Module) -> list[tuple[str, Tensor]]:
        state = self.model_state(model)  # gathered on rank 0's CPU ({} elsewhere)
        return [(name, state[name]) for name, _ in model.named_parameters()] if state else []


SINGLE = Single()


def plan_for(world: int, sharding: str, device: str, group=None) -> Single:
    """The plan of one of ``world`` ranks (``cluster.learner_sharding``: ddp | fsdp), after the
    process group is up; ``Single`` for one rank."""
    if world == 1:
        return SINGLE
    if sharding == "fsdp":
        return Sharded(world, device)
    return DataParallel(group if group is not None else dist.group.WORLD)
