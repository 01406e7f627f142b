"""Weights through one flat buffer: the one packer, and the sync into a vLLM engine core in another process.

The packer (``layout_of`` / ``pack_into`` / ``unpack``) writes every tensor into one uint8 buffer and
describes it by a layout (name, dtype, shape, byte offset, byte count per tensor); only the layout
travels in calls, and the receiver loads views of the buffer. Two users: the separate-process vLLM
engine below (a POSIX shared-memory block per sync, the layout over the engine's RPC socket) and
rlvr's rollout workers on Ray (``rlvr.rollout.weight_sync``: a block kept between syncs, or the
object store).

For the vLLM engine core the worker maps the block and loads straight out of it
(``rollouts.inplace_sync``: packed into the GEMM kernels, copied into the other parameters; no
staging copy), or, where that path does not apply, through vLLM's reload.
"""

from __future__ import annotations

from collections.abc import Iterable
from multiprocessing.shared_memory import SharedMemory

import torch

Layout = list[tuple[str, str, tuple[int, ...], int, int]]  # name, dtype, shape, byte offset, nbytes


def layout_of(tensors: list[tuple[str, torch.Tensor]]) -> tuple[Layout, int]:
    """Where each tensor goes in the buffer, and the buffer's size in bytes. Each tensor starts at a multiple
    of its element size (a view of the bytes as its dtype needs it), so tensors of one dtype lie back to back."""
    layout, offset = [], 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        offset += -offset % t.element_size()
        layout.append((name, str(t.dtype).removeprefix("torch."), tuple(t.shape), offset, nbytes))
        offset += nbytes
    return layout, offset


def pack_into(buf: torch.Tensor, tensors: list[tuple[str, torch.Tensor]], layout: Layout) -> None:
    """Copy ``tensors`` into ``buf`` (uint8, 1-D, at least the layout's size) at their layout's offsets."""
    for (_, t), (_, _, _, off, nbytes) in zip(tensors, layout):
        buf[off : off + nbytes].copy_(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8))


def unpack(buf: torch.Tensor, layout: Layout) -> list[tuple[str, torch.Tensor]]:
    """Views into ``buf`` (uint8, 1-D), one per tensor of the layout."""
    return [(name, buf[off : off + nbytes].view(getattr(torch, dtype)).view(shape))
            for name, dtype, shape, off, nbytes in layout]


class ShmWeightLoader:
    """vLLM worker extension (``worker_extension_cls``): a worker method callable by name over
    the engine's RPC socket, so nothing but strings, shapes and offsets is serialised (vLLM
    refuses to pickle functions unless VLLM_ALLOW_INSECURE_SERIALIZATION is set)."""

    def load_weights_from_shm(self, shm_name: str, meta: Layout) -> str:
        # The engine core is a multiprocessing child, so it shares the learner's resource tracker:
        # attaching re-registers the name (a set; no-op) and the learner's unlink unregisters it
        # once. (Unregistering here too made the tracker raise KeyError on that unlink.)
        shm = SharedMemory(name=shm_name)
        try:
            buf = torch.frombuffer(shm.buf, dtype=torch.uint8)
            views = unpack(buf, meta)
            del buf
            from rollouts.inplace_sync import load_on_worker
            from rollouts.tied_head import refresh_tied_heads

            fast = load_on_worker(self, views)  # packs/copies out of the block; keeps no view
            if not fast:  # vLLM's general loader: owned copies, the block is unmapped below
                self.reload_weights(weights_iterator=iter([(name, t.clone()) for name, t in views]))
            del views
            refresh_tied_heads(self.model_runner.model)  # a tied head's packed GEMM is stale otherwise
            return "in-place" if fast else "vllm-reload"
        finally:
            shm.close()


WORKER_EXTENSION = f"{__name__}.{ShmWeightLoader.__qualname__}"


def send_weights_via_shm(llm, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Pack, send, load; returns the worker's load path ("in-place" or "vllm-reload")."""
    tensors = list(named_tensors)
    layout, total = layout_of(tensors)
    shm = SharedMemory(create=True, size=max(total, 1))
    try:
        buf = torch.frombuffer(shm.buf, dtype=torch.uint8)
        pack_into(buf, tensors, layout)
        del buf
        return llm.collective_rpc("load_weights_from_shm", args=(shm.name, [list(m) for m in layout]))[0]
    finally:
        shm.close()
        shm.unlink()
