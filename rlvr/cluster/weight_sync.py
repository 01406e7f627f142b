"""Weights from the learner to every rollout worker, packed once into one flat buffer.

Two transports, chosen by ``cluster.weight_sync``:

* ``shm``: one POSIX shared-memory block on this node; each worker maps it and loads views of
  it (no copy on the worker side). The block is kept until the next sync, so a restarted
  worker gets the weights the others sample with.
* ``object_store``: one ``ray.put`` of the buffer; Ray moves it to other nodes once per node
  and workers on a node read it zero-copy.

Only names, dtypes, shapes and offsets travel in the calls themselves. (On GPUs, ``nccl`` sends
the weights from the learner's GPU straight into the engines instead: rlvr.cluster.nccl_sync.)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import torch

Layout = list[tuple[str, str, tuple[int, ...], int, int]]  # name, dtype, shape, byte offset, nbytes


def layout_of(tensors: list[tuple[str, torch.Tensor]]) -> tuple[Layout, int]:
    layout, offset = [], 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        layout.append((name, str(t.dtype).removeprefix("torch."), tuple(t.shape), offset, nbytes))
        offset += nbytes
    return layout, offset


def pack_into(buf: torch.Tensor, tensors: list[tuple[str, torch.Tensor]], layout: Layout) -> None:
    for (_, t), (_, _, _, off, nbytes) in zip(tensors, layout):
        buf[off : off + nbytes].copy_(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8))


def unpack(buf: torch.Tensor, layout: Layout) -> list[tuple[str, torch.Tensor]]:
    """Views into ``buf`` (uint8, 1-D), one per tensor of the layout."""
    return [(name, buf[off : off + nbytes].view(getattr(torch, dtype)).view(shape))
            for name, dtype, shape, off, nbytes in layout]


@dataclass
class Packed:
    """A sync's payload as a worker receives it: the transport's handle and the layout."""

    transport: str  # "shm" | "object_store"
    handle: Any  # the block's name | [ObjectRef] (in a list, so Ray passes the ref, not its value)
    layout: Layout
    nbytes: int


class WeightSender:
    """Packs the learner's tensors once per sync and keeps the newest payload (for restarted workers).

    The packing buffer (the shared-memory block, or the staging array for the object store) is
    allocated once and rewritten in place by every sync of the same size: first-touch page faults
    on a fresh buffer cost more than the copy itself (~6x for a 345 MB model)."""

    def __init__(self, transport: str):
        if transport not in ("shm", "object_store"):
            raise ValueError(f"cluster.weight_sync: unknown transport {transport!r}")
        self.transport = transport
        self._shm: SharedMemory | None = None
        self._staging = None  # numpy uint8, object store only
        self.current: Packed | None = None  # None: the workers still hold the model directory's weights

    def pack(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> Packed:
        """Every worker must have finished loading the previous payload (the loop waits for each sync)."""
        tensors = list(named_tensors)
        layout, total = layout_of(tensors)
        size = max(total, 1)
        if self.transport == "shm":
            if self._shm is None or self._shm.size < size:
                self.release()
                self._shm = SharedMemory(create=True, size=size)
            pack_into(torch.frombuffer(self._shm.buf, dtype=torch.uint8), tensors, layout)
            handle = self._shm.name
        else:
            import numpy as np
            import ray

            if self._staging is None or self._staging.size != size:
                self._staging = np.empty(size, dtype=np.uint8)
            pack_into(torch.from_numpy(self._staging), tensors, layout)
            handle = [ray.put(self._staging)]
        self.current = Packed(self.transport, handle, layout, total)
        return self.current

    def release(self) -> None:
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None


class WeightReceiver:
    """The worker's side: a payload's tensors as views. A shared-memory block stays mapped
    between syncs (the sender reuses it), so its pages are faulted in once, not per sync."""

    def __init__(self):
        self._shm: SharedMemory | None = None

    def tensors(self, packed: Packed) -> list[tuple[str, torch.Tensor]]:
        if packed.transport == "shm":
            if self._shm is None or self._shm.name != packed.handle:
                self.close()
                self._shm = SharedMemory(name=packed.handle)
                # Attaching registers the block with this process's resource tracker, which would unlink
                # it (the sender's block) when the worker exits; the sender owns it.
                from multiprocessing import resource_tracker

                resource_tracker.unregister(self._shm._name, "shared_memory")
            buf = torch.frombuffer(self._shm.buf, dtype=torch.uint8)
        else:
            import ray

            array = ray.get(packed.handle[0])
            with warnings.catch_warnings():  # the object store's buffer is read-only; it is only read here
                warnings.simplefilter("ignore", UserWarning)
                buf = torch.from_numpy(array)
        return unpack(buf, packed.layout)

    def close(self) -> None:
        if self._shm is not None:
            try:
                self._shm.close()
            except BufferError:  # a view still alive somewhere; the sender unlinks the block anyway
                pass
            self._shm = None
