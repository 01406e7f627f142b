"""The torch.distributed collectives of the data-parallel learner (rlvr.cluster.learner_group).

Two things make M ranks, each on its own shard of whole groups, take the update one process takes
on the whole batch:

* the loss normalisers (response tokens, sequences) are the global batch's, so every rank weighs
  its micro-batches as one process would (``all_reduce_sum``);
* the gradients each rank accumulated are summed before clipping (``all_reduce_gradients``), so
  every rank clips the same global norm and takes the same optimiser step.

The learner and the critic call these only when they were given a process group; the single-process
path never reaches this module.
"""

from __future__ import annotations

from collections.abc import Iterable

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
